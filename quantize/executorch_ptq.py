"""Quantized ExecuTorch programs, with ExecuTorch's and torchao's own quantization APIs: a module in, an exported
(quantized) program out; `t2tedge.targets.executorch` lowers, stages and publishes.

Precisions (XNNPACK delegate):
- `fp32`.
- `w8`: int8 per-channel weights for every nn.Linear, activations quantized per token at run time (torchao's
  `Int8DynamicActivationIntxWeightConfig`, what ExecuTorch's XNNPACK recipes call 8da8w; XNNPACK's QD8 kernels).
  Needs no calibration. This is the int8 program for T2T-ViT: the float residual stream and per-token scales keep
  it within 0.1% agreement of fp32. ConvNets have one nn.Linear (the classifier), so it changes little there.
- `int8`: full static PT2E quantization (per-channel int8 weights, per-tensor int8 activations). What `export`
  ships applies the quantization plan (`quantize_with_plan`: the ONNX INT8 file's ranges, int8 weights and biases);
  `quantize_static`, ExecuTorch's `XNNPACKQuantizer` calibrating on images itself, is the peer the benchmarks
  compare. Calibrating itself, ConvNets quantize every op the quantizer covers. T2T-ViT quantizes its nn.Linear layers only and keeps LayerNorm, softmax, GELU,
  the Performer and the attention matmuls in float, the same ViT-aware choice as our ONNX and LiteRT paths.

Two annotations differ from the quantizer's defaults:
- ReLU6: XNNPACKQuantizer gives ReLU6 (hardtanh) its input's quantization, so a convolution's output is quantized
  over its whole pre-clamp range (tens, not 6) and the ReLU6 output reuses that coarse grid.
  `ClampFusedXNNPACKQuantizer` quantizes the ReLU6 output instead, with its own observer, and leaves the
  convolution's output unquantized, which XNNPACK runs as one convolution with a fused clamp. On MobileNetV2 that
  takes agreement from 91.5% to 98.4% (docs/executorch.md).
- Zero pads in front of a convolution (TF "SAME" padding): quantized as ops of their own, each runs in fp32
  between two conversions (executorch 1.5's XNNPACK has no int8 pad), 0.55 ms of MobileNetV2's 2.6 ms. Left
  unquantized between the quantized input and the convolution, they are the pattern the partitioner folds into
  the int8 convolution (`_fuse_pads`).
"""

from __future__ import annotations

import collections
import copy
import sys
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from t2tedge.errors import T2TEdgeError
from t2tedge.export.executorch_export import export_program, op_name
from t2tedge.models.registry import TRANSFORMER_FAMILIES
from t2tedge.native_output import native_output_captured
from t2tedge.quantize.records import PlanUse, QuantizationSummary

# Nodes that move or reinterpret data, or do nothing in eval (dropout), by op name without namespace, overload or
# `_copy`; the report counts arithmetic. Matched whole: a substring test like "t.default" also caught rsqrt and cat.
_LAYOUT_OPS = frozenset({"view", "reshape", "permute", "transpose", "slice", "clone", "expand", "unsqueeze", "squeeze",
                         "flatten", "_to", "getitem", "detach", "alias", "contiguous", "t", "select", "dropout",
                         "access_subclass_inner_tensor"})
_QUANT_OPS = ("quantize", "dequantize", "choose_qparams")


def _is_zero_pad(node: torch.fx.Node) -> bool:
    if node.op != "call_function":
        return False
    if node.target == torch.ops.aten.constant_pad_nd.default:
        return (node.args[2] if len(node.args) > 2 else 0) == 0
    if node.target == torch.ops.aten.pad.default:
        mode = node.args[2] if len(node.args) > 2 else "constant"
        return mode == "constant" and (node.args[3] if len(node.args) > 3 else None) in (None, 0)
    return False


def _fuse_pads(model: torch.fx.GraphModule) -> None:
    """Take each zero pad that feeds a convolution out of quantization, in place: the convolution's input
    quantization moves to the pad's input, so nothing is quantized between pad and convolution, the pattern XNNPACK's
    partitioner folds into the int8 convolution."""
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    for pad in model.graph.nodes:
        if not _is_zero_pad(pad) or len(pad.users) != 1:
            continue
        conv = next(iter(pad.users))
        annotation = conv.meta.get("quantization_annotation")
        if conv.target != torch.ops.aten.conv2d.default or annotation is None or pad not in annotation.input_qspec_map:
            continue
        pad.meta["quantization_annotation"] = QuantizationAnnotation(
            input_qspec_map={pad.args[0]: annotation.input_qspec_map.pop(pad)}, output_qspec=None, _annotated=True)


