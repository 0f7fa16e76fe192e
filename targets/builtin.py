"""The built-in targets: ONNX Runtime, OpenVINO, TensorRT, Core ML, LiteRT, ExecuTorch, and the torch reference.

Each build function is the one `t2tedge export TARGET` calls and the one the Table 4 grid calls; stage modules are
imported inside the functions, so this module imports without torch or any runtime library.
"""

from __future__ import annotations

import json
from pathlib import Path

from t2tedge import metadata_keys as keys
from t2tedge.errors import DataError, T2TEdgeError, UsageError, first_line, native_message
from t2tedge.fileio import staging_dir
from t2tedge.targets.registry import BuildRequest, Option, Target, register

ONNX_FILE = "one of our .onnx exports"


def _onnx_export_options(request: BuildRequest):
    from t2tedge.export import OnnxExportOptions
    from t2tedge.export.onnx_export import DEFAULT_OPSET

    given = request.options
    return OnnxExportOptions(opset=given.get("opset") or DEFAULT_OPSET, batch=given.get("batch") or 1,
                             dynamic_batch=bool(given.get("dynamic_batch")), simplify=not given.get("no_simplify"))


def _calibration_folder(request: BuildRequest) -> Path:
    if request.calib is not None:
        return request.calib
    from t2tedge.paths import shared_path

    return shared_path("data", "imagenet-sample")


def _int8_onnx(request: BuildRequest, scheme: str, out_dir: Path) -> Path:
    """The QDQ INT8 ONNX file `t2tedge quantize --target SCHEME` writes with its defaults (MSE ranges, GPTQ, bias
    correction), from the static export `export onnx` writes."""
    from t2tedge.quantize import preset, quantize_model

    path, _ = quantize_model(request.model, preset(scheme), out_dir, calib=_calibration_folder(request),
                             num_calib=request.num_calib, seed=request.seed, target=scheme,
                             checkpoint=request.checkpoint, export_options=_onnx_export_options(request),
                             never_calibrate_on=request.exclude, **request.overrides)
    return path


def _onnx_metadata(path: Path) -> dict[str, str]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT's own exception types
        raise T2TEdgeError(f"onnxruntime cannot load {path}: {first_line(exc)}") from None
    return dict(session.get_modelmeta().custom_metadata_map)


def _verify_onnx(path: Path) -> None:
    if path.suffix == ".onnx":
        from t2tedge.export.onnx_export import load_onnx_graph

        load_onnx_graph(path)
    elif path.read_bytes()[4:8] != b"ORTM":
        raise DataError(f"{path} is not an ORT-format model (onnxruntime's 'ORTM' flatbuffer)")
    _onnx_metadata(path)


def _fp16_check_images(request: BuildRequest):
    """The real images an fp16 build checks activation ranges on: --num-calib drawn from --calib (default: the
    calibration folder, when present); None when there is no folder to draw from (initializers are still checked)."""
    from t2tedge.data import load_batch
    from t2tedge.models import get_spec
    from t2tedge.quantize.calibration import calibration_samples

    folder = _calibration_folder(request)
    if request.calib is None and not folder.is_dir():
        return None
    samples = calibration_samples(folder, request.num_calib, seed=request.seed, exclude=request.exclude)
    images, _ = load_batch(samples, get_spec(request.model).preprocess)
    return images


def _fp16_onnx(request: BuildRequest, fp32: Path, destination: Path) -> Path:
    """Our FP16 ONNX of the fp32 file `fp32` at `destination`, activations checked on --calib images."""
    from tqdm import tqdm

    from t2tedge.export import onnx_fp16

    images = _fp16_check_images(request)
    bar = tqdm(total=0 if images is None else len(images), desc="fp16 range check", unit="img", leave=False,
               disable=images is None or not request.progress)
    with bar:
        onnx_fp16.write_fp16_onnx(fp32, destination, images, progress=lambda done: bar.update(done - bar.n))
    return destination


