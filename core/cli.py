"""The `t2tedge` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from t2tedge import __version__
from t2tedge.errors import DataError, T2TEdgeError, UsageError
from t2tedge.fileio import ensure_writable_dir, ensure_writable_file
from t2tedge.paths import shared_path

DEFAULT_EVAL_DATA = shared_path("data", "imagenet-val1300")


def _at_least(minimum: int, maximum: int | None = None):
    """An argparse type: an integer in [minimum, maximum]; a count of 0 or -5 is a usage error, not a traceback."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"from {minimum} to {maximum}" if maximum is not None else f"at least {minimum}"
            raise argparse.ArgumentTypeError(f"must be {bound}, not {value}")
        return value
    parse.__name__ = "integer"
    return parse


def _float_where(check, wanted: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (value == value and check(value)):  # value == value: NaN is refused too
            raise argparse.ArgumentTypeError(f"must be {wanted}, not {text}")
        return value
    parse.__name__ = "number"
    return parse


def _fraction(open_low: bool = False, open_high: bool = False):
    low, high = ("(0" if open_low else "[0"), ("1)" if open_high else "1]")
    return _float_where(lambda v: (v > 0 if open_low else v >= 0) and (v < 1 if open_high else v <= 1),
                        f"in {low}, {high}")


_positive_float = _float_where(lambda v: 0 < v < float("inf"), "a positive number")
_non_negative_float = _float_where(lambda v: 0 <= v < float("inf"), "zero or more")


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _checkpoint_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", metavar="PATH|random",
                        help="weights: an official T2T-ViT release file or a state dict; 'random' for untrained "
                             "weights. Default: the weights of MODEL.TAG (t2t_vit_7.imagenette; `t2tedge list`); for a "
                             "plain MODEL its real weights in ../shared/weights if any, else seeded random weights.")


def _num_classes_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-classes", type=_at_least(1), default=1000,
                        help="classifier size of the checkpoint, for fine-tunes on other label sets (default: %(default)s)")


def _precision_hint_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision-hint", choices=("f32", "bf16", "f16"),
                        help="openvino runtime: the precision it may run float ops in (default: f32; OpenVINO's own "
                             "default is bf16 on CPUs that have it, which moves MobileNetV2's logits to about 20 dB "
                             "SQNR)")


def _openvino_options(args: argparse.Namespace, runtimes: Sequence[str]) -> dict[str, dict[str, str]]:
    """Per-runtime load options from the command line: --precision-hint belongs to the openvino runtime."""
    if not args.precision_hint:
        return {}
    if "openvino" not in runtimes:
        raise UsageError("--precision-hint is an option of the openvino runtime; add it with --runtime(s)")
    return {"openvino": {"precision_hint": args.precision_hint}}


def _force_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true",
                        help="use an artifact whose stamped model, class count or input size differs from the command")


def _class_override(args: argparse.Namespace) -> dict[str, int]:
    return {"num_classes": args.num_classes} if args.num_classes != 1000 else {}


def _resolve_checkpoint(model: str, checkpoint: str | None) -> Path | None:
    from t2tedge.models import default_checkpoint

    resolved = default_checkpoint(model, checkpoint)
    if resolved is None:
        from t2tedge.models.pretrained import list_pretrained

        tags = list_pretrained(model)
        print(f"note: {model} uses untrained (random) weights; for real ones pass --checkpoint PATH"
              + (f" or name a pretrained tag: {', '.join(tags)}" if tags else ""), file=sys.stderr)
    return resolved


def _apply_pretrained_tag(args: argparse.Namespace) -> None:
    """MODEL.TAG on the command line (t2t_vit_7.imagenette): the model is MODEL, and the tag's weights and class
    count become the defaults of --checkpoint and --num-classes."""
    for attribute in ("model", "source"):
        name = getattr(args, attribute, None)
        # Plain names and files never import the model registry: profile runs on devices without torch.
        if not isinstance(name, str) or "." not in name or Path(name).exists():
            continue
        from t2tedge.models import list_models
        from t2tedge.models.pretrained import get_pretrained, split_tag

        if split_tag(name)[0] not in list_models():
            continue
        tag = get_pretrained(name)
        setattr(args, attribute, tag.model)
        if hasattr(args, "num_classes"):
            if args.num_classes not in (1000, tag.num_classes):
                raise UsageError(f"{tag.name} has {tag.num_classes} classes; drop --num-classes {args.num_classes}")
            args.num_classes = tag.num_classes
        if getattr(args, "checkpoint", "absent") is None:
            args.checkpoint = str(tag.checkpoint())