def _clamp_fused_quantizer(config: Any, family: str) -> Any:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    class ClampFusedXNNPACKQuantizer(XNNPACKQuantizer):
        """XNNPACKQuantizer with ReLU6 outputs quantized on their own range (see the module docstring)."""

        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            model = super().annotate(model)
            clamps = (torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default)
            for node in model.graph.nodes:
                producer = node.args[0] if node.op == "call_function" and node.target in clamps else None
                if producer is None or producer.target != torch.ops.aten.conv2d.default or len(producer.users) != 1:
                    continue
                annotation = producer.meta.get("quantization_annotation")
                if annotation is None or annotation.output_qspec is None:
                    continue
                annotation.output_qspec = None
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map={}, output_qspec=config.output_activation, _annotated=True)
            _fuse_pads(model)
            return model

    quantizer = ClampFusedXNNPACKQuantizer()
    if family in TRANSFORMER_FAMILIES:
        quantizer.set_module_type(nn.Linear, config)
    else:
        quantizer.set_global(config)
    return quantizer


def quantize_static(program: torch.export.ExportedProgram, family: str, images: np.ndarray,
                    progress: bool = True, quantizer: Any = None) -> torch.export.ExportedProgram:
    """PT2E static int8 of `program`, calibrated on `images` (N, 3, H, W), re-exported for lowering. `quantizer`:
    another PT2E quantizer instead of ours (the benchmark's plain-default peer)."""
    with native_output_captured():  # torchao reports its missing CUDA extensions on import
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        if quantizer is None:
            quantizer = _clamp_fused_quantizer(get_symmetric_quantization_config(is_per_channel=True), family)
        prepared = prepare_pt2e(program.module(), quantizer)
    with torch.no_grad():
        for i in tqdm(range(len(images)), desc="calibrate", unit="img", disable=not progress, file=sys.stderr):
            prepared(torch.from_numpy(np.ascontiguousarray(images[i:i + 1])))
    with native_output_captured():
        converted = convert_pt2e(prepared)
    return export_program(converted, torch.from_numpy(np.ascontiguousarray(images[:1])))


def _weight_path(node: torch.fx.Node) -> str | None:
    """The module path of a convolution's or linear's weight parameter (`blocks.0.mlp.fc1`), if it is one."""
    if node.op != "call_function" or node.target not in (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default):
        return None
    weight = node.args[1] if len(node.args) > 1 else None
    if not isinstance(weight, torch.fx.Node) or weight.op != "get_attr" or not str(weight.target).endswith("weight"):
        return None
    return str(weight.target).rsplit(".", 1)[0]


_CLAMPS = ("hardtanh", "relu", "clamp")


