"""ExecuTorch programs in fp32 and int8, with ExecuTorch's and torchao's own quantization APIs.

Precisions (XNNPACK delegate):
- `fp32`.
- `w8`: int8 per-channel weights for every nn.Linear, activations quantized per token at run time (torchao's
  `Int8DynamicActivationIntxWeightConfig`, what ExecuTorch's XNNPACK recipes call 8da8w; XNNPACK's QD8 kernels).
  Needs no calibration. This is the int8 program for T2T-ViT: the float residual stream and per-token scales keep
  it within 0.1% agreement of fp32. ConvNets have one nn.Linear (the classifier), so it changes little there.
- `int8`: full static PT2E quantization with ExecuTorch's `XNNPACKQuantizer` (per-channel int8 weights, per-tensor
  int8 activations with ranges calibrated on real images through the model's preprocessing). ConvNets quantize
  every op the quantizer covers. T2T-ViT quantizes its nn.Linear layers only and keeps LayerNorm, softmax, GELU,
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
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from t2tedge import metadata_keys as keys
from t2tedge.data import Sample
from t2tedge.errors import T2TEdgeError, require_installed
from t2tedge.export.common import build_model
from t2tedge.export.executorch_export import (INSTALL, check_delegate, export_program, lower_program, op_name,
                                              program_metadata)
from t2tedge.export.executorch_form import delegable_form
from t2tedge.fileio import staging_dir
from t2tedge.models import get_spec
from t2tedge.native_output import native_output_captured
from t2tedge.quantize.calibration import calibration_set, images_of
from t2tedge.sidecar import publish_with_sidecar

EXECUTORCH_PRECISIONS = ("fp32", "w8", "int8")
TRANSFORMER_FAMILIES = ("T2T-ViT",)
DEFAULT_NUM_CALIB = 256
# Nodes that move or reinterpret data, or do nothing in eval (dropout), by op name without namespace, overload or
# `_copy`; the report counts arithmetic. Matched whole: a substring test like "t.default" also caught rsqrt and cat.
_LAYOUT_OPS = frozenset({"view", "reshape", "permute", "transpose", "slice", "clone", "expand", "unsqueeze", "squeeze",
                         "flatten", "_to", "getitem", "detach", "alias", "contiguous", "t", "select", "dropout",
                         "access_subclass_inner_tensor"})
_QUANT_OPS = ("quantize", "dequantize", "choose_qparams")


def int8_variant(family: str) -> str:
    """The int8 program we recommend for a model family: w8 for transformers, static int8 for ConvNets."""
    return "w8" if family in TRANSFORMER_FAMILIES else "int8"


def file_suffix(precision: str, delegate: str) -> str:
    return ("" if precision == "fp32" else f"_{precision}") + ("" if delegate == "xnnpack" else f"_{delegate}")


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


def build_program(model_name: str, checkpoint: str | os.PathLike | None, precision: str, delegate: str,
                  images: np.ndarray | None = None, allow_outside: bool = False, progress: bool = True,
                  calibration_record: dict[str, Any] | None = None,
                  **overrides: Any) -> tuple[bytes, dict[str, Any]]:
    """(the .pte bytes, their metadata) of `model_name` at `precision`; a quantized program's metadata holds its
    report, with `calibration_record` (how the images were chosen) when given."""
    spec = get_spec(model_name)
    model, weights = build_model(model_name, checkpoint, **overrides)
    module = delegable_form(model)
    crop = spec.preprocess.crop
    sample = torch.zeros(1, 3, crop, crop)
    report: dict[str, Any] = {}
    if precision == "w8":
        module = quantize_dynamic(module)
    program = export_program(module, sample)
    if precision == "int8":
        program = quantize_static(program, spec.family, images, progress=progress)
    if precision != "fp32":
        ops = op_precisions(program)
        quantizer = ("torchao Int8DynamicActivationIntxWeightConfig (8da8w)" if precision == "w8" else
                     "XNNPACKQuantizer (PT2E, per-channel, ReLU6 outputs on their own range, zero pads folded into "
                     "convolutions)")
        report = {"precision": precision, "quantizer": quantizer,
                  "int8_ops": ops["int8"], "int8_dynamic_ops": ops["int8_dynamic"], "float_ops": ops["float"],
                  **({"calibration": calibration_record} if calibration_record else {})}
    buffer, delegation = lower_program(program, delegate, allow_outside=allow_outside)
    metadata = program_metadata(model_name, weights, precision, overrides.get("num_classes", 1000), delegate)
    metadata[keys.DELEGATION] = delegation
    if report:
        metadata[keys.QUANTIZATION] = report
    return buffer, metadata


def export_executorch_model(model_name: str, checkpoint: str | os.PathLike | None = None,
                            out_dir: str | os.PathLike = "artifacts/executorch", precision: str = "fp32",
                            delegate: str = "xnnpack", calib: str | os.PathLike | None = None,
                            num_calib: int = DEFAULT_NUM_CALIB, seed: int = 0, exclude: Sequence[Sample] = (),
                            calibration: Sequence[Sample] | None = None, destination: str | os.PathLike | None = None,
                            allow_outside: bool = False, progress: bool = True,
                            **overrides: Any) -> tuple[Path, dict[str, Any]]:
    """`MODEL[_precision][_coreml].pte` and its sidecar JSON, moved into place together. Returns (path, metadata).
    int8 calibrates on `num_calib` images drawn from `calib` (never any of `exclude`), or on `calibration` as given."""
    check_delegate(delegate)
    if precision not in EXECUTORCH_PRECISIONS:
        raise T2TEdgeError(f"unknown ExecuTorch precision {precision!r}; choose {', '.join(EXECUTORCH_PRECISIONS)}")
    if delegate == "coreml" and precision != "fp32":
        raise T2TEdgeError("the Core ML delegate takes fp32 programs here (Core ML computes them in fp16); for int8 "
                           "weights on iOS use `t2tedge export coreml --compress w8`")
    require_installed("executorch", INSTALL)
    spec = get_spec(model_name)
    samples, chosen = calibration_set(calib, num_calib, seed, exclude, calibration) if precision == "int8" else ([], {})
    destination = (Path(destination) if destination
                   else Path(out_dir) / f"{model_name}{file_suffix(precision, delegate)}.pte")
    destination.parent.mkdir(parents=True, exist_ok=True)
    images = images_of(samples, spec.preprocess) if samples else None
    buffer, metadata = build_program(model_name, checkpoint, precision, delegate, images, allow_outside=allow_outside,
                                     progress=progress, calibration_record=chosen, **overrides)
    with staging_dir(destination.parent, destination.stem) as staging:
        staged = staging / destination.name
        staged.write_bytes(buffer)
        publish_with_sidecar(staged, destination, metadata)
    return destination, metadata