def cmd_list(args: argparse.Namespace) -> int:
    from t2tedge.models import get_spec, list_models

    print(f"{'model':<18}{'family':<14}{'preprocess':<44}{'paper top-1':>12}")
    for name in list_models():
        spec = get_spec(name)
        pre = spec.preprocess
        prep = f"resize {pre.resize} {pre.interpolation}, crop {pre.crop}, {spec.padding}"
        paper = f"{spec.paper.top1:.1f}%" if spec.paper else "-"
        print(f"{name:<18}{spec.family:<14}{prep:<44}{paper:>12}")
    from t2tedge.models.pretrained import get_pretrained, list_pretrained

    print("\npretrained tags (use MODEL.TAG wherever a model name goes; weights and classes come with it):")
    for name in list_pretrained():
        tag = get_pretrained(name)
        print(f"  {name:<28}{tag.num_classes:>5} classes  {tag.note}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from t2tedge.models import create_model, get_spec
    from t2tedge.models.complexity import count_macs, count_params

    spec = get_spec(args.model)
    model = create_model(args.model)
    info = {
        "model": args.model, "family": spec.family, "params": count_params(model),
        "macs": count_macs(model, spec.preprocess.crop), "preprocess": spec.preprocess.to_dict(),
        "padding": spec.padding, "checkpoint_formats": list(spec.checkpoint_formats),
        "paper": vars(spec.paper) if spec.paper else None, "release_url": spec.release_url,
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{args.model} ({spec.family})")
    print(f"  params      {info['params'] / 1e6:.2f} M" + (f"   (paper {spec.paper.params_m} M)" if spec.paper else ""))
    print(f"  MACs        {info['macs'] / 1e9:.3f} G" + (f"   (paper {spec.paper.macs_g} G)" if spec.paper else ""))
    pre = spec.preprocess
    print(f"  preprocess  resize {pre.resize} ({pre.interpolation}), center crop {pre.crop}, mean {pre.mean}, "
          f"std {pre.std}, padding {spec.padding}")
    print(f"  checkpoints {'; '.join(spec.checkpoint_formats)}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from t2tedge.data import discover
    from t2tedge.export.onnx_export import check_onnx_fits
    from t2tedge.harness.artifacts import build_artifact
    from t2tedge.harness.evaluate import evaluate
    from t2tedge.models import get_spec
    from t2tedge.runtimes import get_runtime

    import tempfile

    spec = get_spec(args.model)
    args.runtime = args.runtime or ("onnxruntime" if args.onnx else "torch")
    load_options = _openvino_options(args, [args.runtime]).get(args.runtime, {})
    if args.onnx:
        if args.checkpoint is not None:
            raise UsageError("--onnx files hold their weights; drop --checkpoint")
        check_onnx_fits(args.onnx, args.model, args.num_classes, force=args.force)
    checkpoint = None if args.onnx else _resolve_checkpoint(args.model, args.checkpoint)  # the file has its weights
    samples = discover(args.data, num_classes=args.num_classes)
    if args.limit:
        samples = samples[: args.limit]
    cls = get_runtime(args.runtime)
    if args.onnx and cls.consumes != "onnx":
        raise UsageError(f"--onnx needs a runtime that runs ONNX files, not {args.runtime}; "
                         f"use --runtime onnxruntime (or openvino, tensorrt)")
    with tempfile.TemporaryDirectory(prefix="t2tedge-eval-") as tmp:
        artifact = build_artifact(cls.consumes, args.model, checkpoint, Path(tmp), onnx_path=args.onnx,
                                  **_class_override(args))
        runtime = cls.load(artifact, threads=args.threads, **load_options)
        result = evaluate(runtime, samples, spec.preprocess, batch=args.batch, progress=f"eval {args.model}")
    report = {"model": args.model, "runtime": runtime.describe().to_dict(), "data": str(args.data),
              "checkpoint": str(checkpoint) if checkpoint else "untrained (random init)", **result.to_dict()}
    if args.onnx:
        del report["checkpoint"]
        report["onnx"] = str(args.onnx)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{args.model} on {args.runtime}: top-1 {100 * result.top1:.2f}%  top-5 {100 * result.top5:.2f}%  "
              f"({result.images} images from {args.data})")
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from t2tedge.export import OnnxExportOptions, export_onnx

    from t2tedge.models import get_spec

    get_spec(args.model)
    options = OnnxExportOptions(opset=args.opset, batch=args.batch, dynamic_batch=args.dynamic_batch,
                                simplify=not args.no_simplify)
    ensure_writable_dir(args.out)
    checkpoint = _resolve_checkpoint(args.model, args.checkpoint)
    path = export_onnx(args.model, checkpoint, out_dir=args.out, options=options, **_class_override(args))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def cmd_export_coreml(args: argparse.Namespace) -> int:
    import time

    from t2tedge.export.coreml_checks import inspect_package
    from t2tedge.export.coreml_export import CoreMLExportOptions, export_coreml, require_coremltools
    from t2tedge.models import get_spec

    get_spec(args.model)
    options = CoreMLExportOptions(precision=args.precision, target=args.target, compress=args.compress,
                                  output=args.output, calib=str(args.calib) if args.calib else None,
                                  num_calib=args.num_calib)
    if args.calib is not None and not args.calib.is_dir():
        raise DataError(f"calibration folder not found: {args.calib}")
    ensure_writable_dir(args.out)
    require_coremltools()
    checkpoint = _resolve_checkpoint(args.model, args.checkpoint)
    start = time.perf_counter()
    path = export_coreml(args.model, checkpoint, out_dir=args.out, options=options, **_class_override(args))
    report = inspect_package(path)
    if report.unsupported_ops:
        print(f"warning: ops not in {report.deployment_target}: {', '.join(report.unsupported_ops)}", file=sys.stderr)
    print(f"wrote {path} ({report.size_bytes / 1e6:.2f} MB, {options.compress}, {options.precision}, "
          f"{report.deployment_target}, {sum(report.op_counts.values())} ops) in {time.perf_counter() - start:.1f} s")
    return 0


def cmd_export_tensorrt(args: argparse.Namespace) -> int:
    from t2tedge.export.tensorrt_engine import EngineOptions, build_engine, require_tensorrt

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
        checkpoint = _resolve_checkpoint(args.source, args.checkpoint)
    elif args.checkpoint is not None:
        raise UsageError("--checkpoint goes with a model name; an .onnx file already holds its weights")
    ensure_writable_dir(args.out)
    path = export_openvino(args.source, checkpoint, out_dir=args.out, weights=args.weights, **_class_override(args))
    size = path.stat().st_size + path.with_suffix(".bin").stat().st_size
    print(f"wrote {path} and {path.with_suffix('.bin').name} ({size / 1e6:.1f} MB, {args.weights} weights)")
    return 0


def cmd_export_litert(args: argparse.Namespace) -> int:
    from t2tedge.errors import require_installed
    from t2tedge.models import get_spec
    from t2tedge.quantize.litert_ptq import export_litert_model

    get_spec(args.model)
    if args.calib is not None and args.precision != "int8":
        raise UsageError(f"--calib goes with --precision int8; {args.precision} needs no calibration")
    ensure_writable_dir(args.out)
    for module in ("litert_torch", "ai_edge_quantizer", "ai_edge_litert"):
        require_installed(module, "'t2t-edge[litert]'")
    checkpoint = _resolve_checkpoint(args.model, args.checkpoint)
    path, metadata = export_litert_model(args.model, checkpoint, out_dir=args.out, precision=args.precision,
                                         layout=args.layout, calib=args.calib, num_calib=args.num_calib,
                                         **_class_override(args))
    report = metadata.get("t2tedge.quantization", {})
    counts = {kind: sum(report.get(f"{kind}_ops", {}).values()) for kind in ("int8", "int8_dynamic", "float")}
    summary = ", ".join(f"{n} {kind.replace('_', ' ')} ops" for kind, n in counts.items() if n)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {args.precision}, {args.layout.upper()} input) and "
          f"{path.name}.json" + (f" ({summary}; which: see the JSON)" if args.precision in ("int8", "w8") else ""))
    return 0