def _build_onnxruntime(request: BuildRequest) -> Path:
    if request.precision == "int8":
        return _int8_onnx(request, "onnxruntime", request.out_dir)
    from t2tedge.export import export_onnx

    if request.precision == "fp16":
        from t2tedge.export.onnx_fp16 import fp16_name

        with staging_dir(request.out_dir, "fp16") as tmp:
            fp32 = export_onnx(request.model, request.checkpoint, out_dir=tmp, options=_onnx_export_options(request),
                               **request.overrides)
            return _fp16_onnx(request, fp32, request.out_dir / fp16_name(fp32))
    return export_onnx(request.model, request.checkpoint, out_dir=request.out_dir,
                       options=_onnx_export_options(request), **request.overrides)


def _sidecar_metadata(path: Path) -> dict[str, str]:
    from t2tedge.sidecar import read_sidecar

    # The sidecar keeps JSON values; the other formats' metadata are strings, JSON-encoded where structured.
    return {key: value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            for key, value in read_sidecar(path).items()}


def _sidecar(path: Path) -> tuple[Path, ...]:
    from t2tedge.sidecar import sidecar_path

    return (sidecar_path(path),) if sidecar_path(path).is_file() else ()


def _require_sidecar_json(path: Path) -> None:
    from t2tedge.sidecar import read_sidecar

    read_sidecar(path)  # a truncated or edited sidecar is refused here, not on the device


def _openvino_metadata(path: Path) -> dict[str, str]:
    import openvino as ov

    from t2tedge.runtimes.openvino import read_openvino_metadata

    if path.suffix == ".xml" and not path.with_suffix(".bin").is_file():
        raise DataError(f"OpenVINO IR {path.name} needs its weights {path.with_suffix('.bin').name} beside it")
    try:
        return read_openvino_metadata(ov.Core().read_model(str(path)))
    except RuntimeError as exc:
        raise DataError(f"OpenVINO cannot read {path}: {native_message(exc)}") from None


def _verify_openvino(path: Path) -> None:
    if path.suffix == ".onnx":
        _verify_onnx(path)
        return
    if b"<net" not in path.read_bytes()[:4096]:
        raise DataError(f"{path} is not OpenVINO IR (an XML <net>)")
    _openvino_metadata(path)


def _ir_weights(path: Path) -> tuple[Path, ...]:
    return (path.with_suffix(".bin"),) if path.suffix == ".xml" else ()


def _validate_onnx_source(request: BuildRequest, turns_fp32_into: tuple[str, ...]) -> None:
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


def _validate_openvino(request: BuildRequest) -> None:
    from t2tedge.errors import require_package

    _validate_onnx_source(request, ("fp16",))
    require_package("openvino", "'t2t-edge[openvino]'")


def _build_openvino(request: BuildRequest) -> Path:
    from t2tedge.export.openvino_export import convert_onnx_to_ir

    weights = "fp16" if request.precision == "fp16" else "fp32"
    tail = "_fp16" if request.precision == "fp16" else ""
    if request.source is not None:
        return convert_onnx_to_ir(request.source, request.out_dir / f"{request.source.stem}{tail}.xml", weights)
    with staging_dir(request.out_dir, "openvino") as tmp:
        if request.precision == "int8":
            onnx_file = _int8_onnx(request, "openvino", tmp)
            tail = "_int8"
        else:
            from t2tedge.export import export_onnx

            onnx_file = export_onnx(request.model, request.checkpoint, out_dir=tmp,
                                    options=_onnx_export_options(request), **request.overrides)
        return convert_onnx_to_ir(onnx_file, request.out_dir / f"{request.model}{tail}.xml", weights)


def _validate_tensorrt(request: BuildRequest) -> None:
    _validate_onnx_source(request, ("fp16", "int8") if request.options.get("calib_cache") else ("fp16",))
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


def _build_tensorrt(request: BuildRequest) -> Path:
    """The engine, built from the ONNX file of its precision (TensorRT 11 builds the file's own types): the model's
    fp32 export, our FP16 ONNX of it (kept beside the engine: `MODEL_fp16.onnx`), or the QDQ file for int8."""
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
            source = _int8_onnx(request, "tensorrt", tmp)
        elif source is None:
            from t2tedge.export import export_onnx

            source = export_onnx(request.model, request.checkpoint, out_dir=tmp,
                                 options=_onnx_export_options(request), **request.overrides)
        staged = {}
        if request.precision == "fp16" and onnx_precision(source) == "fp32":
            converted = _fp16_onnx(request, source, tmp / fp16_name(source))
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


