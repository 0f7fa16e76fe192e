"""`t2tedge export TARGET`: one parser per registered target, all calling the target's build function."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from t2tedge.cli.options import at_least, check_image_folder, checkpoint_arg, fraction, resolve_checkpoint
from t2tedge.cli.ort_commands import ort_format_parser
from t2tedge.errors import DataError, UsageError
from t2tedge.fileio import ensure_writable_dir, ensure_writable_file
from t2tedge.targets import DEFAULT_NUM_CALIB


def cmd_export(args: argparse.Namespace) -> int:
    """`t2tedge export TARGET MODEL|FILE.onnx --precision P ...`: one shape for every target."""
    from t2tedge.onnx_graph import onnx_precision
    from t2tedge.targets import BuildRequest, build_artifact, get_target

    target = get_target(args.format)
    source = Path(args.source) if args.source.endswith(".onnx") else None
    model = args.source
    if source is not None:
        model = _stamped_model(source)
    else:
        from t2tedge.models import get_spec

        get_spec(model)
    auto = args.precision == "auto"
    if not auto:
        given = [flag for name, flag in AUTO_OPTIONS if getattr(args, name) is not None]
        if given:
            raise UsageError(f"{', '.join(given)} only applies to --precision auto")
    given = [name for name in ("checkpoint", "calib", "num_calib", "num_classes", "precision")
             if getattr(args, name) is not None and not (auto and name in ("precision", "calib", "num_calib"))]
    precision = "fp32" if auto else args.precision or (
        onnx_precision(source) if source is not None else target.default_precision)
    options = {o.name: getattr(args, o.name) for o in target.export_options if getattr(args, o.name) is not None}
    request = BuildRequest(model=model, precision=precision, out_dir=args.out, source=source,
                           calib=args.calib, num_calib=args.num_calib or DEFAULT_NUM_CALIB,
                           num_classes=args.num_classes or 1000, options=options)
    ensure_writable_dir(args.out)
    target.check_request(request, given)
    check_image_folder(request.calib, "--calib", "calibration folder not found")
    if source is None:
        request = replace(request, checkpoint=resolve_checkpoint(model, args.checkpoint))
    if auto:
        return _export_auto(target, request, args)
    path = build_artifact(target, request)
    detail = target.summarize(path) if target.summarize else ""
    companions = [p.name for p in target.files(path)[1:] if p.exists()]
    print(f"wrote {path}" + (f" and {', '.join(companions)}" if companions else "")
          + f" ({target.size_bytes(path) / 1e6:.1f} MB, {target.name} {precision}" + (f"; {detail}" if detail else "")
          + ")")
    return 0


# The options of --precision auto (attribute, flag): refused with any other precision.
AUTO_OPTIONS = (("target_agreement", "--target-agreement"), ("candidates", "--candidates"),
                ("num_heldout", "--num-heldout"), ("runs", "--runs"), ("threads", "--threads"))


def _export_auto(target, request, args: argparse.Namespace) -> int:
    from t2tedge.harness.auto_precision import AutoPrecisionSettings, report_stem, search
    from t2tedge.models import get_spec

    given = {name: getattr(args, name) for name, _ in AUTO_OPTIONS if getattr(args, name) is not None}
    if "candidates" in given:
        given["candidates"] = tuple(given["candidates"].split(","))
    settings = AutoPrecisionSettings(**given)
    path, record = search(target, request, settings, get_spec(request.model).preprocess)
    chosen = next(c for c in record.candidates if c.precision == record.chosen)
    for c in record.candidates:
        print(f"  {c.precision:5s} p50 {c.p50_ms:8.2f} ms ({c.ratio_to_fp32:.2f}x fp32)  agreement "
              f"{100 * c.agreement:6.2f}%{'  <- chosen' if c is chosen else ''}")
    print(f"wrote {path} ({target.size_bytes(path) / 1e6:.1f} MB, {target.name} {record.chosen}: the fastest file "
          f"with top-1 agreement >= {settings.target_agreement:.4g} on {record.images} held-out images) and "
          f"{report_stem(path).name}.json/.md beside it")
    return 0


def _stamped_model(source: Path) -> str:
    from t2tedge import metadata_keys as keys
    from t2tedge.export.onnx_export import load_onnx_graph, read_metadata

    model = read_metadata(load_onnx_graph(source)).get(keys.MODEL)
    if not model:
        raise DataError(f"{source} carries no t2tedge.model metadata; export it with `t2tedge export onnx`")
    return model


def cmd_export_bundle(args: argparse.Namespace) -> int:
    from t2tedge.harness.bundle import make_bundle

    ensure_writable_file(args.out, suffix=".tar.gz")
    path = make_bundle(args.artifacts, args.out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): copy it to the device, then "
          f"tar xzf {path.name} && sh profile.sh")
    return 0


def export_parser(sub) -> None:
    from t2tedge.harness.auto_precision import AutoPrecisionSettings
    from t2tedge.targets import PRECISION_MEANINGS, PRECISIONS, targets

    AUTO_DEFAULTS = AutoPrecisionSettings()

    export = sub.add_parser(
        "export", help="export a model to a target's file: one shape for every target",
        description="t2tedge export TARGET MODEL --precision P [--calib DIR] [--num-calib N]. Precisions: "
                    + "; ".join(f"{p} = {text}" for p, text in PRECISION_MEANINGS.items())
                    + ". Each target builds those its --help lists and refuses the others with the reason.")
    export_sub = export.add_subparsers(dest="format", required=True, metavar="TARGET")
    for target in targets().values():
        if target.reference or target.build is None:
            continue
        p = export_sub.add_parser(target.name, aliases=list(target.aliases), help=target.summary,
                                  description=f"{target.summary}. {target.description}".strip())
        if target.from_onnx:
            p.add_argument("source", metavar="MODEL|FILE.onnx",
                           help="a model name (MODEL.TAG brings its weights), or one of our .onnx files (fp32 or INT8)")
        else:
            p.add_argument("source", metavar="MODEL", help="a model name; MODEL.TAG brings its weights and classes")
        checkpoint_arg(p)
        # Every precision of the vocabulary parses; those the target does not build are refused with the reason.
        p.add_argument("--precision", choices=(*PRECISIONS, "auto"), metavar="{" + ",".join(target.builds) + ",auto}",
                       help=f"{' | '.join(target.builds)} (default: {target.default_precision}"
                            + ("; a file's own precision for FILE.onnx" if target.from_onnx else "")
                            + "); auto: build each, time each alone here, write the fastest whose top-1 agreement "
                              "with the fp32 file reaches --target-agreement")
        reads = ("int8 calibration images" + ("; fp16: the images its range check runs on"
                                             if "fp16" in target.calibrated else ""))
        p.add_argument("--calib", type=Path, metavar="DIR", help=f"{reads} (default: ../shared/data/imagenet-sample)")
        p.add_argument("--num-calib", type=at_least(1), metavar="N",
                       help=f"calibration images drawn (default: {DEFAULT_NUM_CALIB})")
        for option in target.export_options:
            if option.flag_only:
                p.add_argument(option.flag, dest=option.name, action="store_const", const=True, help=option.help)
            else:
                p.add_argument(option.flag, dest=option.name, choices=option.choices, help=option.help,
                               type=at_least(*option.bounds) if option.kind is int else None)
        auto = p.add_argument_group("--precision auto")
        auto.add_argument("--target-agreement", type=fraction(open_low=True), metavar="FRACTION",
                          help=f"top-1 agreement with the fp32 file the chosen file must reach (default: "
                               f"{AUTO_DEFAULTS.target_agreement})")
        auto.add_argument("--candidates", metavar="P,P",
                          help=f"precisions to try (default: every one {target.name} builds and times here)")
        auto.add_argument("--num-heldout", type=at_least(1), metavar="N",
                          help=f"images of --calib, never calibrated on, that score agreement (default: "
                               f"{AUTO_DEFAULTS.num_heldout})")
        auto.add_argument("--runs", type=at_least(1),
                          help=f"timed batch-1 runs per file (default: {AUTO_DEFAULTS.runs})")
        auto.add_argument("--threads", type=at_least(1), help="intra-op threads when timing (default: all cores)")
        p.add_argument("--out", type=Path, default=target.default_out, help="output folder (default: %(default)s)")
        p.add_argument("--num-classes", type=at_least(1),
                       help="classifier size of the checkpoint, for fine-tunes on other label sets (default: 1000)")
        p.set_defaults(func=cmd_export, format=target.name)

    ort_format_parser(export_sub)

    p = export_sub.add_parser(
        "bundle", help="artifacts + profiler + runner script in one .tar.gz for a device",
        description="Pack artifacts (.onnx, .ort, .mlpackage, .engine, OpenVINO .xml with its .bin) with the profiler and profile.sh. On the "
                    "device: tar xzf BUNDLE && sh profile.sh (needs python3, numpy, pillow, tqdm and the runtime). "
                    "Each run leaves a JSON in results/ to merge with `t2tedge table4 --merge`.")
    p.add_argument("artifacts", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=Path("artifacts/bundle.tar.gz"), help="default: %(default)s")
    p.set_defaults(func=cmd_export_bundle)