def cmd_export_ort(args: argparse.Namespace) -> int:
    from t2tedge.export.ort_format import export_ort

    if args.out is not None:
        ensure_writable_dir(args.out)
    ort_file, config = export_ort(args.onnx, args.out, style=args.style, platform=args.platform)
    print(f"wrote {ort_file} ({ort_file.stat().st_size / 1e6:.1f} MB) and {config}")
    return 0


def cmd_export_bundle(args: argparse.Namespace) -> int:
    from t2tedge.harness.bundle import make_bundle

    ensure_writable_file(args.out, suffix=".tar.gz")
    path = make_bundle(args.artifacts, args.out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): copy it to the device, then "
          f"tar xzf {path.name} && sh profile.sh")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from t2tedge.fileio import atomic_write_text
    from t2tedge.harness.measure import LatencySettings
    from t2tedge.harness.profile import detect_runtime, profile_artifact

    out = args.out
    if out.suffix == ".json":
        ensure_writable_file(out)
    else:
        ensure_writable_dir(out)
    runtime = args.runtime or detect_runtime(args.artifact)
    options = {key: value for key, value in (("compute_units", args.compute_units), ("provider", args.provider),
                                             ("precision", args.precision)) if value}
    options.update(_openvino_options(args, [runtime]).get(runtime, {}))
    table = profile_artifact(args.artifact, runtime=runtime, model=args.model, data=args.data, limit=args.limit,
                             settings=LatencySettings(warmup=args.warmup, runs=args.runs), threads=args.threads,
                             force=args.force, **options)
    cell = table["cells"][0]
    if out.suffix != ".json":
        out = out / f"{args.artifact.name}_{runtime}{'_' + '_'.join(map(str, options.values())) if options else ''}.json"
    atomic_write_text(out, json.dumps(table, indent=1, sort_keys=True) + "\n")
    latency = cell["latency_b1"]
    accuracy = f", top-1 {100 * cell['top1']:.2f}% on {cell['images']} images" if "top1" in cell else ""
    print(f"{cell['model']} {runtime} {cell['precision']} ({cell['runtime_info']['device']}): batch-1 p50 "
          f"{latency['p50_ms']:.2f} ms (min {latency['min_ms']:.2f}, p90 {latency['p90_ms']:.2f}, p99 "
          f"{latency['p99_ms']:.2f}), batch-8 {cell['throughput_b8_ips']:.1f} img/s{accuracy}; wrote {out}")
    return 0