def _summarize_engine(path: Path) -> str:
    typed = path.with_suffix(".onnx")  # MODEL_fp16.engine was built from MODEL_fp16.onnx
    return f"built from {typed.name}, kept beside it" if path.stem.endswith("_fp16") and typed.is_file() else ""


# Core ML: the vocabulary's precision -> (compute precision, compression) of coremltools.
COREML_FORMS = {"fp32": ("fp32", "none"), "fp16": ("fp16", "none"), "w8": ("fp16", "w8"), "int8": ("fp16", "w8a8")}


def _coreml_options(request: BuildRequest):
    from t2tedge.export.coreml_export import CoreMLExportOptions

    compute, compress = COREML_FORMS[request.precision]
    given = request.options
    return CoreMLExportOptions(
        precision=compute, compress=given.get("palettize") and f"palettize{given['palettize']}" or compress,
        target=given.get("deployment_target") or ("iOS17" if request.precision == "int8" else "iOS16"),
        output=given.get("output") or "classifier", calib=str(request.calib) if request.calib else None,
        num_calib=request.num_calib, seed=request.seed)


def _validate_coreml(request: BuildRequest) -> None:
    from t2tedge.export.coreml_export import require_coremltools

    try:
        _coreml_options(request)
    except T2TEdgeError as exc:  # an iOS target without activation quantization for int8, say
        raise UsageError(str(exc)) from None
    require_coremltools()


def _build_coreml(request: BuildRequest) -> Path:
    from t2tedge.export.coreml_export import export_coreml

    return export_coreml(request.model, request.checkpoint, out_dir=request.out_dir, options=_coreml_options(request),
                         progress=request.progress, **request.overrides)


def _coreml_metadata(path: Path) -> dict[str, str]:
    if not (path / "Manifest.json").is_file():
        raise DataError(f"{path} is not an .mlpackage (no Manifest.json)")
    import coremltools as ct

    try:
        return dict(ct.models.MLModel(str(path), skip_model_load=True).user_defined_metadata)
    except Exception as exc:  # coremltools raises assorted types for broken packages
        raise DataError(f"Core ML cannot read {path}: {first_line(exc)}") from None


def _verify_coreml(path: Path) -> None:
    if not (path / "Manifest.json").is_file():
        raise DataError(f"{path} is not an .mlpackage folder with a Manifest.json")
    try:
        import coremltools  # noqa: F401
    except ImportError:
        return
    _coreml_metadata(path)


def _validate_litert(request: BuildRequest) -> None:
    from t2tedge.errors import require_installed

    for module in ("litert_torch", "ai_edge_quantizer", "ai_edge_litert"):
        require_installed(module, "'t2t-edge[litert]'")


def _build_litert(request: BuildRequest) -> Path:
    from t2tedge.quantize.litert_ptq import export_litert_model

    with staging_dir(request.out_dir, "plan") as tmp:
        plan = _quantization_plan(request, tmp) if request.precision == "int8" else None
        return export_litert_model(request.model, request.checkpoint, out_dir=request.out_dir,
                                   precision=request.precision, layout=request.options.get("layout") or "nhwc",
                                   plan=plan, **request.overrides)[0]


def _verify_litert(path: Path) -> None:
    if path.read_bytes()[4:8] != b"TFL3":
        raise DataError(f"{path} is not a LiteRT model (a 'TFL3' flatbuffer)")
    _require_sidecar_json(path)
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


def _validate_executorch(request: BuildRequest) -> None:
    from t2tedge.errors import require_installed

    if request.options.get("delegate") == "coreml":
        if request.precision != "fp32":
            raise UsageError("--delegate coreml takes --precision fp32 (Core ML computes in fp16); for int8 weights on "
                             "iOS use `t2tedge export coreml --precision w8`")
        require_installed("coremltools", "'t2t-edge[coreml]'")
    require_installed("executorch", "'t2t-edge[executorch]'")


def _quantization_plan(request: BuildRequest, workdir: Path):
    """The plan an INT8 build applies: `--plan FILE`, else the one the ONNX Runtime INT8 build computes from the
    same calibration images (MSE ranges, GPTQ weights, corrected biases)."""
    from t2tedge.quantize.quantization_plan import load_plan, plan_path_for

    given = request.options.get("plan")
    if given:
        return load_plan(given)
    return load_plan(plan_path_for(_int8_onnx(request, "onnxruntime", workdir)))


