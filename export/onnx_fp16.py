"""FP16 ONNX: the typed file a strongly typed TensorRT engine is built from (TensorRT 11 takes precisions from the
graph, not from builder flags), converted from our fp32 export by onnxconverter-common's float16 converter.

The fp32 export is already the FP16-safe form (Conv soft split, the Performer's kernel with its max subtracted
before `exp`), so almost every node converts. A node stays fp32, with the reason stamped in the file, when
- one of its initializers has a value beyond fp16's range (65504), or
- a tensor it writes or reads reached within `HEADROOM`x of that range on the checked real images (other images
  go further; a reader in fp16 would cast the value down even behind an fp32 writer), or
- the converter never converts its op type (its default block list: ops without fp16 kernels in ONNX).
Inputs and outputs stay float32, so every caller feeds and reads the file like the fp32 one.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from t2tedge import metadata_keys as keys
from t2tedge.errors import DataError, UsageError
from t2tedge.fileio import atomic_path
from t2tedge.onnx_graph import consumers, float_types, has_qdq, producers

FP16_MAX = 65504.0
FP16_TINY = 2.0 ** -24  # the smallest fp16 subnormal
# Real images only sample the activation distribution: a tensor within this factor of the fp16 maximum stays fp32.
HEADROOM = 4.0


@dataclass(frozen=True)
class Fp16Hazard:
    """A value fp16 cannot hold: an initializer, or an activation on the checked images."""

    kind: str  # "initializer" or "activation"
    tensor: str
    node: str  # the node that reads the initializer, or writes the activation
    peak: float  # largest magnitude seen

    def reason(self) -> str:
        if self.kind == "initializer":
            return f"initializer {self.tensor} holds {self.peak:.4g}, beyond fp16's {FP16_MAX:g}"
        where = "beyond" if self.peak > FP16_MAX else f"within {HEADROOM:g}x of"
        return f"tensor {self.tensor} reached {self.peak:.4g} on real images, {where} fp16's maximum {FP16_MAX:g}"


@dataclass
class Fp16Report:
    path: str
    converted_nodes: int
    kept_fp32: dict[str, str]  # node -> why it stays fp32
    checked_images: int
    hazards: list[Fp16Hazard] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def initializer_hazards(proto: onnx.ModelProto) -> list[Fp16Hazard]:
    """Float32 initializers with a magnitude above fp16's maximum, with the node that reads each."""
    readers = consumers(proto.graph)
    hazards = []
    for init in proto.graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(init)
        peak = float(np.abs(values).max()) if values.size else 0.0
        if peak > FP16_MAX:
            hazards += [Fp16Hazard("initializer", init.name, reader.name or reader.output[0], peak)
                        for reader in readers.get(init.name, [])]
    return hazards


def activation_peaks(proto: onnx.ModelProto, images: np.ndarray,
                     progress: Callable[[int], None] | None = None) -> dict[str, float]:
    """The largest magnitude of every float tensor the fp32 graph computes, over `images` (one at a time)."""
    from t2tedge.ort_session import run_in_fixed_batches, session_exposing

    inferred = onnx.shape_inference.infer_shapes(proto)
    typed = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    tensors = [o for node in proto.graph.node for o in node.output if typed.get(o) == onnx.TensorProto.FLOAT]
    session, fixed_batch = session_exposing(proto, tensors)
    exposed = [o.name for o in session.get_outputs() if o.name in set(tensors)]
    feed = session.get_inputs()[0].name
    peaks = dict.fromkeys(exposed, 0.0)
    for i in range(len(images)):
        values = run_in_fixed_batches(session, feed, fixed_batch, images[i:i + 1], exposed)
        for name, value in zip(exposed, values):
            peaks[name] = max(peaks[name], float(np.abs(value).max()) if value.size else 0.0)
        if progress is not None:
            progress(i + 1)
    return peaks


def activation_hazards(proto: onnx.ModelProto, peaks: dict[str, float],
                       headroom: float = HEADROOM) -> list[Fp16Hazard]:
    """A hazard per node that writes or reads a tensor whose peak lies within `headroom`x of fp16's maximum: a
    reader converted to fp16 would cast the value down (to inf) even when its writer stays fp32."""
    writers, readers = producers(proto.graph), consumers(proto.graph)
    hazards = []
    for name, peak in peaks.items():
        if peak * headroom > FP16_MAX and name in writers:
            hazards += [Fp16Hazard("activation", name, node.name or node.output[0], peak)
                        for node in [writers[name], *readers.get(name, [])]]
    return hazards


