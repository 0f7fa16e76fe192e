"""LiteRT (TensorFlow Lite) for Android: a `.tflite` with a metadata sidecar.

The story of one file: litert-torch converts the export-form model (NHWC float32 input by default) into a staging
folder; for a quantized precision ai-edge-quantizer makes the variant from that fp32 file (fp16 weights; w8
dynamic range; int8 applying the quantization plan, whose grid weights are put into the model before conversion);
file and sidecar are then published together.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from t2tedge import metadata_keys as keys
from t2tedge.data import Sample
from t2tedge.errors import DataError, T2TEdgeError, first_line
from t2tedge.fileio import staging_dir
from t2tedge.sidecar import (check_flatbuffer_with_sidecar, publish_with_sidecar, read_sidecar, sidecar_files,
                             sidecar_metadata)
from t2tedge.targets.registry import (APPLIES_PLAN, PLAN_OPTION, BuildRequest, Option, Target, applied_plan,
                                      register)

if TYPE_CHECKING:  # the quantize layer needs torch; this module is read on devices without it (bundles)
    from t2tedge.quantize.records import CalibrationInfo

@dataclass(frozen=True)
class LiteRTSettings:
    """How one `.tflite` is made. int8 applies `plan` (a QuantPlan: what `export` ships); without one it
    calibrates on `calibration` itself (the self-calibrated peer the benchmarks compare)."""

    precision: str = "fp32"
    layout: str = "nhwc"
    plan: Any = None
    calibration: Sequence[Sample] = ()
    calibration_record: CalibrationInfo | None = None


def file_name(model_name: str, precision: str) -> str:
    return f"{model_name}{'' if precision == 'fp32' else '_' + precision}.tflite"


def write_tflite(model_name: str, checkpoint: str | os.PathLike | None, destination: Path, settings: LiteRTSettings,
                 **overrides: Any) -> tuple[Path, dict[str, Any]]:
    """Convert, quantize, and publish `destination` with its sidecar. Returns (path, metadata)."""
    from t2tedge.export.litert_export import convert_fp32, input_metadata
    from t2tedge.models import get_spec
    from t2tedge.quantize import litert_ptq
    from t2tedge.quantize.calibration import images_of
    from t2tedge.quantize.quantization_plan import planned_model

    if settings.precision == "int8" and settings.plan is None and not settings.calibration:
        raise T2TEdgeError("LiteRT int8 applies a quantization plan (or calibrates on images given)")
    model, weights = planned_model(model_name, checkpoint, settings.plan, **overrides)
    with staging_dir(destination.parent, destination.stem) as staging:
        staged, metadata = convert_fp32(model, model_name, weights, staging, settings.layout,
                                        overrides.get("num_classes", 1000))
        if settings.precision != "fp32":
            final = staging / f"{destination.stem}.quantized.tflite"
            if settings.plan is not None:
                report = litert_ptq.quantize_tflite_with_plan(staged, final, settings.plan)
            else:
                images = (images_of(settings.calibration, get_spec(model_name).preprocess, settings.layout)
                          if settings.precision == "int8" else None)
                report = litert_ptq.quantize_tflite(staged, final, settings.precision, get_spec(model_name).family,
                                                    images)
            report = replace(report, calibration=settings.calibration_record)
            metadata.update({**input_metadata(settings.layout, settings.precision),
                             keys.QUANTIZATION: report.to_dict()})
            staged = final
        return publish_with_sidecar(staged, destination, metadata), metadata


def validate(request: BuildRequest) -> None:
    from t2tedge.errors import require_installed

    for module in ("litert_torch", "ai_edge_quantizer", "ai_edge_litert"):
        require_installed(module, "'t2t-edge[litert]'")


def build(request: BuildRequest) -> Path:
    plan = applied_plan(request)
    settings = LiteRTSettings(precision=request.precision, layout=request.options.get("layout") or "nhwc", plan=plan)
    return write_tflite(request.model, request.checkpoint, request.out_dir / file_name(request.model, request.precision),
                        settings, **request.overrides)[0]


def verify(path: Path) -> None:
    check_flatbuffer_with_sidecar(path, b"TFL3", 4, "a LiteRT model")
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        return
    from t2tedge.native_output import native_output_captured

    try:
        with native_output_captured():
            Interpreter(model_path=str(path))
    except (RuntimeError, ValueError) as exc:
        raise DataError(f"LiteRT cannot read {path}: {first_line(exc)}") from None


def summarize(path: Path) -> str:
    report = read_sidecar(path).get(keys.QUANTIZATION, {})
    counts = {kind: sum(report.get(f"{kind}_ops", {}).values()) for kind in ("int8", "int8_dynamic", "float")}
    ops = ", ".join(f"{n} {kind.replace('_', ' ')} ops" for kind, n in counts.items() if n)
    return f"{read_sidecar(path).get(keys.INPUT_LAYOUT, 'NHWC')} input" + (f"; {ops} (which: {path.name}.json)" if ops else "")


register(Target(
    name="litert", runtime="litert", suffixes=(".tflite",),
    summary="LiteRT (TensorFlow Lite) .tflite for Android, with a metadata sidecar",
    description="litert-torch converts (NHWC float32 input by default); ai-edge-quantizer quantizes: fp16 "
                "weights, w8 (dynamic-range int8), int8 (the quantization plan's ranges and int8 weights: the "
                "layers the ONNX INT8 file quantizes, docs/quantization-plan.md).",
    precisions={"fp32": None, "fp16": None, "w8": None, "int8": None},
    not_measured_here={"fp16": "XNNPACK computes fp16-weight files in fp32 on x86; fp16 arithmetic is measured on an "
                               "Arm phone (t2tedge export bundle)"},
    build=build, read_metadata=sidecar_metadata, verify=verify, companions=sidecar_files, summarize=summarize,
    export_options=(Option("layout", "input layout (default: nhwc)", ("nhwc", "nchw")), PLAN_OPTION),
    validate=validate, int8_from=APPLIES_PLAN,
))