def _build_executorch(request: BuildRequest) -> Path:
    from t2tedge.quantize.executorch_ptq import export_executorch_model

    with staging_dir(request.out_dir, "plan") as tmp:
        plan = _quantization_plan(request, tmp) if request.precision == "int8" else None
        return export_executorch_model(request.model, request.checkpoint, out_dir=request.out_dir,
                                       precision=request.precision,
                                       delegate=request.options.get("delegate") or "xnnpack",
                                       allow_outside=bool(request.options.get("allow_outside")),
                                       progress=request.progress, plan=plan, **request.overrides)[0]


def _verify_executorch(path: Path) -> None:
    if path.read_bytes()[4:6] != b"ET":
        raise DataError(f"{path} is not an ExecuTorch program (an 'ET' flatbuffer)")
    _require_sidecar_json(path)
    try:
        import executorch  # noqa: F401
    except ImportError:
        return
    from t2tedge.runtimes.executorch import program_instructions

    program_instructions(path)


def _verify_engine(path: Path) -> None:
    if not path.is_file() or path.stat().st_size == 0:
        raise DataError(f"{path} is not a TensorRT engine (an empty file)")


def _build_torch(request: BuildRequest) -> Path:
    """The fp32 reference as a file: the model's state dict with a sidecar naming model and classes."""
    import torch

    from t2tedge.export.common import artifact_metadata
    from t2tedge.fileio import sha256_file
    from t2tedge.models import create_model
    from t2tedge.sidecar import publish_with_sidecar

    model = create_model(request.model, checkpoint=request.checkpoint, **request.overrides)
    from t2tedge.models.registry import RANDOM_INIT_SEED

    weights = (f"sha256:{sha256_file(request.checkpoint)}" if request.checkpoint
               else f"untrained (random init, seed {RANDOM_INIT_SEED})")
    destination = request.out_dir / f"{request.model}.pth"
    with staging_dir(request.out_dir, "torch") as tmp:
        staged = tmp / destination.name
        torch.save({"state_dict": model.state_dict()}, staged)
        metadata = artifact_metadata(request.model, weights, "nchw", "fp32", request.num_classes,
                                     "NCHW float32, preprocessed as t2tedge.preprocess says")
        return publish_with_sidecar(staged, destination, metadata)


def _open_torch(path: Path):
    from t2tedge.models import create_model
    from t2tedge.sidecar import read_sidecar

    meta = read_sidecar(path)
    if keys.MODEL not in meta:
        raise DataError(f"{path.name} has no sidecar {path.name}.json naming its model; build it with the torch "
                        f"target (or load it with create_model)")
    classes = len(meta.get(keys.CLASS_ORDER) or ()) or 1000
    return create_model(meta[keys.MODEL], checkpoint=path, **({"num_classes": classes} if classes != 1000 else {}))


def _summarize_litert(path: Path) -> str:
    from t2tedge.sidecar import read_sidecar

    report = read_sidecar(path).get(keys.QUANTIZATION, {})
    counts = {kind: sum(report.get(f"{kind}_ops", {}).values()) for kind in ("int8", "int8_dynamic", "float")}
    ops = ", ".join(f"{n} {kind.replace('_', ' ')} ops" for kind, n in counts.items() if n)
    return f"{read_sidecar(path).get(keys.INPUT_LAYOUT, 'NHWC')} input" + (f"; {ops} (which: {path.name}.json)" if ops else "")


def _summarize_executorch(path: Path) -> str:
    from t2tedge.export.executorch_export import format_delegation
    from t2tedge.sidecar import read_sidecar

    return format_delegation(read_sidecar(path)[keys.DELEGATION])


def _summarize_coreml(path: Path) -> str:
    import sys

    from t2tedge.export.coreml_checks import inspect_package

    report = inspect_package(path)
    if report.unsupported_ops:
        print(f"warning: ops not in {report.deployment_target}: {', '.join(report.unsupported_ops)}", file=sys.stderr)
    return f"{report.deployment_target}, {sum(report.op_counts.values())} ops"


