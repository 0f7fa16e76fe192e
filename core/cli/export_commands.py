"""`t2tedge export FORMAT`: one parser and one call into the export/quantize layers per format."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from t2tedge import metadata_keys as keys
from t2tedge.cli.options import (
    check_calibration_wanted,
    int8_calibration_args,
    at_least,
    checkpoint_arg,
    class_override,
    num_classes_arg,
    resolve_checkpoint,
)
from t2tedge.cli.ort_commands import ort_format_parser
from t2tedge.errors import DataError, UsageError
from t2tedge.fileio import ensure_writable_dir, ensure_writable_file


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from t2tedge.export import OnnxExportOptions, export_onnx
    from t2tedge.models import get_spec

    get_spec(args.model)
    options = OnnxExportOptions(opset=args.opset, batch=args.batch, dynamic_batch=args.dynamic_batch,
                                simplify=not args.no_simplify)
    ensure_writable_dir(args.out)
    checkpoint = resolve_checkpoint(args.model, args.checkpoint)
    path = export_onnx(args.model, checkpoint, out_dir=args.out, options=options, **class_override(args))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def cmd_export_coreml(args: argparse.Namespace) -> int:
    import time

    from t2tedge.export.coreml_checks import inspect_package
    from t2tedge.export.coreml_export import (
        CoreMLExportOptions,
        export_coreml,
        require_coremltools,
    )
    from t2tedge.models import get_spec

    get_spec(args.model)
    options = CoreMLExportOptions(precision=args.precision, target=args.target, compress=args.compress,
                                  output=args.output, calib=str(args.calib) if args.calib else None,
                                  num_calib=args.num_calib)
    if args.calib is not None and not args.calib.is_dir():
        raise DataError(f"calibration folder not found: {args.calib}")
    ensure_writable_dir(args.out)
    require_coremltools()
    checkpoint = resolve_checkpoint(args.model, args.checkpoint)
    start = time.perf_counter()
    path = export_coreml(args.model, checkpoint, out_dir=args.out, options=options, **class_override(args))
    report = inspect_package(path)
    if report.unsupported_ops:
        print(f"warning: ops not in {report.deployment_target}: {', '.join(report.unsupported_ops)}", file=sys.stderr)
    print(f"wrote {path} ({report.size_bytes / 1e6:.2f} MB, {options.compress}, {options.precision}, "
          f"{report.deployment_target}, {sum(report.op_counts.values())} ops) in {time.perf_counter() - start:.1f} s")
    return 0


def cmd_export_tensorrt(args: argparse.Namespace) -> int:
    from t2tedge.export.tensorrt_engine import (
        EngineOptions,
        build_engine,
        require_tensorrt,
    )

    options = EngineOptions(precision=args.precision, calibration_cache=str(args.calib_cache) if args.calib_cache else None,
                            min_batch=args.min_batch, opt_batch=args.opt_batch, max_batch=args.max_batch,
                            workspace_mib=args.workspace_mib, timing_cache=str(args.timing_cache) if args.timing_cache else None)
    ensure_writable_dir(args.out)
    if args.log:
        ensure_writable_file(args.log, "--log")
    require_tensorrt()
    destination = args.out / f"{args.onnx.stem}_{args.precision}.engine"
    result = build_engine(args.onnx, destination, options)
    if args.log:
        from t2tedge.fileio import atomic_write_text

        atomic_write_text(args.log, "\n".join(result.log) + "\n")
    mode = "explicit (Q/DQ)" if result.explicit_quantization else "implicit" if args.precision == "int8" else "-"
    print(f"wrote {result.engine_path} ({result.engine_path.stat().st_size / 1e6:.1f} MB, {args.precision}, "
          f"int8 mode {mode})")
    return 0


def cmd_export_openvino(args: argparse.Namespace) -> int:
    from t2tedge.export.openvino_export import export_openvino
    from t2tedge.models import get_spec

    checkpoint = None
    if not args.source.endswith(".onnx"):
        get_spec(args.source)
        checkpoint = resolve_checkpoint(args.source, args.checkpoint)
    elif args.checkpoint is not None:
        raise UsageError("--checkpoint goes with a model name; an .onnx file already holds its weights")
    ensure_writable_dir(args.out)
    path = export_openvino(args.source, checkpoint, out_dir=args.out, weights=args.weights, **class_override(args))
    size = path.stat().st_size + path.with_suffix(".bin").stat().st_size
    print(f"wrote {path} and {path.with_suffix('.bin').name} ({size / 1e6:.1f} MB, {args.weights} weights)")
    return 0


def cmd_export_litert(args: argparse.Namespace) -> int:
    from t2tedge.errors import require_installed
    from t2tedge.models import get_spec
    from t2tedge.quantize.litert_ptq import export_litert_model

    get_spec(args.model)
    check_calibration_wanted(args)
    ensure_writable_dir(args.out)
    for module in ("litert_torch", "ai_edge_quantizer", "ai_edge_litert"):
        require_installed(module, "'t2t-edge[litert]'")
    checkpoint = resolve_checkpoint(args.model, args.checkpoint)
    path, metadata = export_litert_model(args.model, checkpoint, out_dir=args.out, precision=args.precision,
                                         layout=args.layout, calib=args.calib, num_calib=args.num_calib,
                                         **class_override(args))
    report = metadata.get(keys.QUANTIZATION, {})
    counts = {kind: sum(report.get(f"{kind}_ops", {}).values()) for kind in ("int8", "int8_dynamic", "float")}
    summary = ", ".join(f"{n} {kind.replace('_', ' ')} ops" for kind, n in counts.items() if n)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {args.precision}, {args.layout.upper()} input) and "
          f"{path.name}.json" + (f" ({summary}; which: see the JSON)" if args.precision in ("int8", "w8") else ""))
    return 0


def cmd_export_executorch(args: argparse.Namespace) -> int:
    from t2tedge.errors import require_installed
    from t2tedge.export.executorch_export import format_delegation
    from t2tedge.models import get_spec
    from t2tedge.quantize.executorch_ptq import export_executorch_model

    get_spec(args.model)
    check_calibration_wanted(args)
    if args.delegate == "coreml" and args.precision != "fp32":
        raise UsageError("--delegate coreml takes --precision fp32 (Core ML computes in fp16); for int8 weights on "
                         "iOS use `t2tedge export coreml --compress w8`")
    ensure_writable_dir(args.out)
    require_installed("executorch", "'t2t-edge[executorch]'")
    if args.delegate == "coreml":
        require_installed("coremltools", "'t2t-edge[coreml]'")
    checkpoint = resolve_checkpoint(args.model, args.checkpoint)
    path, metadata = export_executorch_model(args.model, checkpoint, out_dir=args.out, precision=args.precision,
                                             delegate=args.delegate, calib=args.calib, num_calib=args.num_calib,
                                             allow_outside=args.allow_outside_delegate, **class_override(args))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {args.precision}, {args.delegate}) and {path.name}.json; "
          f"{format_delegation(metadata[keys.DELEGATION])}")
    return 0


def cmd_export_bundle(args: argparse.Namespace) -> int:
    from t2tedge.harness.bundle import make_bundle

    ensure_writable_file(args.out, suffix=".tar.gz")
    path = make_bundle(args.artifacts, args.out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): copy it to the device, then "
          f"tar xzf {path.name} && sh profile.sh")
    return 0


def export_parser(sub) -> None:
    export = sub.add_parser("export", help="export a model to a runtime format")
    export_sub = export.add_subparsers(dest="format", required=True, metavar="FORMAT")
    p = export_sub.add_parser("onnx", help="simplified, checked ONNX from the export-ready model form")
    p.add_argument("model")
    checkpoint_arg(p)
    p.add_argument("--out", type=Path, default=Path("artifacts/onnx"), help="output folder (default: %(default)s)")
    p.add_argument("--opset", type=at_least(13, 21), default=17, help="ONNX opset, 13..21 (default: %(default)s)")
    batch = p.add_mutually_exclusive_group()
    batch.add_argument("--batch", type=at_least(1), default=1, help="static batch size (default: %(default)s)")
    batch.add_argument("--dynamic-batch", action="store_true", help="symbolic batch dimension")
    p.add_argument("--no-simplify", action="store_true", help="skip onnxsim")
    num_classes_arg(p)
    p.set_defaults(func=cmd_export_onnx)

    p = export_sub.add_parser(
        "coreml", help="ML Program (.mlpackage) with an image input, optionally compressed",
        description="Convert to a Core ML ML Program whose input is an RGB image (normalisation inside the model) "
                    "and whose output is a classifier (labels + probabilities) or raw logits. Compression uses "
                    "coremltools.optimize: w8 = int8 per-channel weights; palettize6/4 = k-means weight LUTs; "
                    "w8a8 = int8 weights and activations, calibrated on real images in torch (needs iOS17+).")
    p.add_argument("model", help="a model name, or MODEL.TAG: t2t_vit_7.official downloads the release file once")
    checkpoint_arg(p)
    p.add_argument("--out", type=Path, default=Path("artifacts/coreml"), help="output folder (default: %(default)s)")
    p.add_argument("--precision", choices=("fp16", "fp32"), default="fp16",
                   help="compute precision (default: %(default)s, Core ML's own default)")
    p.add_argument("--target", default="iOS16", metavar="TARGET",
                   help="minimum deployment target: iOS15..iOS18, macOS12..macOS15 (default: %(default)s)")
    p.add_argument("--compress", default="none", metavar="MODE",
                   help="none | w8 | palettize6 | palettize4 | w8a8 (default: %(default)s)")
    p.add_argument("--output", choices=("classifier", "logits"), default="classifier",
                   help="classifier (class label + probabilities) or raw logits (default: %(default)s)")
    p.add_argument("--calib", type=Path, help="w8a8 calibration images (default: ../shared/data/imagenet-sample)")
    p.add_argument("--num-calib", type=at_least(1), default=128, help="w8a8 calibration images used (default: %(default)s)")
    num_classes_arg(p)
    p.set_defaults(func=cmd_export_coreml)

    p = export_sub.add_parser(
        "tensorrt", help="serialized TensorRT engine from an ONNX export (needs TensorRT 10 and an NVIDIA GPU)",
        description="Build a TensorRT engine. int8 uses the Q/DQ scales of a model from `t2tedge quantize --target "
                    "tensorrt` (explicit quantization), or --calib-cache for an fp32 model (implicit). Exit code 2 "
                    "when TensorRT is not installed.")
    p.add_argument("onnx", type=Path, help="ONNX file (fp32, or QDQ INT8)")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp16")
    p.add_argument("--calib-cache", type=Path, help="TensorRT calibration cache written by `t2tedge quantize`")
    p.add_argument("--min-batch", type=at_least(1), default=1)
    p.add_argument("--opt-batch", type=at_least(1), default=1)
    p.add_argument("--max-batch", type=at_least(1), default=8, help="optimization profile for dynamic-batch graphs")
    p.add_argument("--workspace-mib", type=at_least(1), default=1024)
    p.add_argument("--timing-cache", type=Path, help="read and update this timing cache (faster rebuilds)")
    p.add_argument("--log", type=Path, help="write the builder log here")
    p.add_argument("--out", type=Path, default=Path("artifacts/tensorrt"), help="output folder (default: %(default)s)")
    p.set_defaults(func=cmd_export_tensorrt)

    p = export_sub.add_parser(
        "openvino", help="OpenVINO IR (.xml + .bin) for Intel CPUs, from a model or one of our ONNX files",
        description="Convert to OpenVINO IR (what OpenVINO reads from the .onnx, saved); the t2tedge metadata (model, preprocessing, "
                    "class order, weights) goes into the IR's rt_info. SOURCE is a model name (exported to ONNX "
                    "first, same default weights as `export onnx`) or an .onnx file of ours, fp32 or INT8 (from "
                    "`t2tedge quantize`, best with --target openvino). OpenVINO also runs the .onnx files directly; "
                    "IR loads faster and can halve a float model with --weights fp16.")
    p.add_argument("source", metavar="MODEL|FILE.onnx")
    checkpoint_arg(p)
    p.add_argument("--weights", choices=("fp32", "fp16"), default="fp32",
                   help="how the .bin stores float weights; fp16 halves it, OpenVINO computes in the inference "
                        "precision either way (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("artifacts/openvino"), help="output folder (default: %(default)s)")
    num_classes_arg(p)
    p.set_defaults(func=cmd_export_openvino)

    p = export_sub.add_parser(
        "litert", help="LiteRT (TensorFlow Lite) .tflite for Android, fp32 or quantized, with a metadata sidecar",
        description="Convert with litert-torch to MODEL[_PRECISION].tflite, NHWC float32 input by default (what an app "
                    "fills from a bitmap), and write MODEL[_PRECISION].tflite.json beside it (preprocessing, class "
                    "order, weights; for int8 which ops stayed float). Quantized files come from ai-edge-quantizer: "
                    "fp16 = fp16 weights; w8 = int8 weights, activations quantized on the fly; int8 = full-integer "
                    "PTQ calibrated on --calib (T2T-ViT keeps LayerNorm, softmax, GELU and attention matmuls float). "
                    "Same default weights as `export onnx`. Details: docs/litert.md.")
    p.add_argument("model")
    checkpoint_arg(p)
    p.add_argument("--precision", choices=("fp32", "fp16", "w8", "int8"), default="fp32",
                   help="fp32 | fp16 (weights) | w8 (dynamic-range int8) | int8 (static, calibrated) (default: %(default)s)")
    p.add_argument("--layout", choices=("nhwc", "nchw"), default="nhwc", help="input layout (default: %(default)s)")
    int8_calibration_args(p)
    p.add_argument("--out", type=Path, default=Path("artifacts/litert"), help="output folder (default: %(default)s)")
    num_classes_arg(p)
    p.set_defaults(func=cmd_export_litert)

    p = export_sub.add_parser(
        "executorch", help="ExecuTorch .pte program for Android/iOS, delegated to XNNPACK (fp32, w8, int8) or Core ML",
        description="torch.export, then ExecuTorch's to_edge_transform_and_lower with the XNNPACK partitioner (the CPU "
                    "backend on Android and iOS) or the Core ML one (iOS; its programs run on Apple devices only). "
                    "Writes MODEL[_PRECISION][_coreml].pte and MODEL...pte.json beside it (preprocessing, class order, "
                    "weights, the delegation report: which ops each delegate took). T2T-ViT is lowered in a form "
                    "XNNPACK takes whole (one delegate call). w8 = int8 weights of every linear layer, activations "
                    "quantized per token at run time (the int8 program for T2T-ViT); int8 = static PT2E with "
                    "XNNPACKQuantizer calibrated on --calib (the int8 program for ConvNets; T2T-ViT keeps LayerNorm, "
                    "softmax, GELU and attention float). Input: NCHW float32, batch 1. Same default weights as "
                    "`export onnx`. Details: docs/executorch.md.")
    p.add_argument("model")
    checkpoint_arg(p)
    p.add_argument("--delegate", choices=("xnnpack", "coreml"), default="xnnpack",
                   help="xnnpack (CPU, Android and iOS) | coreml (iOS/macOS, fp32 only) (default: %(default)s)")
    p.add_argument("--precision", choices=("fp32", "w8", "int8"), default="fp32",
                   help="fp32 | w8 (int8 weights, dynamic activations) | int8 (static, calibrated) (default: %(default)s)")
    int8_calibration_args(p)
    p.add_argument("--allow-outside-delegate", action="store_true",
                   help="write the program even if some ops stay outside the delegate (ExecuTorch's portable "
                        "kernels then run them); by default that is an error naming the ops")
    p.add_argument("--out", type=Path, default=Path("artifacts/executorch"), help="output folder (default: %(default)s)")
    num_classes_arg(p)
    p.set_defaults(func=cmd_export_executorch)

    ort_format_parser(export_sub)

    p = export_sub.add_parser(
        "bundle", help="artifacts + profiler + runner script in one .tar.gz for a device",
        description="Pack artifacts (.onnx, .ort, .mlpackage, .engine, OpenVINO .xml with its .bin) with the profiler and profile.sh. On the "
                    "device: tar xzf BUNDLE && sh profile.sh (needs python3, numpy, pillow, tqdm and the runtime). "
                    "Each run leaves a JSON in results/ to merge with `t2tedge table4 --merge`.")
    p.add_argument("artifacts", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=Path("artifacts/bundle.tar.gz"), help="default: %(default)s")
    p.set_defaults(func=cmd_export_bundle)
