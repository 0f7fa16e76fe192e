"""Quantized LiteRT files, made from an fp32 `.tflite` with the LiteRT stack's own quantizer (ai-edge-quantizer): a
file in, a file out; `t2tedge.targets.litert` converts, stages and publishes.

Precisions:
- `fp16`: fp16 weights, fp32 compute (half the file; XNNPACK unpacks the weights when it loads).
- `w8`: dynamic range: int8 per-channel weights for the fully connected layers and full convolutions, whose
  kernels quantize their input per inference and return float. Needs no calibration. Depthwise convolutions
  stay float: XNNPACK has no dynamic-range depthwise kernel, and they left the delegate (3 partitions).
- `int8`: full-integer static PTQ, int8 per-channel weights, int8 activations with per-tensor ranges. What `export`
  ships applies the quantization plan (`quantize_tflite_with_plan`: the ONNX INT8 file's ranges and int8 weights on
  exactly the layers it quantizes); `quantize_tflite` calibrating on images itself is the peer the benchmarks
  compare. Calibrating itself, ConvNets quantize every op the quantizer supports. T2T-ViT quantizes its convolutions and fully connected layers and keeps LayerNorm, softmax, GELU and
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
from typing import Any

import numpy as np

from t2tedge.errors import DataError, T2TEdgeError, first_line, require_installed
from t2tedge.export.litert_export import INSTALL
from t2tedge.models.registry import TRANSFORMER_FAMILIES
from t2tedge.native_output import native_output_captured
from t2tedge.quantize.records import PlanUse, QuantizationSummary

# The precisions ai-edge-quantizer makes from an fp32 file.
QUANTIZED_PRECISIONS = ("fp16", "w8", "int8")
# Ops a transformer's int8 file computes in int8; everything else stays float (see the module docstring).
TRANSFORMER_INT8_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D")
DYNAMIC_RANGE_OPS = ("FULLY_CONNECTED", "CONV_2D")
# Bookkeeping ops that only move values between int8 and float.
CONVERSION_OPS = ("QUANTIZE", "DEQUANTIZE")


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
    raise T2TEdgeError(f"unknown LiteRT precision {precision!r}; ai-edge-quantizer makes "
                       f"{', '.join(QUANTIZED_PRECISIONS)}")


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
                    calibration: np.ndarray | None = None) -> QuantizationSummary:
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
    return _summary(destination, precision, "ai-edge-quantizer", recipe=recipe)


def _summary(tflite: Path, precision: str, quantizer: str, **fields: Any) -> QuantizationSummary:
    ops = op_precisions(tflite)
    return QuantizationSummary(precision=precision, quantizer=quantizer, int8_ops=ops["int8"],
                               int8_dynamic_ops=ops["int8_dynamic"], float_ops=ops["float"],
                               conversion_ops=ops["conversion"], **fields)


PLANNED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
OP_SCOPE_LENGTH = 10000  # ai-edge-quantizer's tfl_flatbuffer_utils.get_op_scope max_length


def scope_module_paths(tensor_name: str) -> list[str]:
    """The module paths in a litert-torch tensor name, one per `;`-separated scope (a fused tensor names each module
    it came from): `.../MobileNetV2_model/...Sequential_features/...InvertedResidual_1/...Sequential_conv/
    ...Conv2d_1;` -> [`features.1.conv.1`] (each scope step is `package.Class_attribute`)."""
    paths = []
    for scope in tensor_name.split(";"):
        parts = scope.split("/")
        start = next((i + 1 for i, part in enumerate(parts) if part.endswith("_model")), None)
        if start is not None:
            paths.append(".".join(part.rsplit(".", 1)[-1].split("_", 1)[1] for part in parts[start:] if "_" in part))
    return paths


def _planned_layer(plan: Any, weight: dict[str, Any], interpreter: Any, taken: set[str]) -> str | None:
    """The plan layer behind a weight tensor: by the module path in its name (a ModuleList adds no scope, so
    `0.attn.qkv` is `blocks.0.attn.qkv`), else by its values, which are the plan's grid whatever the layout (the
    export form computes T2T-ViT's projection as a convolution under the scope of its parent)."""
    free = [name for name in plan.layers if name not in taken]
    for path in scope_module_paths(weight["name"]):
        found = [name for name in free if name == path or name.endswith("." + path)]
        if len(found) == 1:
            return found[0]
    try:
        values = interpreter.get_tensor(weight["index"])
    except ValueError:
        return None
    if values.dtype != np.float32:
        return None
    channels = values.shape[3] if values.ndim == 4 and values.shape[0] == 1 else values.shape[0]
    rows = np.sort((np.moveaxis(values, 3, 0) if values.shape[0] == 1 and values.ndim == 4 else values)
                   .reshape(channels, -1), axis=1)
    for name in free:
        grid = plan.weight_grid(name)
        if grid.shape[0] == channels and grid.size == values.size and np.allclose(
                np.sort(grid.reshape(channels, -1), axis=1), rows, rtol=1e-6, atol=1e-7):
            return name
    return None


