"""Quantized LiteRT files, made from our fp32 `.tflite` with the LiteRT stack's own quantizer (ai-edge-quantizer).

Precisions:
- `fp16`: fp16 weights, fp32 compute (half the file; XNNPACK unpacks the weights when it loads).
- `w8`: dynamic range: int8 per-channel weights for the fully connected layers and full convolutions, whose
  kernels quantize their input per inference and return float. Needs no calibration. Depthwise convolutions
  stay float: XNNPACK has no dynamic-range depthwise kernel, and they left the delegate (3 partitions).
- `int8`: full-integer static PTQ calibrated on real images through the model's preprocessing, int8 per-channel
  weights, int8 activations with calibrated per-tensor ranges. ConvNets quantize every op the quantizer
  supports. T2T-ViT quantizes its convolutions and fully connected layers and keeps LayerNorm, softmax, GELU and
  the activation x activation matmuls of attention in float, the same ViT-aware choice as our ONNX path: int8
  there costs accuracy and, on XNNPACK, split the graph into 88 delegate partitions, and int8 DIV failed to run.

For T2T-ViT, `w8` is the better int8 file (docs/litert.md): static ranges requantize every fully connected
output, the residual stream among them, to int8 (17.9 dB logits SQNR on the trained T2T-ViT-7), while w8's
float outputs keep 43 dB at a lower latency.

Why not litert-torch's PT2E quantizer on the PyTorch graph: its int8 MobileNetV2 kept 35 TRANSPOSE, 26 QUANTIZE and
13 DEQUANTIZE ops around NCHW convolutions, ran partly outside XNNPACK and scored 12.7% top-1 (fp32 79.0%).
Quantizing the converted NHWC file keeps every op in the delegate.
"""

from __future__ import annotations

import collections
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from t2tedge import metadata_keys as keys
from t2tedge.data import Sample
from t2tedge.errors import DataError, T2TEdgeError, first_line, require_installed
from t2tedge.export.litert_export import INSTALL, check_layout, convert_fp32, input_metadata
from t2tedge.fileio import staging_dir
from t2tedge.models import get_spec
from t2tedge.native_output import native_output_captured
from t2tedge.quantize.calibration import calibration_set, images_of
from t2tedge.sidecar import publish_with_sidecar

LITERT_PRECISIONS = ("fp32", "fp16", "w8", "int8")
# Ops a transformer's int8 file computes in int8; everything else stays float (see the module docstring).
TRANSFORMER_INT8_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D")
TRANSFORMER_FAMILIES = ("T2T-ViT",)
DYNAMIC_RANGE_OPS = ("FULLY_CONNECTED", "CONV_2D")
# Bookkeeping ops that only move values between int8 and float.
CONVERSION_OPS = ("QUANTIZE", "DEQUANTIZE")
DEFAULT_NUM_CALIB = 256


def file_suffix(precision: str) -> str:
    return "" if precision == "fp32" else f"_{precision}"


def _tensor_config(bits: int, dtype: str, granularity: str = "CHANNELWISE", symmetric: bool = True) -> dict[str, Any]:
    return {"num_bits": bits, "symmetric": symmetric, "granularity": granularity, "dtype": dtype}


def recipe_for(precision: str, family: str) -> list[dict[str, Any]]:
    """The ai-edge-quantizer recipe (a list of {regex, operation, algorithm_key, op_config}) for `precision`."""
    if precision == "fp16":
        return [{"regex": ".*", "operation": "*", "algorithm_key": "float_casting",
                 "op_config": {"weight_tensor_config": _tensor_config(16, "FLOAT", "TENSORWISE"),
                               "compute_precision": "FLOAT", "explicit_dequantize": True}}]
    if precision == "w8":
        return [{"regex": ".*", "operation": op, "algorithm_key": "min_max_uniform_quantize",
                 "op_config": {"weight_tensor_config": _tensor_config(8, "INT"),
                               "compute_precision": "INTEGER", "explicit_dequantize": False}}
                for op in DYNAMIC_RANGE_OPS]
    if precision == "int8":
        static = {"activation_tensor_config": _tensor_config(8, "INT", "TENSORWISE", symmetric=False),
                  "weight_tensor_config": _tensor_config(8, "INT"),
                  "compute_precision": "INTEGER", "explicit_dequantize": False}
        operations = TRANSFORMER_INT8_OPS if family in TRANSFORMER_FAMILIES else ("*",)
        return [{"regex": ".*", "operation": op, "algorithm_key": "min_max_uniform_quantize", "op_config": static}
                for op in operations]
    raise T2TEdgeError(f"unknown LiteRT precision {precision!r}; choose {', '.join(LITERT_PRECISIONS)}")