def cmd_parity(args: argparse.Namespace) -> int:
    from t2tedge.harness.parity import format_report, run_parity, write_report

    runtimes = _comma_list(args.runtimes)
    load_options = _openvino_options(args, runtimes)
    if args.json:
        ensure_writable_file(args.json, "--json", suffix=".json")
    if args.onnx:
        from t2tedge.export.onnx_export import check_onnx_fits

        check_onnx_fits(args.onnx, args.model, args.num_classes, force=args.force)
    checkpoint = _resolve_checkpoint(args.model, args.checkpoint)
    report = run_parity(args.model, runtimes, args.data, n=args.n, batch=args.batch, checkpoint=checkpoint,
                        onnx_path=args.onnx, threads=args.threads, load_options=load_options,
                        **_class_override(args))
    print(format_report(report))
    if args.json:
        write_report(report, args.json)
    return 0 if report["passed"] else 1


def cmd_quantize(args: argparse.Namespace) -> int:
    from t2tedge.export.onnx_export import check_onnx_fits
    from t2tedge.quantize import QuantConfig, preset
    from t2tedge.quantize.pipeline import SearchSettings, quantize_model

    if args.config:
        config = QuantConfig.load(args.config)
    else:
        config = preset(args.target, args.method, args.per_channel, args.weight_rounding, args.bias_correction)
    if args.onnx is not None:
        check_onnx_fits(args.onnx, args.model, args.num_classes, force=args.force)
    ensure_writable_dir(args.out)
    checkpoint = None if args.onnx is not None else _resolve_checkpoint(args.model, args.checkpoint)
    search = SearchSettings(sensitivity=args.sensitivity or bool(args.target_agreement),
                            target_agreement=args.target_agreement, max_float=args.max_float,
                            num_heldout=args.num_heldout)
    out, report = quantize_model(args.model, config, args.out, calib=args.calib, num_calib=args.num_calib,
                                 seed=args.seed, target=args.target, onnx_path=args.onnx, checkpoint=checkpoint,
                                 exclude=_comma_list(args.exclude) if args.exclude else (), search=search,
                                 sqnr_threshold=args.sqnr_threshold, **_class_override(args))
    print(f"wrote {out} ({len(report['quantized_nodes'])} nodes quantized, {len(report['float_nodes'])} kept float), "
          f"{out.with_suffix('.json')} and {out.with_suffix('.trt.cache')}")
    return 0


def cmd_check_trt(args: argparse.Namespace) -> int:
    import onnx

    from t2tedge.quantize.tensorrt_checks import check_tensorrt

    if not args.onnx.is_file():
        raise T2TEdgeError(f"ONNX file not found: {args.onnx}")
    try:
        proto = onnx.load(str(args.onnx))
    except Exception as exc:  # protobuf decode errors have no common base class
        raise T2TEdgeError(f"cannot read ONNX file {args.onnx}: {exc}") from None
    report = check_tensorrt(proto)
    for line in report.errors:
        print(f"error: {line}")
    for line in report.warnings:
        print(f"warning: {line}")
    print(f"{args.onnx}: {'OK' if report.ok else 'NOT READY'} for TensorRT ({len(report.errors)} errors, "
          f"{len(report.warnings)} warnings, {report.qdq_pairs} quantized tensors)")
    return 0 if report.ok else 1


def cmd_train(args: argparse.Namespace) -> int:
    from t2tedge.models import get_spec
    from t2tedge.models.train import TrainConfig, train

    get_spec(args.model)
    cfg = TrainConfig(model=args.model, data=str(args.data), epochs=args.epochs, img_size=args.img_size,
                      batch=args.batch, lr=args.lr, warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
                      mixup=args.mixup, cutmix=args.cutmix, color_jitter=args.color_jitter,
                      random_erase=args.random_erase, ema_decay=args.ema_decay, amp=args.amp, seed=args.seed,
                      workers=args.workers, max_steps_per_epoch=args.max_steps, limit=args.limit,
                      drop_path=args.drop_path, weight_decay=args.weight_decay, preload=args.preload,
                      eval_every=args.eval_every, save_every=args.save_every)
    out = args.out or Path("artifacts/train") / f"{args.model}_{Path(args.data).parent.name or 'data'}.pth"
    ensure_writable_file(out)
    result = train(cfg, out, val_data=args.val, resume=not args.no_resume, save_fp16=args.fp16)
    print(f"wrote {result['checkpoint']} ({result['num_classes']} classes)")
    return 0


