"""What the ONNX-fed targets (ONNX Runtime, OpenVINO, TensorRT) share: the export options of `export onnx`, the
calibration folder, the INT8 QDQ file `t2tedge quantize` writes, the FP16 ONNX, and reading and checking ONNX files.

Imports no torch and no runtime library at module level: the descriptors that use it are read on devices.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from t2tedge.errors import DataError, T2TEdgeError, UsageError, first_line
from t2tedge.targets.registry import BuildRequest, Option

if TYPE_CHECKING:  # the quantize layer needs torch; this module is read on devices without it (bundles)
    from t2tedge.quantize.config import QuantConfig
    from t2tedge.quantize.pipeline import QuantizeSettings
    from t2tedge.quantize.records import QuantizeReport

ONNX_EXPORT_OPTIONS = (
    Option("opset", "ONNX opset, 13..21 (default: 17)", kind=int, bounds=(13, 21)),
    Option("batch", "static batch size (default: 1)", kind=int),
    Option("dynamic_batch", "symbolic batch dimension (files for batched serving; Table 4 times batch 1)",
           flag_only=True),
    Option("no_simplify", "skip onnxsim", flag_only=True),
)


def onnx_export_options(request: BuildRequest):
    """The `OnnxExportOptions` a request's flags name (the defaults of `export onnx`: static batch 1)."""
    from t2tedge.export import OnnxExportOptions
    from t2tedge.export.onnx_export import DEFAULT_OPSET

    given = request.options
    return OnnxExportOptions(opset=given.get("opset") or DEFAULT_OPSET, batch=given.get("batch") or 1,
                             dynamic_batch=bool(given.get("dynamic_batch")), simplify=not given.get("no_simplify"))


def export_fp32(request: BuildRequest, out_dir: Path) -> Path:
    """The model's fp32 ONNX export in `out_dir`, as `export onnx` writes it."""
    from t2tedge.export import export_onnx

    return export_onnx(request.model, request.checkpoint, out_dir=out_dir, options=onnx_export_options(request),
                       **request.overrides)


def calibration_folder(request: BuildRequest) -> Path:
    if request.calib is not None:
        return request.calib
    from t2tedge.paths import shared_path

    return shared_path("data", "imagenet-sample")


def publish_quantized(model_name: str, config: QuantConfig, out_dir: Path, settings: QuantizeSettings,
                      **kwargs: Any) -> tuple[Path, QuantizeReport]:
    """`quantize_model` into a staging folder of `out_dir`, then model, report, plan and cache moved into place
    together: a failure or a full disk never leaves an INT8 model without its report and plan."""
    from t2tedge.fileio import publish_together, staging_dir
    from t2tedge.quantize import pipeline

    out_dir = Path(out_dir)
    with staging_dir(out_dir, "quantize") as tmp:
        staged, report = pipeline.quantize_model(model_name, config, tmp, settings, published_in=out_dir, **kwargs)
        publish_together({path: out_dir / path.name for path in pipeline.written_files(staged)})
    return out_dir / staged.name, report


def int8_onnx(request: BuildRequest, scheme: str, out_dir: Path) -> Path:
    """The QDQ INT8 ONNX file `t2tedge quantize --target SCHEME` writes with its defaults (MSE ranges, GPTQ, bias
    correction), from the static export `export onnx` writes, published into `out_dir` with its report and plan."""
    from t2tedge.quantize import preset
    from t2tedge.quantize.pipeline import QuantizeSettings

    settings = QuantizeSettings(calib=calibration_folder(request), num_calib=request.num_calib, seed=request.seed,
                                target=scheme, checkpoint=request.checkpoint,
                                export_options=onnx_export_options(request), never_calibrate_on=tuple(request.exclude))
    path, _ = publish_quantized(request.model, preset(scheme), out_dir, settings, **request.overrides)
    return path


def onnx_metadata(path: Path) -> dict[str, str]:
    import onnxruntime as ort

    if path.suffix == ".onnx":
        try:  # the onnx package is on hosts, not always on devices (bundles check their files by sha256 there)
            from t2tedge.onnx_graph import external_data_files
        except ImportError:
            pass
        else:
            external_data_files(path)  # a missing or cut data file named in our words, not ORT's

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT's own exception types
        raise T2TEdgeError(f"onnxruntime cannot load {path}: {first_line(exc)}") from None
    return dict(session.get_modelmeta().custom_metadata_map)


def verify_onnx(path: Path) -> None:
    if path.suffix == ".onnx":
        from t2tedge.export.onnx_export import load_onnx_graph

        load_onnx_graph(path)
    elif path.read_bytes()[4:8] != b"ORTM":
        raise DataError(f"{path} is not an ORT-format model (onnxruntime's 'ORTM' flatbuffer)")
    onnx_metadata(path)


def _fp16_check_images(request: BuildRequest):
    """The real images an fp16 build checks activation ranges on: --num-calib drawn from --calib (default: the
    calibration folder, when present); None when there is no folder to draw from (initializers are still checked)."""
    from t2tedge.data import load_batch
    from t2tedge.models import get_spec
    from t2tedge.quantize.calibration import calibration_samples

    folder = calibration_folder(request)
    if request.calib is None and not folder.is_dir():
        return None
    samples = calibration_samples(folder, request.num_calib, seed=request.seed, exclude=request.exclude)
    images, _ = load_batch(samples, get_spec(request.model).preprocess)
    return images


def fp16_onnx(request: BuildRequest, fp32: Path, destination: Path) -> Path:
    """Our FP16 ONNX of the fp32 file `fp32` at `destination`, activations checked on --calib images."""
    from tqdm import tqdm

    from t2tedge.export import onnx_fp16

    images = _fp16_check_images(request)
    bar = tqdm(total=0 if images is None else len(images), desc="fp16 range check", unit="img", leave=False,
               disable=images is None or not request.progress)
    with bar:
        onnx_fp16.write_fp16_onnx(fp32, destination, images, progress=lambda done: bar.update(done - bar.n))
    return destination


def validate_onnx_source(request: BuildRequest, turns_fp32_into: tuple[str, ...]) -> None:
    """A source ONNX file keeps its own precision; an fp32 one may become `turns_fp32_into`."""
    if request.source is None:
        return
    if not request.source.is_file():
        raise DataError(f"ONNX file not found: {request.source}")
    from t2tedge.onnx_graph import onnx_precision

    held = onnx_precision(request.source)
    if request.precision != held and not (held == "fp32" and request.precision in turns_fp32_into):
        raise UsageError(f"{request.source.name} is {held}; a file keeps its precision"
                         + (f" (or becomes {', '.join(turns_fp32_into)})" if held == "fp32" and turns_fp32_into else "")
                         + f": give the model name to build {request.precision}")
