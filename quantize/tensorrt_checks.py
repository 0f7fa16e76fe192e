"""What TensorRT will make of an ONNX graph, checked on the CPU: parser support, Q/DQ placement, the graph's float
types and fp16 range hazards (a strongly typed engine runs the file's own types), plus the INT8 calibration cache
that TensorRT 10's implicit-quantization builds (`trtexec --int8 --calib=`) read.
"""

from __future__ import annotations

import json
import os
import struct
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from t2tedge import metadata_keys as keys
from t2tedge.errors import T2TEdgeError
from t2tedge.fileio import atomic_write_text
from t2tedge.onnx_graph import producers
from t2tedge.quantize.input_grid import grid_source

# Marked unsupported in onnx-tensorrt's operator matrix (docs/operators.md).
UNSUPPORTED_OPS = frozenset({
    "BitShift", "Compress", "ConcatFromSequence", "ConvInteger", "Det", "DynamicQuantizeLinear", "Hardmax",
    "MatMulInteger", "MaxRoiPool", "MaxUnpool", "MeanVarianceNormalization", "Multinomial",
    "NegativeLogLikelihoodLoss", "QLinearConv", "QLinearMatMul", "RandomNormal", "RandomNormalLike", "SequenceAt",
    "SequenceConstruct", "SequenceEmpty", "SequenceErase", "SequenceInsert", "SequenceLength", "Shrink",
    "SoftmaxCrossEntropyLoss", "SplitToSequence", "StringNormalizer", "TfIdfVectorizer", "Unique",
})
# Parsed, but fp32/fp16 only and restricted to some equations: never in graphs we ship.
DISCOURAGED_OPS = {"Einsum": "Einsum runs in FP32/FP16 only (no INT8) and only for some equations; export the "
                             "MatMul form (t2tedge export form)"}
# Ops TensorRT can run in INT8 and so fuse with the DQ in front of them.
INT8_CONSUMERS = frozenset({
    "Conv", "ConvTranspose", "MatMul", "Gemm", "AveragePool", "MaxPool", "GlobalAveragePool", "GlobalMaxPool",
    "Add", "Concat", "Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "Transpose", "Reshape", "Flatten", "Squeeze",
    "Unsqueeze", "Slice", "Pad", "Identity", "Gather", "QuantizeLinear",
})
WEIGHT_AXIS = {"Conv": 0, "ConvTranspose": 1}


@dataclass
class TrtReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    qdq_pairs: int = 0
    float_types: dict[str, int] = field(default_factory=dict)  # float initializers per type
    fp16_hazards: list[str] = field(default_factory=list)  # values fp16 cannot hold
    checked_images: int = 0  # real images the activation ranges were read on

    @property
    def ok(self) -> bool:
        return not self.errors


def _constant(graph_inits: dict[str, onnx.TensorProto], name: str) -> np.ndarray | None:
    return numpy_helper.to_array(graph_inits[name]) if name in graph_inits else None