def _validate_onnxruntime(request: BuildRequest) -> None:
    if request.options.get("batch") and request.options.get("dynamic_batch"):
        raise UsageError("--batch and --dynamic-batch exclude each other")


ONNX_EXPORT_OPTIONS = (
    Option("opset", "ONNX opset, 13..21 (default: 17)", kind=int, bounds=(13, 21)),
    Option("batch", "static batch size (default: 1)", kind=int),
    Option("dynamic_batch", "symbolic batch dimension (files for batched serving; Table 4 times batch 1)",
           flag_only=True),
    Option("no_simplify", "skip onnxsim", flag_only=True),
)
PLAN_OPTION = Option("plan", "apply this quantization plan (MODEL_int8.plan.json, written beside every `export "
                             "onnxruntime --precision int8` file) instead of calibrating (default: the plan that "
                             "build computes from --calib)", precisions=("int8",))
CPU_FP16 = "fp16 arithmetic is measured on a GPU (TensorRT) or an Apple device (Core ML)"

register(Target(
    name="onnxruntime", runtime="onnxruntime", aliases=("onnx",), suffixes=(".onnx", ".ort"),
    summary="ONNX file (fp32 export, or INT8 QDQ) for ONNX Runtime; OpenVINO and TensorRT read it too",
    description="The fp32 file is the simplified, checked static batch-1 export. fp16 is that file converted to "
                "fp16 with float32 input and output (onnxconverter-common), nodes whose values leave fp16's range "
                "on --calib images kept fp32: the file strongly typed TensorRT engines are built from. int8 is "
                "`t2tedge quantize`'s QDQ file with its defaults (MSE ranges, GPTQ rounding, bias correction, calibrated on --calib); "
                "`t2tedge quantize` has the power options (methods, configs, sensitivity search).",
    precisions={"fp32": None, "fp16": None, "int8": None,
                "w8": "ONNX Runtime's dynamic int8 is not built here; ship int8"},
    not_measured_here={"fp16": "ONNX Runtime's CPU provider runs an fp16 graph through casts to fp32 kernels; fp16 "
                               "arithmetic is measured on TensorRT (the file it builds from)"},
    build=_build_onnxruntime, read_metadata=_onnx_metadata, verify=_verify_onnx, calibrated=("fp16", "int8"),
    load_options=(Option("provider", "onnxruntime execution provider (default: cpu)", ("cpu", "xnnpack")),),
    export_options=ONNX_EXPORT_OPTIONS, validate=_validate_onnxruntime, out_folder="onnx", computes_plan=True,
    profile_variants=({}, {"provider": "xnnpack"}),
))

register(Target(
    name="openvino", runtime="openvino", suffixes=(".xml",),
    summary="OpenVINO IR (.xml + .bin) for Intel CPUs, from a model or one of our ONNX files",
    description="IR as OpenVINO reads our ONNX file, with the t2tedge metadata in its rt_info. fp16 stores the "
                "weights in fp16 (OpenVINO computes in the inference precision either way); int8 is the QDQ file "
                "quantized with OpenVINO's choices (`quantize --target openvino`).",
    precisions={"fp32": None, "fp16": None, "int8": None,
                "w8": "OpenVINO's weight compression (NNCF) is not built here; ship int8"},
    not_measured_here={"fp16": "fp16 weights are decompressed to the inference precision: the fp32 cell's numbers"},
    build=_build_openvino, read_metadata=_openvino_metadata, verify=_verify_openvino, companions=_ir_weights,
    load_options=(Option("precision_hint", "openvino: the precision float ops may run in (default: f32; OpenVINO's "
                                           "own default is bf16 on CPUs that have it)", ("f32", "bf16", "f16")),),
    export_options=ONNX_EXPORT_OPTIONS[:1],
    validate=_validate_openvino,
    profile_variants=({"precision_hint": "f32"}, {"precision_hint": "bf16"}),
    from_onnx=True,
))

