"""Static post-training quantization of our ONNX exports to QDQ INT8 with onnxruntime.quantization."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import onnx

from t2tedge import metadata_keys as keys
from t2tedge.errors import T2TEdgeError
from t2tedge.fileio import atomic_path
from t2tedge.onnx_graph import external_data_files
from t2tedge.ort_session import QDQ_DISABLED_OPTIMIZERS
from t2tedge.quantize.config import FOLDABLE_ACTIVATIONS, QuantConfig, nodes_to_quantize
from t2tedge.quantize.int8_pooling import quantize_global_pooling
from t2tedge.quantize.input_grid import align_input_quantization
from t2tedge.quantize.ranges import ort_method, write_ranges
from t2tedge.quantize.requantization import keep_outputs_float, skip_requantization_before_float


@contextlib.contextmanager
def one_blas_thread():
    """numpy's BLAS on one thread for the call: GPTQ's second moments, Cholesky factors and bias shifts sum in an
    order that depends on OpenBLAS's thread count, and a rounding that flips changes the file's bytes. A build in a
    Ray worker (OMP_NUM_THREADS=1) then wrote another file than the same build in a 2-thread process; with this
    every process writes the same bytes, and the cost is nothing we can measure (T2T-ViT-7: 16 s build either way)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


@contextlib.contextmanager
def _quiet_ort_logging():
    """ORT logs a pre-processing recommendation through the root logger on every call (our exports are
    already simplified); silence it for the call only, leaving the caller's logging as it was."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_onnx(fp32_path: str | os.PathLike, destination: str | os.PathLike, reader,
                  config: QuantConfig = QuantConfig(), ranges_cache: str | os.PathLike | None = None) -> dict[str, Any]:
    """Write the QDQ model of `fp32_path` calibrated with `reader`; return what was quantized and how.

    `ranges_cache`: a JSON file of calibrated ranges (ORT's format); written on first use, then read instead
    of calibrating again, so many variants of one model share a single calibration. GPTQ-rounded weights are
    cached beside it (`*.rounding.npz`) the same way. Calibration runs a window of images at a time, so memory
    does not grow with the number of calibration images.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    proto = onnx.load(str(fp32_path))
    chosen = nodes_to_quantize(config, proto.graph)
    if not chosen:
        raise T2TEdgeError("the quantization config leaves no node to quantize")
    settings = set(chosen.values())
    if len(settings) > 1:
        raise T2TEdgeError("per-node weight granularity / activation dtype overrides are not supported yet; "
                           "use one setting for every quantized node (None keeps a node in float)")
    (setting,) = settings
    eligible = [n.name for n in proto.graph.node if n.op_type in config.op_types]
    extra = {
        "ActivationSymmetric": setting.activation_symmetric,
        "WeightSymmetric": True,
        "MatMulConstBOnly": not config.quantize_activation_matmul,
        "QuantizeBias": config.quantize_bias,
    }
    op_types = sorted(set(config.op_types) | set(FOLDABLE_ACTIVATIONS))
    Path(destination).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ptq-", dir=Path(destination).parent) as tmp, \
            atomic_path(destination, suffix=".onnx") as out:
        staged = Path(tmp) / "qdq.onnx"
        # ORT's quantizer writes `<model>-inferred.onnx` beside the model it is given: it is given a copy in our
        # scratch folder, never the user's file (a read-only folder, or two runs on one source, would collide).
        source = Path(tmp) / "fp32.onnx"
        shutil.copyfile(fp32_path, source)
        for data in external_data_files(fp32_path):  # a model that keeps its weights beside it: them too
            copied = Path(tmp) / data.relative_to(Path(fp32_path).parent)
            copied.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(data, copied)
        ranges_cache = Path(ranges_cache or Path(tmp) / "ranges.json")
        if not ranges_cache.is_file():
            if reader is None:
                raise T2TEdgeError(f"no calibration data and no calibrated ranges at {ranges_cache}")
            with _quiet_ort_logging(), contextlib.redirect_stdout(io.StringIO()):
                write_ranges(source, reader, op_types, ranges_cache, config.method,
                             setting.activation_symmetric, config.percentile)
        with _quiet_ort_logging(), contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                str(source), str(staged), None, quant_format=QuantFormat.QDQ,
                op_types_to_quantize=op_types,
                nodes_to_quantize=sorted(chosen),
                per_channel=setting.weight_granularity == "per_channel", reduce_range=False,
                activation_type=QuantType.QUInt8 if setting.activation_dtype == "uint8" else QuantType.QInt8,
                weight_type=QuantType.QInt8, calibrate_method=ort_method(config.method)[1], extra_options=extra,
                calibration_cache_path=str(ranges_cache))
        qdq = onnx.load(str(staged))
        rounded = []
        if config.weight_rounding == "gptq":
            with one_blas_thread():
                rounded = _gptq_weights(qdq, proto, fp32_path, reader, ranges_cache.with_suffix(".rounding.npz"))
        pixel_grid = {"applied": False, "reason": "off in the config"}
        if config.pixel_grid_input:
            pixel_grid = align_input_quantization(qdq)
        keep_outputs_float(qdq)
        float_outputs = skip_requantization_before_float(qdq, op_types)
        int8_pools = quantize_global_pooling(qdq)
        correction = {"mode": config.bias_correction, "applied": False}
        if config.bias_correction != "off":
            with one_blas_thread():
                correction = _bias_correction(qdq, proto, reader, config.bias_correction,
                                              ranges_cache.with_suffix(f".{config.weight_rounding}.bias.npz"))
        meta = {p.key: p.value for p in qdq.metadata_props}
        meta.update({keys.PRECISION: "int8", keys.QUANT_CONFIG: json.dumps(config.to_dict(), sort_keys=True),
                     keys.SOURCE_FP32: Path(fp32_path).name})
        if float_outputs:
            meta[keys.FLOAT_OUTPUT_RANGES] = json.dumps(float_outputs, sort_keys=True)
        behind_dq = float_nodes_behind_dequantize(qdq)
        if behind_dq:  # read by people loading the model in their own ORT sessions
            meta[keys.ORT_DISABLED_OPTIMIZERS] = ",".join(QDQ_DISABLED_OPTIMIZERS)
        del qdq.metadata_props[:]
        for key, value in sorted(meta.items()):
            qdq.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(qdq)
        out.write_bytes(qdq.SerializeToString(deterministic=True))
    return {"quantized_nodes": sorted(chosen), "float_nodes": sorted(set(eligible) - set(chosen)),
            "method": config.method, "weight_granularity": setting.weight_granularity,
            "weight_rounding": config.weight_rounding, "gptq_rounded_nodes": len(rounded),
            "bias_correction": correction, "pixel_grid_input": pixel_grid,
            "int8_outputs_kept_float": sorted(float_outputs), "int8_pooling": int8_pools,
            "float_nodes_behind_dequantize": behind_dq,
            "ort_disabled_optimizers": list(QDQ_DISABLED_OPTIMIZERS) if behind_dq else [],
            "activation_dtype": setting.activation_dtype, "destination": str(destination)}