def op_precisions(tflite: str | os.PathLike) -> dict[str, dict[str, int]]:
    """Op type -> count, per kind of arithmetic in the file as written (before any delegate): `int8` (int8
    activations with stored ranges), `int8_dynamic` (float activations quantized per inference against int8
    weights), `float`, and the int8 <-> float `conversion` ops between them."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_path=str(tflite),
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    dtypes = {t["index"]: np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}
    counts: dict[str, collections.Counter[str]] = {kind: collections.Counter() for kind in
                                                   ("int8", "int8_dynamic", "float", "conversion")}
    for op in interpreter._get_ops_details():  # the public API lists no ops; this is what the analyzer reads
        if op["op_name"] in CONVERSION_OPS:
            counts["conversion"][op["op_name"]] += 1
            continue
        inputs = [dtypes.get(i) for i in op["inputs"] if i >= 0]
        integer = [dtype in ("int8", "uint8", "int16") for dtype in inputs]
        kind = "int8" if integer[:1] == [True] else "int8_dynamic" if any(integer[1:2]) else "float"
        counts[kind][op["op_name"]] += 1
    return {kind: dict(sorted(c.items())) for kind, c in counts.items()}


def _signature(tflite: Path) -> tuple[str, str]:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    signatures = Interpreter(model_path=str(tflite), experimental_op_resolver_type=(
        OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)).get_signature_list()
    if not signatures:
        raise T2TEdgeError(f"{tflite.name} has no signature to calibrate through")
    key = next(iter(signatures))
    return key, signatures[key]["inputs"][0]


def quantize_tflite(fp32: Path, destination: Path, precision: str, family: str,
                    calibration: np.ndarray | None = None) -> dict[str, Any]:
    """Write the `precision` variant of the fp32 file `fp32` to `destination`; returns the report. `calibration`
    (N images in the file's input layout) is needed for int8."""
    require_installed("ai_edge_quantizer", INSTALL)
    if precision == "int8" and (calibration is None or not len(calibration)):
        raise DataError("int8 needs calibration images")
    recipe = recipe_for(precision, family)
    with native_output_captured():
        from ai_edge_quantizer import quantizer

        engine = quantizer.Quantizer(str(fp32))
        engine.load_quantization_recipe(recipe)
    result = None
    if precision == "int8":
        key, name = _signature(fp32)
        feed = [{name: calibration[i:i + 1]} for i in range(len(calibration))]
        print(f"calibrating on {len(feed)} images (ai-edge-quantizer's bar counts ops x images) ...", file=sys.stderr,
              flush=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = engine.calibrate({key: feed}, num_threads=os.cpu_count() or 1)
    try:
        with native_output_captured():
            engine.quantize(result, enable_progress_report=False).export_model(str(destination), overwrite=True)
    except Exception as exc:  # the quantizer raises plain Exceptions and RuntimeErrors
        raise T2TEdgeError(f"LiteRT {precision} quantization failed: {first_line(exc)}") from None
    ops = op_precisions(destination)
    return {"precision": precision, "quantizer": "ai-edge-quantizer", "recipe": recipe,
            "int8_ops": ops["int8"], "int8_dynamic_ops": ops["int8_dynamic"], "float_ops": ops["float"],
            "conversion_ops": ops["conversion"]}


def calibration_images(samples: Sequence[Sample], model_name: str, layout: str) -> np.ndarray:
    return images_of(samples, get_spec(model_name).preprocess, layout)


def export_litert_model(model_name: str, checkpoint: str | os.PathLike | None = None,
                        out_dir: str | os.PathLike = "artifacts/litert", precision: str = "fp32",
                        layout: str = "nhwc", calib: str | os.PathLike | None = None,
                        num_calib: int = DEFAULT_NUM_CALIB, seed: int = 0, exclude: Sequence[Sample] = (),
                        calibration: Sequence[Sample] | None = None, destination: str | os.PathLike | None = None,
                        **overrides: Any) -> tuple[Path, dict[str, Any]]:
    """`MODEL[_precision].tflite` and its sidecar JSON, moved into place together. Returns (path, metadata).
    int8 calibrates on `num_calib` images drawn from `calib` (never any of `exclude`), or on `calibration` as given."""
    check_layout(layout)
    if precision not in LITERT_PRECISIONS:
        raise T2TEdgeError(f"unknown LiteRT precision {precision!r}; choose {', '.join(LITERT_PRECISIONS)}")
    spec = get_spec(model_name)
    samples, chosen = calibration_set(calib, num_calib, seed, exclude, calibration) if precision == "int8" else ([], {})
    destination = Path(destination) if destination else Path(out_dir) / f"{model_name}{file_suffix(precision)}.tflite"
    with staging_dir(destination.parent, destination.stem) as staging:
        staged, metadata = convert_fp32(model_name, checkpoint, staging, layout, **overrides)
        if precision != "fp32":
            images = calibration_images(samples, model_name, layout) if precision == "int8" else None
            final = staging / f"{destination.stem}.quantized.tflite"
            report = quantize_tflite(staged, final, precision, spec.family, images)
            if chosen:
                report["calibration"] = chosen
            metadata.update({**input_metadata(layout, precision), keys.QUANTIZATION: report})
            staged = final
        return publish_with_sidecar(staged, destination, metadata), metadata