register(Target(
    name="tensorrt", runtime="tensorrt", suffixes=(".engine", ".plan"),
    summary="serialized TensorRT engine for an NVIDIA GPU (TensorRT 10 or 11 and a GPU)",
    description="Builds the engine from the ONNX file of its precision: the model's fp32 export, our FP16 ONNX "
                "of it (activations checked on --calib images, kept beside the engine), or the QDQ file quantized "
                "for TensorRT (symmetric) for int8; or from one of our ONNX files. TensorRT 11 builds strongly typed "
                "engines from the file's own types; TensorRT 10 sets its precision flags. Exit 2 without TensorRT.",
    precisions={"fp32": None, "fp16": None, "int8": None, "w8": "TensorRT takes weight-only int8 as Q/DQ; ship int8"},
    build=_build_tensorrt, verify=_verify_engine, summarize=_summarize_engine, calibrated=("fp16", "int8"),
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
    validate=_validate_tensorrt, from_onnx=True,
))

register(Target(
    name="coreml", runtime="coreml", suffixes=(".mlpackage",),
    summary="Core ML ML Program (.mlpackage) with an image input, for iOS and macOS",
    description="Normalisation inside the model; fp16 is Core ML's own default compute precision. w8 = int8 "
                "per-channel weights; int8 = int8 weights and activations calibrated on real images in torch "
                "(needs iOS17+); --palettize 6|4 = k-means weight LUTs. Predicts only on macOS.",
    precisions={"fp32": None, "fp16": None, "w8": None, "int8": None},
    default_precision="fp16",
    build=_build_coreml, read_metadata=_coreml_metadata, verify=_verify_coreml, summarize=_summarize_coreml,
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
    validate=_validate_coreml,
    profile_variants=({"compute_units": "ALL"}, {"compute_units": "CPU_AND_NE"}, {"compute_units": "CPU_ONLY"}),
))

register(Target(
    name="litert", runtime="litert", suffixes=(".tflite",),
    summary="LiteRT (TensorFlow Lite) .tflite for Android, with a metadata sidecar",
    description="litert-torch converts (NHWC float32 input by default); ai-edge-quantizer quantizes: fp16 "
                "weights, w8 (dynamic-range int8), int8 (the quantization plan's ranges and int8 weights: the "
                "layers the ONNX INT8 file quantizes, docs/quantization-plan.md).",
    precisions={"fp32": None, "fp16": None, "w8": None, "int8": None},
    not_measured_here={"fp16": "XNNPACK computes fp16-weight files in fp32 on x86; fp16 arithmetic is measured on an "
                               "Arm phone (t2tedge export bundle)"},
    build=_build_litert, read_metadata=_sidecar_metadata, verify=_verify_litert, companions=_sidecar,
    summarize=_summarize_litert,
    export_options=(Option("layout", "input layout (default: nhwc)", ("nhwc", "nchw")), PLAN_OPTION),
    validate=_validate_litert,
))

register(Target(
    name="executorch", runtime="executorch", suffixes=(".pte",),
    summary="ExecuTorch .pte program for Android/iOS, delegated to XNNPACK (or Core ML)",
    description="torch.export, then ExecuTorch's lowering to the XNNPACK delegate (T2T-ViT in a form XNNPACK takes "
                "whole). w8 = int8 weights, activations quantized per token at run time; int8 = static PT2E applying "
                "the quantization plan: the ONNX INT8 file's ranges, int8 weights and biases "
                "(docs/quantization-plan.md).",
    precisions={"fp32": None, "w8": None, "int8": None,
                "fp16": "ExecuTorch's fp16 XNNPACK kernels need an Arm CPU with fp16 arithmetic; not built here"},
    build=_build_executorch, read_metadata=_sidecar_metadata, verify=_verify_executorch, companions=_sidecar,
    summarize=_summarize_executorch,
    export_options=(
        Option("delegate", "xnnpack (CPU, Android and iOS) or coreml (iOS/macOS, fp32 only) (default: xnnpack)",
               ("xnnpack", "coreml")),
        Option("allow_outside", "write the program even if some ops stay outside the delegate", flag_only=True),
        PLAN_OPTION,
    ),
    validate=_validate_executorch,
))

register(Target(
    name="torch", runtime="torch", suffixes=(".pth",), reference=True,
    summary="PyTorch eager, the fp32 reference every other runtime is compared with",
    precisions={"fp32": None, "fp16": CPU_FP16, "w8": "INT8 is measured on the targets users ship",
                "int8": "INT8 is measured on the targets users ship"},
    build=_build_torch, read_metadata=_sidecar_metadata, companions=_sidecar, open_artifact=_open_torch,
))
