"""TensorRT: a serialized engine for an NVIDIA GPU, built from the ONNX file of its precision.

TensorRT 11 builds strongly typed engines from the file's own types: the model's fp32 export, our FP16 ONNX of it
(kept beside the engine), or the QDQ file quantized for TensorRT (symmetric int8, which TensorRT requires, so its
INT8 calibrates its own QDQ file rather than reading ONNX Runtime's asymmetric one). TensorRT 10 sets precision
flags and can take an implicit-INT8 calibration cache.
"""

from __future__ import annotations

from pathlib import Path

from t2tedge.errors import DataError, UsageError
from t2tedge.fileio import staging_dir
from t2tedge.targets.onnx_fed import export_fp32, fp16_onnx, int8_onnx, validate_onnx_source
from t2tedge.targets.registry import CALIBRATES, BuildRequest, Option, Target, register


def validate(request: BuildRequest) -> None:
    validate_onnx_source(request, ("fp16", "int8") if request.options.get("calib_cache") else ("fp16",))
    if request.options.get("calib_cache") and request.precision != "int8":
        raise UsageError("--calib-cache goes with --precision int8")
    from t2tedge.export.tensorrt_engine import (NO_CALIBRATION_CACHE, STRONGLY_TYPED_SINCE, require_tensorrt,
                                                tensorrt_major)

    if request.source is not None and request.calib is not None and request.precision == "fp16":
        from t2tedge.onnx_graph import onnx_precision

        if onnx_precision(request.source) == "fp16":
            raise UsageError(f"--calib: {request.source.name} is already fp16, so nothing is converted or checked")
    major = tensorrt_major(require_tensorrt())
    if request.options.get("calib_cache") and major >= STRONGLY_TYPED_SINCE:
        raise UsageError(NO_CALIBRATION_CACHE.format(version=major))


def build(request: BuildRequest) -> Path:
    """The engine, built from the ONNX file of its precision (`MODEL_fp16.onnx` is kept beside an fp16 engine)."""
    from t2tedge.export.onnx_fp16 import fp16_name
    from t2tedge.export.tensorrt_engine import EngineOptions, build_engine
    from t2tedge.fileio import publish_together
    from t2tedge.onnx_graph import onnx_precision

    given = request.options
    options = EngineOptions(precision=request.precision, calibration_cache=given.get("calib_cache"),
                            min_batch=given.get("min_batch") or 1, opt_batch=given.get("opt_batch") or 1,
                            max_batch=given.get("max_batch") or 8, workspace_mib=given.get("workspace_mib") or 1024,
                            timing_cache=given.get("timing_cache"))
    with staging_dir(request.out_dir, "tensorrt") as tmp:
        source = request.source
        if source is None and request.precision == "int8" and not options.calibration_cache:
            source = int8_onnx(request, "tensorrt", tmp)
        elif source is None:
            source = export_fp32(request, tmp)
        staged = {}
        if request.precision == "fp16" and onnx_precision(source) == "fp32":
            converted = fp16_onnx(request, source, tmp / fp16_name(source))
            staged[converted] = request.out_dir / converted.name
            source = converted
        stem = source.stem.removesuffix("_int8_tensorrt").removesuffix("_int8").removesuffix("_fp16")
        engine = request.out_dir / f"{stem}_{request.precision}.engine"
        result = build_engine(source, tmp / engine.name, options)
        staged[result.engine_path] = engine
        publish_together(staged)
        if given.get("log"):
            from t2tedge.fileio import atomic_write_text

            atomic_write_text(given["log"], "\n".join(result.log) + "\n")
        return engine


def verify(path: Path) -> None:
    if not path.is_file() or path.stat().st_size == 0:
        raise DataError(f"{path} is not a TensorRT engine (an empty file)")


def summarize(path: Path) -> str:
    typed = path.with_suffix(".onnx")  # MODEL_fp16.engine was built from MODEL_fp16.onnx
    return f"built from {typed.name}, kept beside it" if path.stem.endswith("_fp16") and typed.is_file() else ""


register(Target(
    name="tensorrt", runtime="tensorrt", suffixes=(".engine", ".plan"),
    summary="serialized TensorRT engine for an NVIDIA GPU (TensorRT 10 or 11 and a GPU)",
    description="Builds the engine from the ONNX file of its precision: the model's fp32 export, our FP16 ONNX "
                "of it (activations checked on --calib images, kept beside the engine), or the QDQ file quantized "
                "for TensorRT (symmetric) for int8; or from one of our ONNX files. TensorRT 11 builds strongly typed "
                "engines from the file's own types; TensorRT 10 sets its precision flags. Exit 2 without TensorRT.",
    precisions={"fp32": None, "fp16": None, "int8": None, "w8": "TensorRT takes weight-only int8 as Q/DQ; ship int8"},
    build=build, verify=verify, summarize=summarize, calibrated=("fp16", "int8"),
    load_options=(Option("engine_precision", "tensorrt: engine precision when it builds one from an .onnx (default: "
                                             "the file's own; fp16 converts an fp32 file first)",
                         ("fp32", "fp16", "int8")),),
    export_options=(
        Option("calib_cache", "TensorRT 10 only: calibration cache from `t2tedge quantize --target tensorrt` (implicit "
                              "int8 from an fp32 file); TensorRT 11 refuses it, build the QDQ file",
               precisions=("int8",)),
        Option("min_batch", "optimization profile for dynamic-batch graphs", kind=int),
        Option("opt_batch", "optimization profile for dynamic-batch graphs", kind=int),
        Option("max_batch", "optimization profile for dynamic-batch graphs (default: 8)", kind=int),
        Option("workspace_mib", "builder workspace (default: 1024)", kind=int),
        Option("timing_cache", "read and update this timing cache (faster rebuilds)"),
        Option("log", "write the builder log here"),
    ),
    validate=validate, from_onnx=True, int8_from=CALIBRATES,
))