def _gptq_weights(qdq: onnx.ModelProto, fp32: onnx.ModelProto, fp32_path, reader, cache: Path) -> list[str]:
    """GPTQ-round `qdq`'s int8 weights in place, from `cache` if an earlier variant of this calibration wrote
    it (node names are the fp32 model's, so a variant with fewer quantized nodes takes a subset)."""
    from t2tedge.quantize.weight_rounding import (fp32_layer_inputs, load_weights, round_weights, save_weights,
                                                  write_weights)

    if cache.is_file():
        return write_weights(qdq, load_weights(cache))
    if reader is None:
        raise T2TEdgeError(f"no calibration data and no GPTQ-rounded weights at {cache}")
    label = getattr(reader, "progress", None)
    inputs = fp32_layer_inputs(str(fp32_path), calibration_images(reader),
                               progress=f"{label}: GPTQ weight rounding" if label else None)
    weights = round_weights(qdq, fp32, inputs)
    save_weights(cache, weights)
    return write_weights(qdq, weights)


def _bias_correction(qdq: onnx.ModelProto, fp32: onnx.ModelProto, reader, mode: str, cache: Path) -> dict[str, Any]:
    """Correct `qdq`'s biases in place (mode "on"), or only where that raises logits SQNR on the calibration
    images by AUTO_MIN_GAIN_DB (mode "auto"); cached per calibration and weight rounding like the ranges."""
    from t2tedge.quantize.bias_correction import (AUTO_MIN_GAIN_DB, bias_correction_gain, correct_biases,
                                                  load_correction, save_correction, write_biases)

    if cache.is_file():
        biases, without, with_ = load_correction(cache)
    else:
        if reader is None:
            raise T2TEdgeError(f"no calibration data and no bias correction at {cache}")
        images = calibration_images(reader)
        label = getattr(reader, "progress", None)
        corrected = onnx.ModelProto.FromString(qdq.SerializeToString())
        biases = correct_biases(corrected, fp32, images, progress=f"{label}: bias correction" if label else None)
        without, with_ = bias_correction_gain(fp32, qdq, corrected, images)
        save_correction(cache, biases, without, with_)
    applied = bool(biases) and (mode == "on" or bool(with_ >= without + AUTO_MIN_GAIN_DB))
    written = write_biases(qdq, biases) if applied else []
    return {"mode": mode, "applied": applied, "corrected_nodes": len(written),
            "calibration_sqnr_db": {"without": round(float(without), 3), "with": round(float(with_), 3)}}


def float_nodes_behind_dequantize(model: onnx.ModelProto) -> list[str]:
    """Conv/ConvTranspose/Gemm nodes kept in float whose input is a dequantized tensor. ORT's
    WeightBiasQuantization transformer would give them per-tensor int8 weights at load time; the onnxruntime
    runtime turns it off (t2tedge.ort_session.QDQ_DISABLED_OPTIMIZERS), and so must anyone loading the
    model in their own session who wants those nodes in float."""
    initializers = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    found = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm") or len(node.input) < 2:
            continue
        source = producers.get(node.input[0])
        weight = initializers.get(node.input[1])
        if (source is not None and source.op_type == "DequantizeLinear" and weight is not None
                and weight.data_type == onnx.TensorProto.FLOAT):
            found.append(node.name)
    return found


def calibration_images(reader) -> Any:
    """Every image a calibration reader yields (ours keeps them decoded; an ORT reader is read through)."""
    import numpy as np

    if hasattr(reader, "images"):
        return reader.images
    if hasattr(reader, "rewind"):
        reader.rewind()
    batches = []
    while (feed := reader.get_next()) is not None:
        batches.append(next(iter(feed.values())))
    if hasattr(reader, "rewind"):
        reader.rewind()
    return np.concatenate(batches)
