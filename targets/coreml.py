"""Core ML: an ML Program (.mlpackage) with an image input, for iOS and macOS. Converted and compressed on any
host (coremltools); predicts only on macOS. The story of one package: the network (TF SAME padding frozen), its
activations calibrated on real images in torch for int8 (w8a8: Core ML's own calibration, it applies no plan),
conversion, weight compression (w8, palettize), our metadata, and the package saved whole.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from t2tedge.errors import DataError, T2TEdgeError, UsageError, first_line
from t2tedge.targets.registry import CALIBRATES, BuildRequest, Option, Target, register

# The vocabulary's precision -> (compute precision, compression) of coremltools.
COREML_FORMS = {"fp32": ("fp32", "none"), "fp16": ("fp16", "none"), "w8": ("fp16", "w8"), "int8": ("fp16", "w8a8")}


def export_options(request: BuildRequest):
    from t2tedge.export.coreml_export import CoreMLExportOptions

    compute, compress = COREML_FORMS[request.precision]
    given = request.options
    return CoreMLExportOptions(
        precision=compute, compress=given.get("palettize") and f"palettize{given['palettize']}" or compress,
        target=given.get("deployment_target") or ("iOS17" if request.precision == "int8" else "iOS16"),
        output=given.get("output") or "classifier", calib=str(request.calib) if request.calib else None,
        num_calib=request.num_calib, seed=request.seed)


def validate(request: BuildRequest) -> None:
    from t2tedge.export.coreml_export import require_coremltools

    try:
        export_options(request)
    except T2TEdgeError as exc:  # an iOS target without activation quantization for int8, say
        raise UsageError(str(exc)) from None
    require_coremltools()


def write_package(model_name: str, checkpoint: str | os.PathLike | None, out_dir: str | os.PathLike,
                  options=None, progress: bool = True, **overrides: Any) -> Path:
    """Build the network, calibrate its activations (int8: w8a8), convert, compress the weights, stamp our metadata,
    and save `out_dir/NAME.mlpackage` whole or not at all. `options`: a CoreMLExportOptions (default: fp16)."""
    from t2tedge.export.common import build_model
    from t2tedge.export.coreml_export import (CoreMLExportOptions, artifact_name, convert, default_calib_dir,
                                              prepare_network, quiet_coremltools, require_coremltools,
                                              stamp_metadata)
    from t2tedge.fileio import atomic_dir
    from t2tedge.models import get_spec
    from t2tedge.quantize.coreml_ptq import calibrate_w8a8, compress_program

    require_coremltools()
    options = options or CoreMLExportOptions()
    network, weights = build_model(model_name, checkpoint, **overrides)
    network = prepare_network(model_name, network)
    if options.compress == "w8a8":
        network = calibrate_w8a8(network, get_spec(model_name).preprocess, options.calib or default_calib_dir(),
                                 options.num_calib, options.seed, progress)
    mlmodel, num_classes = convert(model_name, network, options)
    with quiet_coremltools():
        mlmodel = compress_program(mlmodel, options.compress)
    stamp_metadata(mlmodel, model_name, weights, options, num_classes)
    destination = Path(out_dir) / artifact_name(model_name, options)
    with atomic_dir(destination) as tmp:
        mlmodel.save(str(tmp))
    return destination


def build(request: BuildRequest) -> Path:
    return write_package(request.model, request.checkpoint, request.out_dir, export_options(request),
                         progress=request.progress, **request.overrides)


def read_metadata(path: Path) -> dict[str, str]:
    if not (path / "Manifest.json").is_file():
        raise DataError(f"{path} is not an .mlpackage (no Manifest.json)")
    import coremltools as ct

    try:
        return dict(ct.models.MLModel(str(path), skip_model_load=True).user_defined_metadata)
    except Exception as exc:  # coremltools raises assorted types for broken packages
        raise DataError(f"Core ML cannot read {path}: {first_line(exc)}") from None


def verify(path: Path) -> None:
    if not (path / "Manifest.json").is_file():
        raise DataError(f"{path} is not an .mlpackage folder with a Manifest.json")
    try:
        import coremltools  # noqa: F401
    except ImportError:
        return
    read_metadata(path)


def summarize(path: Path) -> str:
    import sys

    from t2tedge.export.coreml_checks import inspect_package

    report = inspect_package(path)
    if report.unsupported_ops:
        print(f"warning: ops not in {report.deployment_target}: {', '.join(report.unsupported_ops)}", file=sys.stderr)
    return f"{report.deployment_target}, {sum(report.op_counts.values())} ops"


register(Target(
    name="coreml", runtime="coreml", suffixes=(".mlpackage",),
    summary="Core ML ML Program (.mlpackage) with an image input, for iOS and macOS",
    description="Normalisation inside the model; fp16 is Core ML's own default compute precision. w8 = int8 "
                "per-channel weights; int8 = int8 weights and activations calibrated on real images in torch "
                "(needs iOS17+); --palettize 6|4 = k-means weight LUTs. Predicts only on macOS.",
    precisions={"fp32": None, "fp16": None, "w8": None, "int8": None},
    default_precision="fp16",
    build=build, read_metadata=read_metadata, verify=verify, summarize=summarize, int8_from=CALIBRATES,
    load_options=(Option("compute_units", "coreml: where Core ML may run the model (default: ALL)",
                         ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE")),),
    export_options=(
        Option("deployment_target", "minimum deployment target: iOS15..iOS18, macOS12..macOS15 (default: iOS16, "
                                    "iOS17 for int8)",
               ("iOS15", "iOS16", "iOS17", "iOS18", "macOS12", "macOS13", "macOS14", "macOS15")),
        Option("palettize", "k-means palettized weights, 6 or 4 bits (instead of w8)", ("6", "4"),
               precisions=("fp16", "fp32")),
        Option("output", "classifier (label + probabilities) or raw logits (default: classifier)",
               ("classifier", "logits")),
    ),
    validate=validate,
    profile_variants=({"compute_units": "ALL"}, {"compute_units": "CPU_AND_NE"}, {"compute_units": "CPU_ONLY"}),
))
