"""ExecuTorch: a `.pte` program for Android and iOS, delegated to XNNPACK (or Core ML), with a metadata sidecar.

The story of one program: the export-form model (T2T-ViT in the form XNNPACK takes whole) gets the quantization
plan's grid weights for int8; torch.export and, for w8/int8, the quantizer (t2tedge.quantize.executorch_ptq: w8
per-token dynamic activations, int8 the plan's fixed ranges through PT2E); ExecuTorch lowers to the delegate, and
program and sidecar are published together.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from t2tedge import metadata_keys as keys
from t2tedge.data import Sample
from t2tedge.errors import UsageError
from t2tedge.fileio import staging_dir
from t2tedge.sidecar import (check_flatbuffer_with_sidecar, publish_with_sidecar, read_sidecar, sidecar_files,
                             sidecar_metadata)
from t2tedge.targets.registry import (APPLIES_PLAN, PLAN_OPTION, BuildRequest, Option, Target, applied_plan,
                                      register)

if TYPE_CHECKING:  # the quantize layer needs torch; this module is read on devices without it (bundles)
    from t2tedge.quantize.records import CalibrationInfo


@dataclass(frozen=True)
class ExecuTorchSettings:
    """How one program is made. int8 applies `plan` (a QuantPlan: what `export` ships); without one it calibrates
    on `calibration` itself (the self-calibrated peer the benchmarks compare)."""

    precision: str = "fp32"
    delegate: str = "xnnpack"
    allow_outside: bool = False
    plan: Any = None
    calibration: Sequence[Sample] = ()
    calibration_record: CalibrationInfo | None = None
    progress: bool = True


def file_name(model_name: str, precision: str, delegate: str) -> str:
    return (f"{model_name}{'' if precision == 'fp32' else '_' + precision}"
            f"{'' if delegate == 'xnnpack' else '_' + delegate}.pte")


def write_program(model_name: str, checkpoint: str | os.PathLike | None, destination: Path,
                  settings: ExecuTorchSettings, **overrides: Any) -> tuple[Path, dict[str, Any]]:
    """Export, quantize, lower, and publish `destination` with its sidecar. Returns (path, metadata)."""
    import torch

    from t2tedge.export.executorch_export import export_program, lower_program, program_metadata
    from t2tedge.export.executorch_form import delegable_form
    from t2tedge.models import get_spec
    from t2tedge.quantize.calibration import images_of
    from t2tedge.quantize.executorch_ptq import quantize_program
    from t2tedge.quantize.quantization_plan import planned_model

    spec = get_spec(model_name)
    model, weights = planned_model(model_name, checkpoint, settings.plan, **overrides)
    module = delegable_form(model)
    sample = torch.zeros(1, 3, spec.preprocess.crop, spec.preprocess.crop)
    report = None
    if settings.precision == "fp32":
        program = export_program(module, sample)
    else:
        images = images_of(settings.calibration, spec.preprocess) if settings.calibration else None
        program, report = quantize_program(module, settings.precision, sample, spec.family, settings.plan, images,
                                           settings.progress)
        report = replace(report, calibration=settings.calibration_record)
    buffer, delegation, op_paths = lower_program(program, settings.delegate, allow_outside=settings.allow_outside)
    metadata = program_metadata(model_name, weights, settings.precision, overrides.get("num_classes", 1000),
                                settings.delegate)
    metadata[keys.DELEGATION] = delegation
    metadata[keys.OP_PATHS] = op_paths
    if report is not None:
        metadata[keys.QUANTIZATION] = report.to_dict()
    with staging_dir(destination.parent, destination.stem) as staging:
        staged = staging / destination.name
        staged.write_bytes(buffer)
        publish_with_sidecar(staged, destination, metadata)
    return destination, metadata


def validate(request: BuildRequest) -> None:
    from t2tedge.errors import require_installed

    if request.options.get("delegate") == "coreml":
        if request.precision != "fp32":
            raise UsageError("--delegate coreml takes --precision fp32 (Core ML computes in fp16); for int8 weights on "
                             "iOS use `t2tedge export coreml --precision w8`")
        require_installed("coremltools", "'t2t-edge[coreml]'")
    require_installed("executorch", "'t2t-edge[executorch]'")


def build(request: BuildRequest) -> Path:
    plan = applied_plan(request)
    delegate = request.options.get("delegate") or "xnnpack"
    settings = ExecuTorchSettings(precision=request.precision, delegate=delegate, plan=plan,
                                  allow_outside=bool(request.options.get("allow_outside")), progress=request.progress)
    destination = request.out_dir / file_name(request.model, request.precision, delegate)
    return write_program(request.model, request.checkpoint, destination, settings, **request.overrides)[0]


def verify(path: Path) -> None:
    check_flatbuffer_with_sidecar(path, b"ET", 4, "an ExecuTorch program")
    try:
        import executorch  # noqa: F401
    except ImportError:
        return
    from t2tedge.runtimes.executorch import program_instructions

    program_instructions(path)


def summarize(path: Path) -> str:
    from t2tedge.export.executorch_export import format_delegation

    return format_delegation(read_sidecar(path)[keys.DELEGATION])


register(Target(
    name="executorch", runtime="executorch", suffixes=(".pte",),
    summary="ExecuTorch .pte program for Android/iOS, delegated to XNNPACK (or Core ML)",
    description="torch.export, then ExecuTorch's lowering to the XNNPACK delegate (T2T-ViT in a form XNNPACK takes "
                "whole). w8 = int8 weights, activations quantized per token at run time; int8 = static PT2E applying "
                "the quantization plan: the ONNX INT8 file's ranges, int8 weights and biases "
                "(docs/quantization-plan.md).",
    precisions={"fp32": None, "w8": None, "int8": None,
                "fp16": "ExecuTorch's fp16 XNNPACK kernels need an Arm CPU with fp16 arithmetic; not built here"},
    build=build, read_metadata=sidecar_metadata, verify=verify, companions=sidecar_files, summarize=summarize,
    export_options=(
        Option("delegate", "xnnpack (CPU, Android and iOS) or coreml (iOS/macOS, fp32 only) (default: xnnpack)",
               ("xnnpack", "coreml")),
        Option("allow_outside", "write the program even if some ops stay outside the delegate", flag_only=True),
        PLAN_OPTION,
    ),
    validate=validate, int8_from=APPLIES_PLAN,
))
