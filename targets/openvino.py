"""OpenVINO IR (.xml + .bin) for Intel CPUs: converted from the model's fp32 export, from one of our ONNX files,
or, for int8, from the ONNX Runtime QDQ file of the quantization plan (OpenVINO runs its FakeQuantize ops in int8).
"""

from __future__ import annotations

from pathlib import Path

from t2tedge.errors import DataError, native_message
from t2tedge.fileio import staging_dir
from t2tedge.targets.onnx_fed import ONNX_EXPORT_OPTIONS, export_fp32, validate_onnx_source, verify_onnx
from t2tedge.targets.registry import READS_QDQ, BuildRequest, Option, Target, register


def validate(request: BuildRequest) -> None:
    from t2tedge.errors import require_package

    validate_onnx_source(request, ("fp16",))
    require_package("openvino", "'t2t-edge[openvino]'")


def build(request: BuildRequest) -> Path:
    """The IR of the request's ONNX file (for int8 the plan's QDQ file, given by the INT8 chain), else of the
    model's fp32 export; fp16 stores the weights in fp16."""
    from t2tedge.export.openvino_export import convert_onnx_to_ir

    weights = "fp16" if request.precision == "fp16" else "fp32"
    tail = "_fp16" if request.precision == "fp16" else ""
    if request.source is not None:
        return convert_onnx_to_ir(request.source, request.out_dir / f"{request.source.stem}{tail}.xml", weights)
    if request.precision == "int8":
        raise DataError("OpenVINO int8 is converted from the ONNX Runtime QDQ file: build it through "
                        "t2tedge.targets.build_artifact, or give the QDQ file")
    with staging_dir(request.out_dir, "openvino") as tmp:
        return convert_onnx_to_ir(export_fp32(request, tmp), request.out_dir / f"{request.model}{tail}.xml", weights)


def read_metadata(path: Path) -> dict[str, str]:
    import openvino as ov

    from t2tedge.runtimes.openvino import read_openvino_metadata

    if path.suffix == ".xml" and not path.with_suffix(".bin").is_file():
        raise DataError(f"OpenVINO IR {path.name} needs its weights {path.with_suffix('.bin').name} beside it")
    try:
        return read_openvino_metadata(ov.Core().read_model(str(path)))
    except RuntimeError as exc:
        raise DataError(f"OpenVINO cannot read {path}: {native_message(exc)}") from None


def verify(path: Path) -> None:
    if path.suffix == ".onnx":
        verify_onnx(path)
        return
    if b"<net" not in path.read_bytes()[:4096]:
        raise DataError(f"{path} is not OpenVINO IR (an XML <net>)")
    read_metadata(path)


def ir_weights(path: Path) -> tuple[Path, ...]:
    return (path.with_suffix(".bin"),) if path.suffix == ".xml" else ()


register(Target(
    name="openvino", runtime="openvino", suffixes=(".xml",),
    summary="OpenVINO IR (.xml + .bin) for Intel CPUs, from a model or one of our ONNX files",
    description="IR as OpenVINO reads our ONNX file, with the t2tedge metadata in its rt_info. fp16 stores the "
                "weights in fp16 (OpenVINO computes in the inference precision either way); int8 is the ONNX "
                "Runtime QDQ file of the quantization plan, as OpenVINO reads it.",
    precisions={"fp32": None, "fp16": None, "int8": None,
                "w8": "OpenVINO's weight compression (NNCF) is not built here; ship int8"},
    not_measured_here={"fp16": "fp16 weights are decompressed to the inference precision: the fp32 cell's numbers"},
    build=build, read_metadata=read_metadata, verify=verify, companions=ir_weights,
    load_options=(Option("precision_hint", "openvino: the precision float ops may run in (default: f32; OpenVINO's "
                                           "own default is bf16 on CPUs that have it)", ("f32", "bf16", "f16")),),
    export_options=ONNX_EXPORT_OPTIONS[:1], validate=validate,
    profile_variants=({"precision_hint": "f32"}, {"precision_hint": "bf16"}),
    from_onnx=True, int8_from=READS_QDQ,
))
