"""ONNX Runtime: the fp32 export, its FP16 conversion, and the INT8 QDQ file that holds the quantization plan.

fp32 is the simplified, checked static batch-1 export; fp16 is that file converted for TensorRT's strongly typed
engines; int8 is `t2tedge quantize`'s QDQ file with its defaults, whose plan the other targets' INT8 builds start
from (`Target.int8_from`, t2tedge.targets.registry).
"""

from __future__ import annotations

from pathlib import Path

from t2tedge.errors import DataError, UsageError
from t2tedge.fileio import staging_dir
from t2tedge.targets.onnx_fed import (ONNX_EXPORT_OPTIONS, export_fp32, fp16_onnx, int8_onnx, onnx_metadata,
                                      verify_onnx)
from t2tedge.targets.registry import CALIBRATES, BuildRequest, Option, Target, register


def validate(request: BuildRequest) -> None:
    if request.options.get("batch") and request.options.get("dynamic_batch"):
        raise UsageError("--batch and --dynamic-batch exclude each other")


def external_data(path: Path) -> tuple[Path, ...]:
    """The data files an .onnx keeps its weights in beside itself (they travel with it: bundles, sizes). A file
    that is no ONNX model has none; `verify` says what it is."""
    if path.suffix != ".onnx":
        return ()
    from t2tedge.onnx_graph import external_data_files

    try:
        return external_data_files(path)
    except DataError:
        raise
    except Exception:  # protobuf's DecodeError and friends: not a model at all
        return ()


def build(request: BuildRequest) -> Path:
    if request.precision == "int8":
        return int8_onnx(request, "onnxruntime", request.out_dir)
    if request.precision == "fp16":
        from t2tedge.export.onnx_fp16 import fp16_name

        with staging_dir(request.out_dir, "fp16") as tmp:
            fp32 = export_fp32(request, tmp)
            return fp16_onnx(request, fp32, request.out_dir / fp16_name(fp32))
    return export_fp32(request, request.out_dir)


register(Target(
    name="onnxruntime", runtime="onnxruntime", aliases=("onnx",), suffixes=(".onnx", ".ort"),
    summary="ONNX file (fp32 export, or INT8 QDQ) for ONNX Runtime; OpenVINO and TensorRT read it too",
    description="The fp32 file is the simplified, checked static batch-1 export. fp16 is that file converted to "
                "fp16 with float32 input and output (onnxconverter-common), nodes whose values leave fp16's range "
                "on --calib images kept fp32: the file strongly typed TensorRT engines are built from. int8 is "
                "`t2tedge quantize`'s QDQ file with its defaults (MSE ranges, GPTQ rounding, bias correction, "
                "calibrated on --calib), with the quantization plan beside it that the other targets' INT8 builds "
                "start from; `t2tedge quantize` has the power options (methods, configs, sensitivity search).",
    precisions={"fp32": None, "fp16": None, "int8": None,
                "w8": "ONNX Runtime's dynamic int8 is not built here; ship int8"},
    not_measured_here={"fp16": "ONNX Runtime's CPU provider runs an fp16 graph through casts to fp32 kernels; fp16 "
                               "arithmetic is measured on TensorRT (the file it builds from)"},
    build=build, read_metadata=onnx_metadata, verify=verify_onnx, companions=external_data, calibrated=("fp16", "int8"),
    load_options=(Option("provider", "onnxruntime execution provider (default: cpu)", ("cpu", "xnnpack")),),
    export_options=ONNX_EXPORT_OPTIONS, validate=validate, out_folder="onnx", computes_plan=True,
    int8_from=CALIBRATES, profile_variants=({}, {"provider": "xnnpack"}),
))