def check_tensorrt(proto: onnx.ModelProto) -> TrtReport:
    report = TrtReport()
    graph = proto.graph
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        report.errors.append(f"opset {opset} < 13: per-channel Q/DQ needs opset 13")
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    for node in graph.node:
        where = f"{node.op_type} {node.name or node.output[0]}"
        if node.domain not in ("", "ai.onnx"):
            report.errors.append(f"{where}: custom-domain op ({node.domain}) is not parsed by TensorRT")
        elif node.op_type in UNSUPPORTED_OPS:
            report.errors.append(f"{where}: not supported by TensorRT's ONNX parser")
        elif node.op_type in DISCOURAGED_OPS:
            report.errors.append(f"{where}: {DISCOURAGED_OPS[node.op_type]}")
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        zero_point = _constant(inits, node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zero_point is not None:
            if zero_point.dtype != np.int8:
                report.errors.append(f"{where}: {zero_point.dtype} Q/DQ; TensorRT takes INT8 only "
                                     "(quantize with --target tensorrt)")
            elif np.any(zero_point != 0):
                report.errors.append(f"{where}: non-zero zero point; TensorRT needs symmetric quantization")
        if node.op_type == "QuantizeLinear":
            report.qdq_pairs += 1
            continue
        weight = node.input[0] in inits
        for consumer in consumers[node.output[0]]:
            if consumer.op_type not in INT8_CONSUMERS:
                report.warnings.append(f"{where} feeds {consumer.op_type} {consumer.name}, which TensorRT runs in "
                                       "float: the Q/DQ pair cannot fuse and costs a reformat")
            if weight and consumer.op_type in WEIGHT_AXIS:
                scale = _constant(inits, node.input[1])
                axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
                if scale is not None and scale.size > 1 and axis != WEIGHT_AXIS[consumer.op_type]:
                    report.errors.append(f"{where}: per-channel axis {axis} on {consumer.op_type} weights; "
                                         f"TensorRT needs axis {WEIGHT_AXIS[consumer.op_type]}")
    return report


def check_tensorrt_file(path: str | os.PathLike, data: str | os.PathLike | None = None,
                        limit: int = 16) -> TrtReport:
    """`check_tensorrt` of the file at `path`, with its float types and fp16 hazards: initializers beyond fp16's
    range, and (with `data`, a folder of real images) activations within `HEADROOM`x of it on `limit` of them,
    preprocessed as the file's model (t2tedge.model metadata) expects."""
    from t2tedge.errors import DataError
    from t2tedge.export.onnx_fp16 import activation_hazards, activation_peaks, initializer_hazards
    from t2tedge.onnx_graph import float_types

    path = Path(path)
    if not path.is_file():
        raise DataError(f"ONNX file not found: {path}")
    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # protobuf decode errors have no common base class
        raise DataError(f"cannot read ONNX file {path}: {exc}") from None
    report = check_tensorrt(proto)
    report.float_types = float_types(proto)
    hazards = initializer_hazards(proto)
    if data is not None:
        from t2tedge.data import discover_images, load_batch, split
        from t2tedge.models import get_spec

        model = {p.key: p.value for p in proto.metadata_props}.get(keys.MODEL)
        if not model:
            raise DataError(f"{path.name} carries no t2tedge.model metadata, so its preprocessing is unknown: "
                            f"check it without --data")
        samples, _ = split(discover_images(data), limit, seed=0)
        images, _ = load_batch(samples, get_spec(model).preprocess)
        hazards += activation_hazards(proto, activation_peaks(proto, images))
        report.checked_images = len(images)
    report.fp16_hazards = [h.reason() for h in hazards]
    return report


def quantize_amax(inits: dict[str, onnx.TensorProto], node: onnx.NodeProto) -> float:
    """The largest magnitude a per-tensor QuantizeLinear represents."""
    scale = float(numpy_helper.to_array(inits[node.input[1]]))
    zp = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] in inits else np.int8(0)
    lo, hi = (0, 255) if zp.dtype == np.uint8 else (-128, 127)
    return max(abs(scale * (lo - int(zp))), abs(scale * (hi - int(zp))))


def _activation_ranges(proto: onnx.ModelProto) -> list[tuple[str, float]]:
    """(tensor, amax) for every activation QuantizeLinear of a QDQ model and every int8 output it keeps float,
    in graph order."""
    inits = {i.name: i for i in proto.graph.initializer}
    meta = {p.key: p.value for p in proto.metadata_props}
    float_outputs = json.loads(meta.get(keys.FLOAT_OUTPUT_RANGES, "{}"))
    writers = producers(proto.graph)
    ranges = []
    for node in proto.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits:
            ranges.append((grid_source(node.input[0], writers), quantize_amax(inits, node)))
        ranges += [(name, float(float_outputs[name])) for name in node.output if name in float_outputs]
    return ranges


def write_calibration_cache(qdq_model: str | os.PathLike | onnx.ModelProto, destination: str | os.PathLike,
                            trt_version: str = "10.3.0") -> int:
    """TensorRT's text cache: a header, then `tensor: <hex of the float32 scale amax/127>` per activation."""
    proto = qdq_model if isinstance(qdq_model, onnx.ModelProto) else onnx.load(str(qdq_model))
    ranges = _activation_ranges(proto)
    if not ranges:
        raise T2TEdgeError("no activation QuantizeLinear in the model: nothing to write a calibration cache from")
    major, minor, patch = (int(p) for p in (trt_version.split(".") + ["0", "0"])[:3])
    version = major * 10000 + minor * 100 + patch if major >= 10 else major * 1000 + minor * 100 + patch
    # trtexec's calibrator is IInt8EntropyCalibrator2: the header must name that algorithm to be accepted.
    lines = [f"TRT-{version}-EntropyCalibration2"]
    lines += [f"{name}: {struct.pack('>f', amax / 127.0).hex()}" for name, amax in ranges]
    atomic_write_text(destination, "\n".join(lines) + "\n")
    return len(ranges)


def read_calibration_cache(path: str | os.PathLike) -> tuple[str, dict[str, float]]:
    lines = Path(path).read_text().splitlines()
    if not lines or not lines[0].startswith("TRT-"):
        raise T2TEdgeError(f"{path}: not a TensorRT calibration cache (no TRT- header)")
    scales = {}
    for line in lines[1:]:
        name, _, value = line.rpartition(":")
        scales[name] = struct.unpack(">f", bytes.fromhex(value.strip()))[0]
    return lines[0], scales