def cmd_table4(args: argparse.Namespace) -> int:
    from t2tedge.harness.table4 import Grid, GridSettings, load_table, merge, write_outputs
    from t2tedge.harness.table4_grid import SUITES

    ensure_writable_dir(args.out)
    if args.merge:
        table = merge([load_table(p) for p in args.merge])
    else:
        settings = GridSettings(data=args.data or SUITES[args.suite].data(), limit=args.limit, threads=args.threads,
                                runs=args.runs, num_calib=args.num_calib, suite=args.suite)
        table = Grid(_comma_list(args.models), _comma_list(args.runtimes), _comma_list(args.precisions), settings,
                     args.out).run()
    paths = write_outputs(table, args.out)
    measured = sum(c.get("status") == "measured" for c in table["cells"])
    print(f"{measured} cells measured, {len(table['cells']) - measured} skipped; wrote "
          + ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_runtimes(args: argparse.Namespace) -> int:
    from t2tedge.runtimes import available_runtimes

    for name, reason in available_runtimes().items():
        print(f"{name:<14}{'available' if reason is None else 'unavailable: ' + reason}")
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors in the one error style of every other error: one line, exit 2."""

    def error(self, message: str):
        print(f"t2tedge: error: {message} ({self.prog}); see `{self.prog} --help`", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="t2tedge", description="Export, quantize and compare lite T2T-ViT and MobileNet models on "
                     "edge runtimes. Errors print one line (exit 2 for usage, 1 for data); --debug adds the "
                     "traceback.")
    parser.add_argument("--version", action="version", version=f"t2t-edge {__version__}")
    parser.add_argument("--debug", action="store_true", help="on an error, print the full traceback too")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for add_parsers in (_models_parser, _eval_parser, _export_parser, _profile_parser, _parity_parser,
                        _quantize_parser, _check_trt_parser, _train_parser, _table4_parser, _runtimes_parser):
        add_parsers(sub)
    return parser


def _models_parser(sub) -> None:
    p = sub.add_parser("list", help="list the registered models")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="params, MACs and preprocessing of a model")
    p.add_argument("model")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_info)


def _eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="top-1/top-5 accuracy on a labelled image folder")
    p.add_argument("model")
    _checkpoint_arg(p)
    p.add_argument("--data", type=Path, default=DEFAULT_EVAL_DATA,
                   help="ImageFolder, flat wnid_*.JPEG or flat ImageNet val folder (default: %(default)s)")
    p.add_argument("--runtime", help="runtime to evaluate on (default: onnxruntime with --onnx, else torch)")
    p.add_argument("--onnx", type=Path, help="evaluate this ONNX file (fp32 or INT8 QDQ) instead of exporting one")
    p.add_argument("--num-classes", type=_at_least(1), default=1000,
                   help="classifier size; other than 1000, class folders are labelled in sorted order")
    p.add_argument("--limit", type=_at_least(1), help="only the first N images")
    p.add_argument("--batch", type=_at_least(1), default=32)
    p.add_argument("--threads", type=_at_least(1), help="intra-op threads (default: all cores)")
    _precision_hint_arg(p)
    _force_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)


def _export_parser(sub) -> None:
    export = sub.add_parser("export", help="export a model to a runtime format")
    export_sub = export.add_subparsers(dest="format", required=True, metavar="FORMAT")
    p = export_sub.add_parser("onnx", help="simplified, checked ONNX from the export-ready model form")
    p.add_argument("model")
    _checkpoint_arg(p)
    p.add_argument("--out", type=Path, default=Path("artifacts/onnx"), help="output folder (default: %(default)s)")
    p.add_argument("--opset", type=_at_least(13, 21), default=17, help="ONNX opset, 13..21 (default: %(default)s)")
    batch = p.add_mutually_exclusive_group()
    batch.add_argument("--batch", type=_at_least(1), default=1, help="static batch size (default: %(default)s)")
    batch.add_argument("--dynamic-batch", action="store_true", help="symbolic batch dimension")
    p.add_argument("--no-simplify", action="store_true", help="skip onnxsim")
    _num_classes_arg(p)
    p.set_defaults(func=cmd_export_onnx)

    p = export_sub.add_parser(
        "coreml", help="ML Program (.mlpackage) with an image input, optionally compressed",
        description="Convert to a Core ML ML Program whose input is an RGB image (normalisation inside the model) "
                    "and whose output is a classifier (labels + probabilities) or raw logits. Compression uses "
                    "coremltools.optimize: w8 = int8 per-channel weights; palettize6/4 = k-means weight LUTs; "
                    "w8a8 = int8 weights and activations, calibrated on real images in torch (needs iOS17+).")
    p.add_argument("model", help="a model name, or MODEL.TAG: t2t_vit_7.official downloads the release file once")
    _checkpoint_arg(p)
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
    p.add_argument("--num-calib", type=_at_least(1), default=128, help="w8a8 calibration images used (default: %(default)s)")
    _num_classes_arg(p)
    p.set_defaults(func=cmd_export_coreml)

    p = export_sub.add_parser(
        "tensorrt", help="serialized TensorRT engine from an ONNX export (needs TensorRT 10 and an NVIDIA GPU)",
        description="Build a TensorRT engine. int8 uses the Q/DQ scales of a model from `t2tedge quantize --target "
                    "tensorrt` (explicit quantization), or --calib-cache for an fp32 model (implicit). Exit code 2 "
                    "when TensorRT is not installed.")
    p.add_argument("onnx", type=Path, help="ONNX file (fp32, or QDQ INT8)")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp16")
    p.add_argument("--calib-cache", type=Path, help="TensorRT calibration cache written by `t2tedge quantize`")
    p.add_argument("--min-batch", type=_at_least(1), default=1)
    p.add_argument("--opt-batch", type=_at_least(1), default=1)
    p.add_argument("--max-batch", type=_at_least(1), default=8, help="optimization profile for dynamic-batch graphs")
    p.add_argument("--workspace-mib", type=_at_least(1), default=1024)
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
    _checkpoint_arg(p)
    p.add_argument("--weights", choices=("fp32", "fp16"), default="fp32",
                   help="how the .bin stores float weights; fp16 halves it, OpenVINO computes in the inference "
                        "precision either way (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("artifacts/openvino"), help="output folder (default: %(default)s)")
    _num_classes_arg(p)
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
    _checkpoint_arg(p)
    p.add_argument("--precision", choices=("fp32", "fp16", "w8", "int8"), default="fp32",
                   help="fp32 | fp16 (weights) | w8 (dynamic-range int8) | int8 (static, calibrated) (default: %(default)s)")
    p.add_argument("--layout", choices=("nhwc", "nchw"), default="nhwc", help="input layout (default: %(default)s)")
    p.add_argument("--calib", type=Path, help="int8 calibration images (default: ../shared/data/imagenet-sample)")
    p.add_argument("--num-calib", type=_at_least(1), default=256, help="int8 calibration images used (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("artifacts/litert"), help="output folder (default: %(default)s)")
    _num_classes_arg(p)
    p.set_defaults(func=cmd_export_litert)

    p = export_sub.add_parser(
        "ort", help="ORT format (.ort) for ONNX Runtime Mobile, via onnxruntime's own converter",
        description="Convert an ONNX export to ONNX Runtime's ORT format and write the required-operators config "
                    "for a minimal build. 'fixed' bakes in CPU optimizations for --platform; 'runtime' leaves them "
                    "to session creation, which the XNNPACK execution provider needs to claim nodes.")
    p.add_argument("onnx", type=Path)
    p.add_argument("--out", type=Path, help="output folder (default: beside the ONNX file)")
    p.add_argument("--style", choices=("fixed", "runtime"), default="fixed")
    p.add_argument("--platform", choices=("arm", "amd64"), default="arm", help="target CPU (default: %(default)s)")
    p.set_defaults(func=cmd_export_ort)

    p = export_sub.add_parser(
        "bundle", help="artifacts + profiler + runner script in one .tar.gz for a device",
        description="Pack artifacts (.onnx, .ort, .mlpackage, .engine, OpenVINO .xml with its .bin) with the profiler and profile.sh. On the "
                    "device: tar xzf BUNDLE && sh profile.sh (needs python3, numpy, pillow, tqdm and the runtime). "
                    "Each run leaves a JSON in results/ to merge with `t2tedge table4 --merge`.")
    p.add_argument("artifacts", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=Path("artifacts/bundle.tar.gz"), help="default: %(default)s")
    p.set_defaults(func=cmd_export_bundle)


def _profile_parser(sub) -> None:
    p = sub.add_parser(
        "profile", help="latency protocol (and accuracy with --data) for one artifact on this host",
        description="Measure an exported artifact with its runtime, chosen from the suffix (.onnx/.ort: "
                    "onnxruntime, .mlpackage: coreml, .engine/.plan: tensorrt, .xml: openvino): warm-up, then --runs "
                    "timed batch-1 runs (min/p50/p90/p99/mean) and batch-8 throughput. Writes a Table 4 JSON with one cell.")
    p.add_argument("artifact", type=Path)
    p.add_argument("--runtime", help="override the runtime chosen from the suffix (e.g. tensorrt for an .onnx)")
    p.add_argument("--model", help="model name, when the artifact carries no t2tedge metadata")
    p.add_argument("--data", type=Path, help="labelled images: also measure top-1/top-5")
    p.add_argument("--limit", type=_at_least(1), help="first N images of --data")
    p.add_argument("--runs", type=_at_least(1), default=50, help="timed batch-1 runs (default: %(default)s)")
    p.add_argument("--warmup", type=_at_least(0), default=10, help="untimed runs first (default: %(default)s)")
    p.add_argument("--threads", type=_at_least(1))
    p.add_argument("--compute-units", choices=("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE"), help="Core ML only")
    p.add_argument("--provider", choices=("cpu", "xnnpack"), help="onnxruntime execution provider (default: cpu)")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), help="TensorRT: engine precision for an .onnx")
    _precision_hint_arg(p)
    _force_arg(p)
    p.add_argument("--out", type=Path, default=Path("results/profile"),
                   help="a .json file, or a folder for <artifact>_<runtime>.json (default: %(default)s)")
    p.set_defaults(func=cmd_profile)


def _parity_parser(sub) -> None:
    p = sub.add_parser("parity", help="compare runtimes on the same real images (exit 1 past tolerance)")
    p.add_argument("model")
    p.add_argument("--runtimes", default="torch,onnxruntime",
                   help="comma list; the first is the reference (default: %(default)s)")
    _checkpoint_arg(p)
    p.add_argument("--data", type=Path, default=DEFAULT_EVAL_DATA, help="image folder (default: %(default)s)")
    p.add_argument("--n", type=_at_least(1), default=64, help="number of images (default: %(default)s)")
    p.add_argument("--batch", type=_at_least(1), default=1, help="batch size fed to each runtime (default: %(default)s)")
    p.add_argument("--onnx", type=Path, help="use this ONNX file for ONNX-consuming runtimes instead of exporting")
    p.add_argument("--threads", type=_at_least(1))
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the report as JSON")
    _precision_hint_arg(p)
    _force_arg(p)
    _num_classes_arg(p)
    p.set_defaults(func=cmd_parity)


def _quantize_parser(sub) -> None:
    p = sub.add_parser("quantize", help="post-training INT8 (QDQ ONNX) calibrated on real images")
    p.add_argument("model")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--onnx", type=Path, help="quantize this fp32 ONNX export")
    source.add_argument("--checkpoint", metavar="PATH|random", help="export these weights first (see `export onnx`)")
    p.add_argument("--calib", type=Path, default=shared_path("data", "imagenet-sample"),
                   help="calibration images, disjoint from evaluation data (default: %(default)s)")
    p.add_argument("--num-calib", type=_at_least(1), default=256, help="calibration images drawn with --seed (default: %(default)s)")
    p.add_argument("--seed", type=_at_least(0), default=0)
    p.add_argument("--method", choices=["mse", "minmax", "percentile", "entropy"], default="mse",
                   help="activation range calibration; mse picks, per tensor, the clipping range with the least "
                        "int8 error (measured best on MobileNetV1/V2 and T2T-ViT-7, see docs/quantization.md) (default: %(default)s)")
    granularity = p.add_mutually_exclusive_group()
    granularity.add_argument("--per-channel", dest="per_channel", action="store_true", default=True,
                             help="per-channel symmetric int8 weights (default)")
    granularity.add_argument("--per-tensor", dest="per_channel", action="store_false", help="per-tensor weights")
    p.add_argument("--weight-rounding", choices=["gptq", "nearest"], default="gptq",
                   help="gptq rounds each layer's int8 weights against its real calibration inputs so rounding "
                        "errors cancel in the layer's output (MobileNetV1 agreement 95.9%% -> 97.8%%, see docs/quantization.md); "
                        "nearest rounds every weight on its own (default: %(default)s)")
    p.add_argument("--bias-correction", choices=["auto", "on", "off"], default="auto",
                   help="move each quantized layer's bias by the mean shift that quantizing its inputs causes, "
                        "layer by layer on the calibration images (MobileNetV1 SQNR +3.2 dB, see docs/quantization.md); auto "
                        "keeps it only where it raises logits SQNR on those images by 0.5 dB (default: %(default)s)")
    p.add_argument("--target", choices=["onnxruntime", "openvino", "tensorrt"], default="onnxruntime",
                   help="onnxruntime: uint8 asymmetric activations, int32 biases (ORT's fast x86 path); openvino: the "
                        "same choices, measured best for OpenVINO's int8 kernels too (attention MatMuls stay float; "
                        "docs/openvino.md), written as MODEL_int8_openvino.onnx; tensorrt: symmetric int8 activations, "
                        "float biases, as TensorRT's explicit quantization requires (default: %(default)s)")
    p.add_argument("--exclude", metavar="OP_TYPES|NODE_NAMES",
                   help="comma list kept in float: ONNX op types (MatMul) or node names / fnmatch patterns")
    p.add_argument("--config", type=Path, help="a QuantConfig JSON (global, per-op-type, per-node-name settings)")
    p.add_argument("--sensitivity", action="store_true",
                   help="score every quantizable node (left in float alone) on held-out images; report sorted")
    p.add_argument("--target-agreement", type=_fraction(open_low=True), metavar="FRACTION",
                   help="keep the most sensitive nodes in float until top-1 agreement with fp32 reaches this "
                        "(e.g. 0.99); implies --sensitivity")
    p.add_argument("--max-float", type=_at_least(0), metavar="N",
                   help="at most N nodes kept float by --target-agreement (default: 10%% of quantizable nodes)")
    p.add_argument("--num-heldout", type=_at_least(1), default=200,
                   help="held-out images from --calib (disjoint from calibration) for scoring; near 99%% agreement "
                        "200 images give a standard error of about 0.9%%, 500 about 0.5%% (default: %(default)s)")
    p.add_argument("--sqnr-threshold", type=float, default=10.0, metavar="DB",
                   help="flag layers whose output SQNR vs fp32 (cumulative, on held-out images) is below this "
                        "(default: %(default)s)")
    _num_classes_arg(p)
    _force_arg(p)
    p.add_argument("--out", type=Path, default=Path("artifacts/int8"), help="output folder (default: %(default)s)")
    p.set_defaults(func=cmd_quantize)


def _check_trt_parser(sub) -> None:
    p = sub.add_parser("check-trt", help="list what TensorRT's ONNX parser and INT8 Q/DQ fusion would reject")
    p.add_argument("onnx", type=Path)
    p.set_defaults(func=cmd_check_trt)


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model from scratch on an ImageFolder (checkpoint in release format)")
    p.add_argument("model")
    p.add_argument("--data", type=Path, required=True, help="training folder <class>/<image>; classes in sorted order")
    p.add_argument("--val", type=Path, help="validation folder, evaluated after every epoch")
    p.add_argument("--epochs", type=_at_least(1), default=100)
    p.add_argument("--img-size", type=_at_least(32), default=224)
    p.add_argument("--batch", type=_at_least(1), default=64)
    p.add_argument("--lr", type=_positive_float, default=1e-3, help="peak AdamW learning rate (default: %(default)s)")
    p.add_argument("--warmup-epochs", type=_at_least(0), default=5)
    p.add_argument("--label-smoothing", type=_fraction(open_high=True), default=0.1)
    p.add_argument("--weight-decay", type=_non_negative_float, default=0.05)
    p.add_argument("--mixup", type=_non_negative_float, default=0.0, help="mixup alpha; 0 disables (default)")
    p.add_argument("--cutmix", type=_non_negative_float, default=0.0,
                   help="CutMix alpha; 0 disables (default). With --mixup too, each batch uses one of the two")
    p.add_argument("--color-jitter", type=_fraction(), default=0.0,
                   help="brightness/contrast/saturation factors drawn from [1-s, 1+s]; 0 disables (default)")
    p.add_argument("--random-erase", type=_fraction(), default=0.0,
                   help="probability of erasing one random rectangle per image (timm's 'pixel' mode)")
    p.add_argument("--drop-path", type=_fraction(open_high=True), default=0.1, help="stochastic depth rate for T2T-ViT")
    p.add_argument("--ema-decay", type=_fraction(open_high=True), default=0.0, help="keep an EMA of weights (saved as state_dict_ema)")
    p.add_argument("--amp", action="store_true", help="mixed precision on CUDA")
    p.add_argument("--seed", type=_at_least(0), default=0)
    p.add_argument("--workers", type=_at_least(1), default=2, help="image decoding threads")
    p.add_argument("--preload", type=_at_least(1), metavar="SIZE",
                   help="decode every training image once at SIZExSIZE and crop batches on the training device "
                        "(keeps a GPU fed; 9469 images at 192 px hold 1 GB). Default: decode per image per epoch")
    p.add_argument("--eval-every", type=_at_least(1), default=1, help="evaluate --val every N epochs (and after the last)")
    p.add_argument("--save-every", type=_at_least(1), default=1,
                   help="write the resumable checkpoint every N epochs (and after the last)")
    p.add_argument("--max-steps", type=_at_least(1), help="cap steps per epoch (smoke tests)")
    p.add_argument("--limit", type=_at_least(1), help="train on an evenly spread subset of N images")
    p.add_argument("--out", type=Path, help="checkpoint path (default: artifacts/train/MODEL_DATASET.pth)")
    p.add_argument("--no-resume", action="store_true", help="start over even if --out exists")
    p.add_argument("--fp16", action="store_true", help="also write a compact fp16 release file beside --out")
    p.set_defaults(func=cmd_train)


def _table4_parser(sub) -> None:
    from t2tedge.harness.table4_grid import PRECISIONS, RUNTIMES, SUITES, TABLE4_MODELS

    p = sub.add_parser("table4", help="the paper's Table 4 grid, measured: models x runtimes x precisions")
    p.add_argument("--models", default=",".join(TABLE4_MODELS), help="comma list (default: %(default)s)")
    p.add_argument("--runtimes", default=",".join(RUNTIMES), help="comma list (default: %(default)s)")
    p.add_argument("--precisions", default=",".join(PRECISIONS), help="comma list (default: %(default)s)")
    p.add_argument("--suite", choices=sorted(SUITES), default="imagenet",
                   help="imagenet: ImageNet weights where they exist (untrained T2T-ViT otherwise), val1300, "
                        "imagenet-sample calibration; imagenette: every model trained from scratch on Imagenette, "
                        "its val, calibrated on its train; models without such weights are skipped "
                        "(default: %(default)s)")
    p.add_argument("--data", type=Path, help="evaluation images (default: the suite's)")
    p.add_argument("--limit", type=_at_least(1), help="N images evenly spread over the classes, for quick runs")
    p.add_argument("--runs", type=_at_least(1), default=50, help="timed batch-1 runs per cell after warm-up (default: %(default)s)")
    p.add_argument("--num-calib", type=_at_least(1), default=256,
                   help="calibration images for the int8 cells, from the suite's calibration folder "
                        "(default: %(default)s)")
    p.add_argument("--threads", type=_at_least(1))
    p.add_argument("--out", type=Path, default=Path("results"), help="output folder (default: %(default)s)")
    p.add_argument("--merge", nargs="+", type=Path, metavar="JSON", help="merge result files instead of measuring")
    p.set_defaults(func=cmd_table4)


def _runtimes_parser(sub) -> None:
    p = sub.add_parser("runtimes", help="list runtime adapters and whether they can run here")
    p.set_defaults(func=cmd_runtimes)


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so every `with` block (temporary folders, staged artifacts) unwinds."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (usage errors raise SystemExit(2) from the parser, as argparse does)."""
    import signal
    import threading

    args = build_parser().parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        _apply_pretrained_tag(args)
        return args.func(args)
    except T2TEdgeError as exc:
        if args.debug:
            raise
        print(f"t2tedge: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("t2tedge: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("t2tedge: terminated", file=sys.stderr)
        return 143
    except Exception as exc:  # anything unforeseen still ends in one line unless --debug asks for the traceback
        if args.debug:
            raise
        text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        where = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
        print(f"t2tedge: error: {type(exc).__name__}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else text}"
              f"{where}; rerun with `t2tedge --debug ...` for the traceback", file=sys.stderr)
        return 1
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
