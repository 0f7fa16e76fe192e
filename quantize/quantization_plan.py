"""One quantization plan for every target: what the reference INT8 pipeline decided, in model-level names.

The plan is read out of the QDQ file `t2tedge quantize` writes (MSE ranges, GPTQ-rounded weights, corrected biases,
the ViT-aware list of what stays float), so it carries the ONNX path's methods without a second implementation of
them. Its keys are the model's own module paths (`blocks.3.mlp.fc1`, `features.4.conv.1`), never ONNX node names:
- a layer: int8 weights per output channel with their scales (symmetric, the grid `q * scale`), the bias the
  pipeline corrected, the range of its quantized input, and the range of its output when the reference quantizes
  that output (on the activation after it when the reference folded a ReLU6 or ReLU into the range);
- activations carry ranges, not zero points, so each target derives its own qparams under its own rules
  (XNNPACK's asymmetric int8, ONNX Runtime's uint8, TensorRT's symmetric int8).

Saved as `PLAN.json` (readable, the record `t2tedge.quant-plan/2` with its JSON Schema in docs/schemas) and
`PLAN.npz` (the arrays) side by side; `load_plan` refuses another version, and checks every array and range
against the layers the plan names before anything is built from it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
from onnx import numpy_helper

from t2tedge import metadata_keys as keys
from t2tedge.errors import DataError, T2TEdgeError
from t2tedge.op_blocks import module_path
from t2tedge.quantize.config import DEFAULT_OP_TYPES, FOLDABLE_ACTIVATIONS, QuantConfig
from t2tedge.quantize.records import CalibrationInfo
from t2tedge.results import Record, ResultFormatError

PLAN_SUFFIX = ".plan.json"
_INT_RANGES = {onnx.TensorProto.UINT8: (0, 255), onnx.TensorProto.INT8: (-128, 127)}


@dataclass(frozen=True)
class LayerPlan(Record):
    """One quantized layer. `input_range` and `output_range` are real (lo, hi); `output_range` None: float output.
    `output_after_activation`: the output range is that of the ReLU/ReLU6 that follows the layer."""

    op: str
    channels: int
    input_range: tuple[float, float]
    output_range: tuple[float, float] | None = None
    output_after_activation: bool = False
    has_bias: bool = False
    # The reference keeps this output float; the range calibration measured for it after its bias, for targets whose
    # int8 kernels must requantize every output (XNNPACK's).
    requantization_range: tuple[float, float] | None = None


@dataclass
class QuantPlan(Record):
    """The plan of one (model, weights, calibration images, recipe). `arrays` holds `LAYER.weight` (int8, output
    channel first, the layer's own weight layout), `LAYER.scale` (float32 per channel) and `LAYER.bias` (float32);
    they are saved beside the JSON, not in it."""

    SCHEMA: ClassVar[str] = "t2tedge.quant-plan/2"
    model: str
    weights: str
    calibration: CalibrationInfo
    recipe: QuantConfig
    layers: dict[str, LayerPlan]
    arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False, metadata={"json": False})
    float_layers: list[str] = field(default_factory=list)
    # Quantized in the reference file but with no module of the model behind them (the Performer's products with
    # its fixed random features, and products of two activations where the recipe quantizes them): targets built
    # from the PyTorch model keep them float and list them as deviations.
    reference_only: list[str] = field(default_factory=list)
    source: str = ""

    def weight_grid(self, layer: str) -> np.ndarray:
        """The layer's weights on the plan's int8 grid, as float32 (q * scale), in the stored layout."""
        q = self.arrays[f"{layer}.weight"].astype(np.float32)
        scale = self.arrays[f"{layer}.scale"].astype(np.float32)
        return q * scale.reshape((-1,) + (1,) * (q.ndim - 1))

    def bias(self, layer: str) -> np.ndarray | None:
        return self.arrays.get(f"{layer}.bias")

    def check(self, where: str) -> None:
        """Every array the layers name, with its dtype and shape, and every scale and range finite and ordered:
        DataError naming the first layer that is wrong."""
        for name, layer in self.layers.items():
            problem = _layer_problem(self, name, layer)
            if problem:
                raise DataError(f"{where}: layer {name}: {problem}; build the plan again")

    def save(self, path: str | os.PathLike) -> tuple[Path, Path]:
        """Write `path` (JSON, ending in .plan.json) and its arrays beside it; returns both paths."""
        from t2tedge.fileio import atomic_path, atomic_write_text

        path = Path(path)
        arrays = arrays_path(path)
        with atomic_path(arrays, suffix=".npz") as staged:
            with open(staged, "wb") as handle:
                np.savez_compressed(handle, **self.arrays)
        atomic_write_text(path, self.to_json())
        return path, arrays


def _range_problem(what: str, bounds: tuple[float, float] | None) -> str | None:
    if bounds is None:
        return None
    low, high = bounds
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{what} {list(bounds)} is not finite"
    if low > high:
        return f"{what} {list(bounds)} is not ordered (low > high)"
    return None


def _layer_problem(plan: QuantPlan, name: str, layer: LayerPlan) -> str | None:
    weight, scale, bias = (plan.arrays.get(f"{name}.{kind}") for kind in ("weight", "scale", "bias"))
    if weight is None or scale is None:
        return "its weight or scale array is missing (the plan's files do not belong together)"
    if weight.dtype != np.int8 or weight.ndim < 2 or weight.shape[0] != layer.channels:
        return f"weights {weight.dtype} {list(weight.shape)}, expected int8 with {layer.channels} output channels"
    if scale.dtype != np.float32 or scale.shape != (layer.channels,):
        return f"scales {scale.dtype} {list(scale.shape)}, expected float32 [{layer.channels}]"
    if not np.all(np.isfinite(scale)) or not np.all(scale > 0):
        return "a scale is not finite or not positive"
    if layer.has_bias and (bias is None or bias.shape != (layer.channels,) or not np.all(np.isfinite(bias))):
        return f"its bias is missing, of another shape than [{layer.channels}], or not finite"
    return (_range_problem("input range", layer.input_range) or _range_problem("output range", layer.output_range)
            or _range_problem("requantization range", layer.requantization_range))


def arrays_path(plan_json: str | os.PathLike) -> Path:
    name = Path(plan_json).name
    stem = name[:-len(PLAN_SUFFIX)] if name.endswith(PLAN_SUFFIX) else Path(name).stem
    return Path(plan_json).with_name(f"{stem}.plan.npz")


def plan_path_for(artifact: str | os.PathLike) -> Path:
    """Where the plan of an INT8 file lives: `MODEL_int8.onnx` -> `MODEL_int8.plan.json`."""
    artifact = Path(artifact)
    return artifact.with_name(f"{artifact.stem}{PLAN_SUFFIX}")


def load_plan(path: str | os.PathLike) -> QuantPlan:
    """Read a plan written by `QuantPlan.save`, checked (`QuantPlan.check`); one clear DataError for a missing,
    damaged, inconsistent or other-version file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"quantization plan not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read quantization plan {path}: {exc}") from None
    if not isinstance(data, dict) or "layers" not in data:
        raise DataError(f"{path} is not a t2tedge quantization plan (no layers)")
    if data.get("schema") != QuantPlan.SCHEMA:
        found = data.get("schema") or f"version {data.get('version')}"
        raise DataError(f"{path} is a plan of {found}; this t2t-edge reads {QuantPlan.SCHEMA}: build the plan again")
    try:
        plan = QuantPlan.from_dict(data, where=path.name)
    except (ResultFormatError, T2TEdgeError) as exc:
        raise DataError(f"bad quantization plan: {exc}") from None
    try:
        with np.load(arrays_path(path)) as stored:
            plan.arrays = {key: stored[key] for key in stored.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the plan's arrays {arrays_path(path)}: {exc}") from None
    plan.check(path.name)
    return plan


def _flat(array: np.ndarray) -> np.ndarray:
    return array.reshape(array.shape[0], -1)


def _layer_modules(model: Any) -> dict[str, np.ndarray]:
    """Module path -> weight (output channel first) of every Conv2d and Linear of the PyTorch model."""
    import torch.nn as nn

    return {name: module.weight.detach().numpy() for name, module in model.named_modules()
            if isinstance(module, (nn.Conv2d, nn.Linear))}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


class _Resolver:
    """Finds the model module behind a reference layer: by the node's scope when that is a Conv2d/Linear of the
    right size, else by weight values (the export may have reshaped a Linear into a convolution)."""

    def __init__(self, model: Any) -> None:
        self.weights = _layer_modules(model)
        self.taken: set[str] = set()

    def __call__(self, node: onnx.NodeProto, weight_out_first: np.ndarray) -> str | None:
        path = module_path(node.name)
        if path in self.weights and self.weights[path].size == weight_out_first.size and path not in self.taken:
            self.taken.add(path)
            return path
        flat = _flat(weight_out_first)
        for name, weight in self.weights.items():
            if name in self.taken or weight.size != flat.size or weight.shape[0] != flat.shape[0]:
                continue
            # The reference's weights are on the int8 grid (and GPTQ moves some by more than a step): close, not equal.
            if _cosine(_flat(weight), flat) > 0.999:
                self.taken.add(name)
                return name
        return None


def _range_of(q_node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> tuple[float, float]:
    scale = float(numpy_helper.to_array(inits[q_node.input[1]]))
    zero = inits[q_node.input[2]]
    lo, hi = _INT_RANGES[zero.data_type]
    z = int(numpy_helper.to_array(zero))
    return ((lo - z) * scale, (hi - z) * scale)


def plan_from_qdq(qdq_path: str | os.PathLike, model: Any, *, model_name: str, weights: str,
                  calibration: CalibrationInfo, recipe: QuantConfig,
                  requantization: dict[str, tuple[float, float]] | None = None) -> QuantPlan:
    """The plan a QDQ file of ours carries, named after the modules of `model` (the export-form PyTorch model the
    file was traced from). `requantization`: layer output tensor -> the calibrated range after its bias, for
    outputs the file keeps float (else the symmetric range of the product before the bias stands in)."""
    proto = onnx.load(str(qdq_path))
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def dequantized(name: str) -> onnx.NodeProto | None:
        node = producers.get(name)
        return node if node is not None and node.op_type == "DequantizeLinear" else None

    def activation_range(name: str) -> tuple[float, float] | None:
        dq = dequantized(name)
        q = producers.get(dq.input[0]) if dq is not None else None
        return _range_of(q, inits) if q is not None and q.op_type == "QuantizeLinear" else None

    def output_quantization(node: onnx.NodeProto) -> tuple[tuple[float, float] | None, bool]:
        users = consumers.get(node.output[0], [])
        after = False
        if len(users) == 1 and users[0].op_type in FOLDABLE_ACTIVATIONS:  # an activation the reference kept
            users, after = consumers.get(users[0].output[0], []), True
        qs = [u for u in users if u.op_type == "QuantizeLinear"]
        if not qs:
            return None, False
        lo, hi = _range_of(qs[0], inits)
        return (lo, hi), after

    meta = {p.key: p.value for p in proto.metadata_props}
    float_outputs = json.loads(meta.get(keys.FLOAT_OUTPUT_RANGES, "{}"))
    resolve = _Resolver(model)
    layers: dict[str, LayerPlan] = {}
    arrays: dict[str, np.ndarray] = {}
    reference_only: list[str] = []
    for node in graph.node:
        if node.op_type not in DEFAULT_OP_TYPES or len(node.input) < 2:
            continue
        weight_dq, input_range = dequantized(node.input[1]), activation_range(node.input[0])
        if weight_dq is not None and weight_dq.input[0] not in inits and input_range is not None:
            # A product of two quantized activations (`--int8-products`): no module and no weights behind it.
            reference_only.append(module_path(node.name) + f" (activation product {node.name})")
            continue
        if weight_dq is None or weight_dq.input[0] not in inits or input_range is None:
            continue
        q = numpy_helper.to_array(inits[weight_dq.input[0]])
        scale = numpy_helper.to_array(inits[weight_dq.input[1]]).astype(np.float32).reshape(-1)
        if node.op_type == "MatMul" or (node.op_type == "Gemm" and not _gemm_transposes_b(node)):
            q = q.T  # [in, out] -> output channel first
        name = resolve(node, q.astype(np.float32) * scale.reshape((-1,) + (1,) * (q.ndim - 1)))
        if name is None:
            reference_only.append(module_path(node.name) + f" ({node.op_type} {node.name})")
            continue
        output_range, after = output_quantization(node)
        bias = _bias_of(node, graph, inits, producers, consumers)
        requantize = None
        if output_range is None and node.output[0] in (requantization or {}):
            requantize = tuple(requantization[node.output[0]])
        elif output_range is None and float_outputs.get(node.output[0]):
            requantize = (-float_outputs[node.output[0]], float_outputs[node.output[0]])
        layers[name] = LayerPlan(op=node.op_type, channels=int(q.shape[0]), input_range=input_range,
                                 output_range=output_range, output_after_activation=after, has_bias=bias is not None,
                                 requantization_range=requantize)
        arrays[f"{name}.weight"] = q.astype(np.int8)
        arrays[f"{name}.scale"] = scale
        if bias is not None:
            arrays[f"{name}.bias"] = bias
    eligible = [name for name in resolve.weights if name not in layers]
    return QuantPlan(model=model_name, weights=weights, calibration=calibration, recipe=recipe, layers=layers,
                     arrays=arrays, float_layers=eligible, reference_only=reference_only,
                     source=f"t2tedge quantize QDQ file {Path(qdq_path).name}")


def _gemm_transposes_b(node: onnx.NodeProto) -> bool:
    return any(a.name == "transB" and a.i == 1 for a in node.attribute)


def _bias_of(node: onnx.NodeProto, graph: onnx.GraphProto, inits, producers, consumers) -> np.ndarray | None:
    """The layer's bias as float: Conv/Gemm's third input (int32 behind a DequantizeLinear, or float), or the
    constant of the Add that follows a MatMul."""
    def constant(name: str) -> np.ndarray | None:
        dq = producers.get(name)
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits:
            values = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float64)
            scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
            return (values * scale).astype(np.float32)
        return numpy_helper.to_array(inits[name]).astype(np.float32) if name in inits else None

    if node.op_type in ("Conv", "Gemm"):
        return constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    users = consumers.get(node.output[0], [])
    if len(users) == 1 and users[0].op_type == "Add":
        other = [name for name in users[0].input if name != node.output[0]]
        return constant(other[0]) if other else None
    return None


def layer_output(plan: QuantPlan, name: str, runtime: str) -> tuple[tuple[float, float] | None, dict[str, str] | None]:
    """(the range a target whose int8 kernels requantize every output gives layer `name`'s output, the deviation from
    the plan that is): the plan's output range; else its requantization range, a requantization inserted; else None,
    the layer stays float."""
    layer = plan.layers[name]
    if layer.output_range is not None:
        return layer.output_range, None
    if layer.requantization_range is not None:
        return layer.requantization_range, {"layer": name, "what": "requantization inserted: output on the plan's "
                                            "calibrated requantization range (the reference keeps it float)"}
    return None, {"layer": name, "what": f"float: {runtime}'s int8 kernel needs an output range and the plan keeps "
                                         f"this output float without one"}


def unhonoured(plan: QuantPlan, applied: list[str], deviations: list[dict[str, str]]) -> list[dict[str, str]]:
    """`deviations` and every other plan layer a target did not quantize: absent from its graph, or quantized in the
    reference file only."""
    seen = set(applied) | {d["layer"] for d in deviations}
    return (deviations + [{"layer": name, "what": "not in this file's graph; float"} for name in plan.layers
                          if name not in seen]
            + [{"layer": name, "what": "quantized in the reference file only (no module behind it); float"}
               for name in plan.reference_only])


def check_plan_fits(plan: QuantPlan, model_name: str, weights: str) -> None:
    """A plan replaces the model's weights with its own int8 ones: refuse one made for another model or weights."""
    if plan.model != model_name or (plan.weights and plan.weights != weights):
        raise DataError(f"the plan is for {plan.model} with weights {plan.weights}; this build is {model_name} with "
                        f"weights {weights}: build the plan from the same weights")


def planned_model(model_name: str, checkpoint: str | os.PathLike | None, plan: QuantPlan | None,
                  **overrides: Any) -> tuple[Any, str]:
    """(the export-form model, its weights stamp), holding `plan`'s grid weights and biases when a plan is given
    (refused when it was made for another model or other weights): what every target that applies plans builds."""
    from t2tedge.export.common import build_model

    model, weights = build_model(model_name, checkpoint, **overrides)
    if plan is not None:
        check_plan_fits(plan, model_name, weights)
        apply_plan_weights(model, plan)
    return model, weights


def apply_plan_weights(model: Any, plan: QuantPlan) -> list[str]:
    """Put the plan's grid weights and biases into `model` in place, after folding each BatchNorm that follows a
    planned convolution into it (the reference file's weights are folded ones). Returns the layers set."""
    import torch
    import torch.nn as nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model.eval()
    modules = dict(model.named_modules())
    for parent_name, parent in list(modules.items()):
        children = list(parent.named_children())
        for (name, child), (next_name, following) in zip(children, children[1:]):
            path = f"{parent_name}.{name}" if parent_name else name
            if isinstance(child, nn.Conv2d) and isinstance(following, nn.BatchNorm2d) and path in plan.layers:
                setattr(parent, name, fuse_conv_bn_eval(child, following))
                setattr(parent, next_name, nn.Identity())
    modules = dict(model.named_modules())
    done = []
    with torch.no_grad():
        for name in plan.layers:
            module = modules.get(name)
            if module is None:
                continue
            grid = torch.from_numpy(plan.weight_grid(name)).reshape(module.weight.shape)
            module.weight.copy_(grid)
            bias = plan.bias(name)
            if bias is not None:
                if module.bias is None:
                    module.bias = nn.Parameter(torch.zeros(module.weight.shape[0]))
                module.bias.copy_(torch.from_numpy(bias))
            done.append(name)
    return done