def activation_qparams(lo: float, hi: float) -> tuple[float, int]:
    """XNNPACK's asymmetric int8 (scale, zero point) of a real range; the range of a uint8 or symmetric int8
    reference gives back the same grid."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = float(np.float32((hi - lo) / 255.0)) or 1e-8
    return scale, int(np.clip(-128 + round(-lo / scale), -128, 127))


def _plan_quantizer(plan: Any) -> Any:
    from t2tedge.quantize.quantization_plan import layer_output

    from torchao.quantization.pt2e.observer import PerChannelMinMaxObserver
    from torchao.quantization.pt2e.quantizer import (FixedQParamsQuantizationSpec, QuantizationAnnotation,
                                                     QuantizationSpec, Quantizer)

    class PlannedWeightObserver(PerChannelMinMaxObserver):
        """Per-channel symmetric int8 weights whose scales are the plan's (its weights are already on that grid)."""

        def __init__(self, scales: tuple[float, ...] = (), **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.planned_scales = torch.tensor(scales, dtype=torch.float32)

        def calculate_qparams(self):
            return self.planned_scales, torch.zeros(len(self.planned_scales), dtype=torch.int64)

    def fixed(lo: float, hi: float) -> Any:
        scale, zero = activation_qparams(lo, hi)
        return FixedQParamsQuantizationSpec(dtype=torch.int8, scale=scale, zero_point=zero, quant_min=-128,
                                            quant_max=127, qscheme=torch.per_tensor_affine)

    def weight_spec(layer: str) -> Any:
        scales = tuple(float(s) for s in plan.arrays[f"{layer}.scale"])
        return QuantizationSpec(dtype=torch.int8, quant_min=-127, quant_max=127, ch_axis=0,
                                qscheme=torch.per_channel_symmetric,
                                observer_or_fake_quant_ctr=PlannedWeightObserver.with_args(scales=scales))

    class PlanQuantizer(Quantizer):
        """Annotates exactly the plan's layers: the input on its planned range, the weights on the plan's grid, the
        output (or the ReLU6/ReLU after it) on its planned range; biases and every other op stay float."""

        def __init__(self) -> None:
            super().__init__()
            self.applied: list[str] = []
            self.deviations: list[dict[str, str]] = []

        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            for node in model.graph.nodes:
                name = _weight_path(node) or ""
                layer = plan.layers.get(name)
                if layer is None:
                    continue
                output, deviation = layer_output(plan, name, "XNNPACK")
                if deviation is not None:
                    self.deviations.append(deviation)
                if output is None:
                    continue
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map={node.args[0]: fixed(*layer.input_range), node.args[1]: weight_spec(name)},
                    output_qspec=None, _annotated=True)
                users = list(node.users)
                clamp = users[0] if len(users) == 1 and any(k in op_name(users[0]) for k in _CLAMPS) else None
                if clamp is None:
                    node.meta["quantization_annotation"].output_qspec = fixed(*output)
                else:
                    clamp.meta["quantization_annotation"] = QuantizationAnnotation(
                        input_qspec_map={}, output_qspec=fixed(*output), _annotated=True)
                self.applied.append(name)
            _fuse_pads(model)
            return model

        def validate(self, model: torch.fx.GraphModule) -> None:
            return None

    return PlanQuantizer()


def quantize_with_plan(module: nn.Module, plan: Any, sample: torch.Tensor) -> tuple[torch.export.ExportedProgram,
                                                                                     dict[str, Any]]:
    """PT2E int8 of `module` (its planned layers already holding the plan's grid weights and biases) with the plan's
    ranges and scales: no calibration. Returns the program re-exported for lowering and what it did not honour."""
    from t2tedge.quantize.quantization_plan import unhonoured

    with native_output_captured():
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        graph = export_program(module, sample).module()
        quantizer = _plan_quantizer(plan)
        prepared = prepare_pt2e(graph, quantizer)
        with torch.no_grad():
            prepared(sample)
        converted = convert_pt2e(prepared)
    deviations = unhonoured(plan, quantizer.applied, quantizer.deviations)
    return export_program(converted, sample), {"layers_applied": len(quantizer.applied), "deviations": deviations}


def program_qparams(program: torch.export.ExportedProgram) -> list[dict[str, Any]]:
    """Read back each static int8 convolution and linear of a quantized program, in graph order: its int8 weights,
    their scales, and its input's (scale, zero point)."""
    signature = program.graph_signature
    lifted = {**signature.inputs_to_parameters, **signature.inputs_to_buffers,
              **signature.inputs_to_lifted_tensor_constants}
    stored = {**dict(program.named_parameters()), **dict(program.named_buffers()), **program.constants}

    def value(node: Any) -> Any:
        if isinstance(node, torch.fx.Node) and node.op == "placeholder" and node.name in lifted:
            return stored[lifted[node.name]]
        if isinstance(node, torch.fx.Node) and node.op == "get_attr":
            return getattr(program.graph_module, str(node.target))
        return node

    found = []
    for node in program.graph.nodes:
        if node.op != "call_function" or node.target not in (torch.ops.aten.conv2d.default,
                                                              torch.ops.aten.linear.default):
            continue
        act, weight = node.args[0], node.args[1]
        if _is_zero_pad(act):
            act = act.args[0]
        if "dequantize" not in op_name(act) or "dequantize" not in op_name(weight):
            continue
        found.append({"weight": torch.as_tensor(value(weight.args[0])).detach().numpy(),
                      "weight_scale": torch.as_tensor(value(weight.args[1])).detach().numpy().astype(np.float32),
                      "input_scale": float(act.args[1]), "input_zero_point": int(act.args[2])})
    return found