def fp16_hazards(proto: onnx.ModelProto, images: np.ndarray | None,
                 progress: Callable[[int], None] | None = None) -> list[Fp16Hazard]:
    """Initializer hazards, and activation hazards on `images` when given."""
    hazards = initializer_hazards(proto)
    if images is not None and len(images):
        hazards += activation_hazards(proto, activation_peaks(proto, images, progress))
    return hazards


def converter_version() -> str:
    from importlib.metadata import version

    return f"onnxconverter-common {version('onnxconverter-common')}"


def _refuse_qdq(proto: onnx.ModelProto) -> None:
    if has_qdq(proto):
        raise UsageError("a QDQ (int8) ONNX file is not converted to fp16: its Q/DQ scales would become fp16 "
                         "(ModelOpt AutoCast did that and ONNX Runtime then gave logits 10 apart); TensorRT builds "
                         "the QDQ file as it is")


def convert_to_fp16(proto: onnx.ModelProto, keep_fp32: dict[str, str]) -> onnx.ModelProto:
    """`proto` in fp16 with float32 inputs and outputs; the nodes of `keep_fp32` stay fp32 behind casts."""
    from onnxconverter_common import float16

    _refuse_qdq(proto)
    # Values below fp16's smallest subnormal become it (the converter's default floor, 1e-7, would move
    # representable ones); the converter's warning per clamped value is silenced.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = float16.convert_float_to_float16(proto, min_positive_val=FP16_TINY, max_finite_val=FP16_MAX,
                                                     keep_io_types=True, node_block_list=sorted(keep_fp32),
                                                     op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST))
    _float32_outputs(converted)
    return converted


def _float32_outputs(proto: onnx.ModelProto) -> None:
    """Make every fp16 graph output float32 again, in place. onnxconverter-common 1.16 with keep_io_types casts the
    output of a node it was told to keep fp32 down to fp16 and declares the output fp16: that cast is dropped (the
    node writes the output in float32 itself)."""
    graph = proto.graph
    writers = producers(graph)
    for output in graph.output:
        if output.type.tensor_type.elem_type != onnx.TensorProto.FLOAT16:
            continue
        cast = writers.get(output.name)
        to = next((a.i for a in cast.attribute if a.name == "to"), None) if cast is not None else None
        if cast is None or cast.op_type != "Cast" or to != onnx.TensorProto.FLOAT16:
            raise DataError(f"the fp16 converter left output {output.name} in fp16 without a cast to undo")
        source = writers.get(cast.input[0])
        source.output[list(source.output).index(cast.input[0])] = output.name
        graph.node.remove(cast)
        output.type.tensor_type.elem_type = onnx.TensorProto.FLOAT


def write_fp16_onnx(fp32_path: str | os.PathLike, destination: str | os.PathLike, images: np.ndarray | None,
                    progress: Callable[[int], None] | None = None) -> Fp16Report:
    """Convert our fp32 export at `fp32_path` to fp16 and write it atomically at `destination`, stamped with what
    stays fp32 and why. `images`: real images to check activations on (None: initializers only, said in the file)."""
    from onnxconverter_common import float16

    fp32_path = Path(fp32_path)
    proto = onnx.load(str(fp32_path))
    _refuse_qdq(proto)  # before the range check's work
    if float_types(proto).get("float16"):
        raise DataError(f"{fp32_path.name} is already fp16")
    hazards = fp16_hazards(proto, images, progress)
    keep: dict[str, str] = {}
    for hazard in hazards:
        keep[hazard.node] = "; ".join(filter(None, (keep.get(hazard.node), hazard.reason())))
    blocked = set(float16.DEFAULT_OP_BLOCK_LIST)
    for node in proto.graph.node:
        if node.op_type in blocked:
            keep.setdefault(node.name, f"{node.op_type}: the converter keeps this op type fp32")
    converted = convert_to_fp16(proto, keep)
    meta = {p.key: p.value for p in converted.metadata_props}
    meta.update({keys.PRECISION: "fp16", keys.FP16_KEPT_FP32: json.dumps(keep, sort_keys=True),
                 keys.FP16_CHECKED_IMAGES: str(0 if images is None else len(images)),
                 keys.FP16_CONVERTER: converter_version(), keys.SOURCE_FP32: fp32_path.name})
    del converted.metadata_props[:]
    for key, value in meta.items():
        converted.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(converted)
    destination = Path(destination)
    with atomic_path(destination, suffix=".onnx") as tmp:
        tmp.write_bytes(converted.SerializeToString(deterministic=True))
    return Fp16Report(path=str(destination), converted_nodes=len(proto.graph.node) - len(keep), kept_fp32=keep,
                      checked_images=0 if images is None else len(images), hazards=hazards)


def fp16_name(fp32_path: str | os.PathLike) -> str:
    return f"{Path(fp32_path).stem}_fp16.onnx"