def _qsv(lo: float, hi: float) -> dict[str, np.ndarray]:
    return {"min": np.array([lo], dtype=np.float32), "max": np.array([hi], dtype=np.float32)}


def plan_calibration(tflite: str | os.PathLike, plan: Any) -> tuple[list[dict[str, Any]], dict[str, Any],
                                                                      list[str], list[dict[str, str]]]:
    """What ai-edge-quantizer needs to apply `plan` to the fp32 file `tflite` (whose planned layers already hold the
    plan's grid weights): a recipe quantizing exactly the planned layers (one entry per op, by its scope), and the
    calibration result it reads ranges from: the plan's ranges for their inputs and outputs, the plan's scales as
    each weight's per-channel range. Returns (recipe, calibration result, layers applied, deviations)."""
    import re

    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from t2tedge.quantize.quantization_plan import layer_output, unhonoured

    interpreter = Interpreter(model_path=str(tflite),
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    config = {"activation_tensor_config": _tensor_config(8, "INT", "TENSORWISE", symmetric=False),
              "weight_tensor_config": _tensor_config(8, "INT"), "compute_precision": "INTEGER",
              "explicit_dequantize": False}
    recipe, qsvs, applied, deviations = [], {}, [], []
    for op in interpreter._get_ops_details():  # the public API lists no ops; this is what the analyzer reads
        if op["op_name"] not in PLANNED_OPS or len(op["inputs"]) < 2:
            continue
        weight = tensors[op["inputs"][1]]
        name = _planned_layer(plan, weight, interpreter, set(applied))
        if name is None:
            continue
        layer = plan.layers[name]
        output, deviation = layer_output(plan, name, "LiteRT")
        if deviation is not None:
            deviations.append(deviation)
        if output is None:
            continue
        scales = plan.arrays[f"{name}.scale"].astype(np.float32)
        channel_axis = 3 if op["op_name"] == "DEPTHWISE_CONV_2D" else 0
        shape = [1] * len(weight["shape"])
        shape[channel_axis] = len(scales)
        qsvs[weight["name"]] = {"min": (-127.0 * scales).reshape(shape), "max": (127.0 * scales).reshape(shape)}
        qsvs[tensors[op["inputs"][0]]["name"]] = _qsv(*layer.input_range)
        out_name = tensors[op["outputs"][0]]["name"]
        qsvs[out_name] = _qsv(*output)
        scope = f"{out_name};"[:OP_SCOPE_LENGTH]  # how ai-edge-quantizer names an op: its outputs, ';'-ended, cut
        recipe.append({"regex": f"^{re.escape(scope)}$", "operation": op["op_name"],
                       "algorithm_key": "min_max_uniform_quantize", "op_config": config})
        applied.append(name)
    deviations = unhonoured(plan, applied, deviations)
    return recipe, qsvs, applied, deviations


def quantize_tflite_with_plan(fp32: Path, destination: Path, plan: Any) -> QuantizationSummary:
    """Write the int8 file of `plan` applied to `fp32` through ai-edge-quantizer, with no calibration; the report."""
    require_installed("ai_edge_quantizer", INSTALL)
    recipe, qsvs, applied, deviations = plan_calibration(fp32, plan)
    if not recipe:
        raise T2TEdgeError(f"no layer of {fp32.name} is in the quantization plan (made for {plan.model})")
    with native_output_captured():
        from ai_edge_quantizer import quantizer

        engine = quantizer.Quantizer(str(fp32))
        engine.load_quantization_recipe(recipe)
    try:
        with native_output_captured(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            engine.quantize(qsvs, enable_progress_report=False).export_model(str(destination), overwrite=True)
    except Exception as exc:  # the quantizer raises plain Exceptions and RuntimeErrors
        raise T2TEdgeError(f"LiteRT int8 quantization with the plan failed: {first_line(exc)}") from None
    use = PlanUse(source=plan.source, calibration=plan.calibration, layers=len(plan.layers),
                  layers_applied=len(applied), deviations=deviations)
    return _summary(destination, "int8", "ai-edge-quantizer, the quantization plan's ranges and int8 weights", plan=use)


def file_qparams(tflite: str | os.PathLike) -> list[dict[str, Any]]:
    """Read back each int8 convolution and fully connected op of a file, in file order: its int8 weights (output
    channel first), their scales, and its input's (scale, zero point)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_path=str(tflite),
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    found = []
    for op in interpreter._get_ops_details():
        if op["op_name"] not in PLANNED_OPS:
            continue
        source, weight = tensors[op["inputs"][0]], tensors[op["inputs"][1]]
        if np.dtype(source["dtype"]) != np.int8 or np.dtype(weight["dtype"]) != np.int8:
            continue
        values = interpreter.get_tensor(weight["index"])
        if op["op_name"] == "DEPTHWISE_CONV_2D":
            values = np.moveaxis(values, 3, 0)
        found.append({"op": op["op_name"], "weight": values,
                      "weight_scale": weight["quantization_parameters"]["scales"].astype(np.float32),
                      "input_scale": float(source["quantization_parameters"]["scales"][0]),
                      "input_zero_point": int(source["quantization_parameters"]["zero_points"][0])})
    return found