def quantize_dynamic(module: nn.Module) -> nn.Module:
    """A copy of `module` with every nn.Linear int8 per-channel, activations quantized per token at run time."""
    quantized = copy.deepcopy(module)
    with native_output_captured():  # torchao reports its missing CUDA extensions on import
        from torchao.quantization import quantize_
        from torchao.quantization.granularity import PerAxis
        from torchao.quantization.quant_api import Int8DynamicActivationIntxWeightConfig

        config = Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0))
        quantize_(quantized, config, filter_fn=lambda mod, _fqn: isinstance(mod, nn.Linear))
    return quantized


def op_precisions(program: torch.export.ExportedProgram) -> dict[str, dict[str, int]]:
    """Op type -> count of the arithmetic ops, by how they compute: `int8` (static: int8 input with a stored
    range), `int8_dynamic` (input quantized at run time), `float`."""
    counts: dict[str, collections.Counter[str]] = {k: collections.Counter() for k in ("int8", "int8_dynamic", "float")}

    def quantized_input(node: torch.fx.Node) -> str | None:
        source = node.args[0] if node.args and isinstance(node.args[0], torch.fx.Node) else None
        if source is not None and _is_zero_pad(source):
            source = source.args[0]  # a pad the convolution takes in (_fuse_pads)
        if source is None or "dequantize" not in op_name(source):
            return None
        origin = source.args[0] if isinstance(source.args[0], torch.fx.Node) else None
        # Run-time quantization: the scale comes from a choose_qparams node (through getitem), not a constant.
        dynamic = origin is not None and any("choose_qparams" in op_name(a) or op_name(a) == "getitem"
                                             for a in origin.all_input_nodes)
        return "int8_dynamic" if dynamic else "int8"

    def quantized_output(node: torch.fx.Node) -> bool:  # a clamp fused into the int8 convolution before it
        return any(op_name(user).split(".")[-2:-1] == ["quantize_per_tensor"] for user in node.users)

    for node in program.graph.nodes:
        name = op_name(node) if node.op == "call_function" else ""
        base = name.removeprefix("aten.").split(".")[0]
        if not name or any(k in name for k in _QUANT_OPS) or base.removesuffix("_copy") in _LAYOUT_OPS:
            continue
        kind = quantized_input(node) or ("int8" if quantized_output(node) else "float")
        counts[kind][base] += 1
    return {kind: dict(sorted(c.items())) for kind, c in counts.items()}


def quantize_program(module: torch.nn.Module, precision: str, sample: torch.Tensor, family: str, plan: Any = None,
                     images: np.ndarray | None = None, progress: bool = True
                     ) -> tuple[torch.export.ExportedProgram, QuantizationSummary]:
    """The exported program of the delegable `module` at `precision` (w8 or int8), and its report: int8 applies
    `plan` (a QuantPlan whose grid weights the module already holds); without one, XNNPACKQuantizer calibrates on
    `images` itself (the peer the benchmarks compare)."""
    honoured: dict[str, Any] = {}
    if precision == "w8":
        program = export_program(quantize_dynamic(module), sample)
    elif plan is not None:
        program, honoured = quantize_with_plan(module, plan, sample)
    elif images is not None:
        program = quantize_static(export_program(module, sample), family, images, progress=progress)
    else:
        raise T2TEdgeError("ExecuTorch int8 applies a quantization plan (or calibrates on images given)")
    ops = op_precisions(program)
    quantizer = ("torchao Int8DynamicActivationIntxWeightConfig (8da8w)" if precision == "w8" else
                 "the quantization plan through PT2E (fixed ranges, the plan's int8 weights and biases)"
                 if plan is not None else
                 "XNNPACKQuantizer (PT2E, per-channel, ReLU6 outputs on their own range, zero pads folded into "
                 "convolutions)")
    use = None if plan is None else PlanUse(source=plan.source, calibration=plan.calibration,
                                            layers=len(plan.layers), **honoured)
    return program, QuantizationSummary(precision=precision, quantizer=quantizer, int8_ops=ops["int8"],
                                        int8_dynamic_ops=ops["int8_dynamic"], float_ops=ops["float"], plan=use)
