"""`t2tedge profile | parity | quantize | check-trt`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from t2tedge.cli.options import (
    DEFAULT_EVAL_DATA,
    at_least,
    check_image_folder,
    class_override,
    comma_list,
    force_arg,
    fraction,
    given_load_options,
    load_option_args,
    load_options_by_target,
    num_classes_arg,
    resolve_checkpoint,
    say_note,
)
from t2tedge.errors import UsageError
from t2tedge.fileio import ensure_writable_dir, ensure_writable_file
from t2tedge.paths import shared_path
from t2tedge.targets import DEFAULT_NUM_CALIB


def cmd_profile(args: argparse.Namespace) -> int:
    from t2tedge.fileio import atomic_write_text
    from t2tedge.harness.measure import LatencySettings
    from t2tedge.harness.profile import artifact_target, profile_artifact

    if args.compare:
        return _compare_profiles(args)
    if args.artifact is None:
        raise UsageError("name an artifact to profile, or --compare A.json B.json")
    if args.ops:
        return _profile_ops(args)
    target = artifact_target(args.artifact, args.runtime)
    options = given_load_options(args)
    target.check_load_options(options, f" ({args.artifact.name})")
    if args.limit is not None and args.data is None:
        raise UsageError("--limit counts images of --data; add --data DIR (latency alone needs no images)")
    out = args.out
    if out.suffix == ".json":
        ensure_writable_file(out)
    else:
        ensure_writable_dir(out)
    runtime = target.name
    record = profile_artifact(args.artifact, runtime=runtime, model=args.model, data=args.data, limit=args.limit,
                              settings=LatencySettings(warmup=args.warmup, runs=args.runs), threads=args.threads,
                              force=args.force, **options)
    cell, latency = record.cell, record.cell.latency_b1
    if out.suffix != ".json":
        out = out / f"{args.artifact.name}_{runtime}{'_' + '_'.join(map(str, options.values())) if options else ''}.json"
    atomic_write_text(out, record.to_json())
    accuracy = f", top-1 {100 * cell.top1:.2f}% on {cell.images} images" if cell.top1 is not None else ""
    print(f"{cell.model} {runtime} {cell.precision} ({cell.runtime_info['device']}): batch-1 p50 "
          f"{latency.p50_ms:.2f} ms (min {latency.min_ms:.2f}, p90 {latency.p90_ms:.2f}, p99 "
          f"{latency.p99_ms:.2f}), batch-8 {cell.throughput_b8_ips:.1f} img/s{accuracy}; wrote {out}")
    return 0


def _views_out(out: Path, stem: str) -> Path:
    """The .json (or .md) file `out` names, else `out`/`stem`.json; its folder writable."""
    if out.suffix in (".json", ".md"):
        ensure_writable_file(out)
        return out.with_suffix(".json")
    ensure_writable_dir(out)
    return out / f"{stem}.json"


def _write_views(json_path: Path, markdown: str, records: list) -> str:
    """Markdown beside `json_path`, and the PNG where matplotlib is installed; what was written, in words."""
    from t2tedge.fileio import atomic_write_text
    from t2tedge.harness.op_profile_views import render_bars

    atomic_write_text(json_path.with_suffix(".md"), markdown)
    written = [json_path.with_suffix(".md")]
    if any(r.ops for r in records):
        try:
            render_bars(records, json_path.with_suffix(".png"))
            written.append(json_path.with_suffix(".png"))
        except ImportError:
            pass
    return ", ".join(map(str, written))


def _profile_ops(args: argparse.Namespace) -> int:
    from t2tedge.fileio import atomic_write_text
    from t2tedge.harness.op_profile import claimed_share, profile_ops
    from t2tedge.harness.op_profile_views import render_markdown
    from t2tedge.harness.profile import artifact_target

    if args.data is not None or args.limit is not None:
        raise UsageError("--ops times ops on one fixed input; accuracy (--data, --limit) is a plain `t2tedge profile`")
    if args.force or args.model:
        raise UsageError("--ops profiles the model the file names; --model and --force go with a plain profile")
    target = artifact_target(args.artifact, args.runtime)
    options = given_load_options(args)
    target.check_load_options(options, f" ({args.artifact.name})")
    out = _views_out(args.out, f"{args.artifact.name}_{target.name}.ops")
    record = profile_ops(args.artifact, runtime=target.name, runs=args.runs, warmup=args.warmup,
                         threads=args.threads, **options)
    atomic_write_text(out, record.to_json())
    views = _write_views(out, render_markdown(record), [record])
    head = (f"{record.model} {record.runtime} {record.precision}: load {record.load_ms:.0f} ms, first run "
            f"{record.first_run_ms:.1f} ms, p50 {record.latency_b1.p50_ms:.2f} ms, peak RSS {record.peak_rss_mb:.0f} MB")
    if record.op_sum_ms:
        top = ", ".join(f"{b.name} {100 * b.share:.0f}%" for b in record.blocks[:3])
        print(f"{head}; {len(record.ops)} ops, {record.op_sum_ms:.2f} of {record.wall_ms:.2f} ms wall, blocks claim "
              f"{100 * claimed_share(record):.1f}% (top: {top}); wrote {out}, {views}")
    else:
        print(f"{head}; no per-op times: {record.op_timing}; wrote {out}, {views}")
    return 0


def _compare_profiles(args: argparse.Namespace) -> int:
    from t2tedge.harness.op_profile_views import render_compare_markdown
    from t2tedge.results import OpProfileRecord

    if args.artifact is not None or args.ops:
        raise UsageError("--compare reads two op-profile records; it takes no artifact and no --ops")
    first, second = (OpProfileRecord.read(path) for path in args.compare)
    stem = f"compare_{args.compare[0].stem}_vs_{args.compare[1].stem}"
    out = _views_out(args.out, stem)
    views = _write_views(out, render_compare_markdown(first, second), [first, second])
    print(render_compare_markdown(first, second).split("## Time per block")[0].strip().splitlines()[0])
    print(f"wrote {views}")
    return 0


def _file_form(sources: list[str]) -> bool:
    """`parity FILE FILE...` rather than `parity MODEL`: a name that is a file, or ends as our files do."""
    from t2tedge.targets import known_suffixes

    return any(Path(s).exists() or Path(s).suffix in known_suffixes() for s in sources)


# Options of each form of `parity`, refused in the other.
_MODEL_FORM = ("runtimes", "onnx", "precision", "calib", "num_calib", "batch", "num_classes")
_FILE_FORM = ("reference", "blocks", "block_images", "junit", "markdown", "png", "tolerance", "seed", "pairs")


def cmd_parity(args: argparse.Namespace) -> int:
    from t2tedge.cli.options import apply_pretrained_tag

    sources = list(args.model)
    if _file_form(sources):
        return _parity_files(args, sources)
    given = [name for name in _FILE_FORM if getattr(args, name) not in (None, False)]
    if given:
        raise UsageError(f"--{given[0].replace('_', '-')} goes with the file form (t2tedge parity FILE FILE...)")
    if len(sources) > 1:
        missing = next(s for s in sources if not Path(s).exists())
        raise UsageError(f"{missing}: no such file; parity takes one MODEL, or files")
    args.model = sources[0]
    apply_pretrained_tag(args)
    return _parity_model(args)


def _parity_files(args: argparse.Namespace, sources: list[str]) -> int:
    from t2tedge.harness.file_parity import FileParitySettings, parse_tolerances, run_file_parity
    from t2tedge.harness.parity_views import format_table, write_views

    given = [name for name in _MODEL_FORM if getattr(args, name, None) is not None]
    if given or given_load_options(args):
        flag = given[0] if given else next(iter(given_load_options(args)))
        raise UsageError(f"--{flag.replace('_', '-')} goes with the model form (t2tedge parity MODEL); files run as "
                         f"they are on disk")
    if args.block_images is not None and not args.blocks:
        raise UsageError("--block-images counts the images of --blocks; add --blocks")
    outputs = {"--json": (args.json, ".json"), "--junit": (args.junit, ".xml"), "--markdown": (args.markdown, ".md"),
               "--png": (args.png, ".png")}
    for flag, (path, suffix) in outputs.items():
        if path is not None:
            ensure_writable_file(path, flag, suffix=suffix)
    if args.png is not None and not args.blocks:
        raise UsageError("--png draws SQNR per block; add --blocks")
    check_image_folder(args.data, "--data", "image folder not found")
    settings = FileParitySettings(data=args.data, limit=args.limit, seed=args.seed or 0, threads=args.threads,
                                  reference=args.reference, checkpoint=args.checkpoint,
                                  tolerances=parse_tolerances(args.tolerance), blocks=args.blocks,
                                  block_images=args.block_images or 16, force=args.force, pairs=args.pairs or "all")
    record = run_file_parity(sources, settings, progress=lambda line: print(line, file=sys.stderr))
    print(format_table(record))
    written = write_views(record, json_path=args.json, junit=args.junit, markdown=args.markdown, png=args.png)
    if args.png and str(args.png) not in written:
        say_note("no PNG: matplotlib is not installed (pip install 't2t-edge[plot]')")
    if written:
        print(f"wrote {', '.join(written)}")
    return 0 if record.passed else 1


def _parity_model(args: argparse.Namespace) -> int:
    from t2tedge.harness.parity import format_report, run_parity, write_report

    runtimes = comma_list(args.runtimes or "torch,onnxruntime")
    precision = args.precision or "fp32"
    if precision != "int8" and (args.calib is not None or args.num_calib is not None):
        raise UsageError("--calib and --num-calib go with --precision int8")
    load_options = load_options_by_target(args, runtimes)
    if args.json:
        ensure_writable_file(args.json, "--json", suffix=".json")
    num_classes = args.num_classes or 1000
    if args.onnx:
        from t2tedge.export.onnx_export import check_onnx_fits

        say_note(check_onnx_fits(args.onnx, args.model, num_classes, force=args.force))
    checkpoint = resolve_checkpoint(args.model, args.checkpoint)
    report = run_parity(args.model, runtimes, args.data, n=args.limit, batch=args.batch or 1, checkpoint=checkpoint,
                        onnx_path=args.onnx, threads=args.threads, load_options=load_options,
                        num_classes=num_classes, precision=precision, calib=args.calib,
                        num_calib=args.num_calib or DEFAULT_NUM_CALIB)
    print(format_report(report))
    if args.json:
        write_report(report, args.json)
    return 0 if report["passed"] else 1


def cmd_quantize(args: argparse.Namespace) -> int:
    from t2tedge.export.onnx_export import check_onnx_fits
    from t2tedge.quantize import QuantConfig, preset
    from t2tedge.quantize.pipeline import QuantizeSettings, SearchSettings
    from t2tedge.targets.onnx_fed import publish_quantized

    searching = args.sensitivity or bool(args.target_agreement)
    for flag, value in (("--max-float", args.max_float), ("--num-heldout", args.num_heldout)):
        if value is not None and not searching:
            raise UsageError(f"{flag} goes with --sensitivity or --target-agreement; without a search nothing reads it")
    if args.max_float is not None and not args.target_agreement:
        raise UsageError("--max-float bounds --target-agreement's search; add --target-agreement FRACTION")
    if args.config:
        config = QuantConfig.load(args.config)
    else:
        config = preset(args.target, args.method, args.per_channel, args.weight_rounding, args.bias_correction)
    if args.onnx is not None:
        say_note(check_onnx_fits(args.onnx, args.model, args.num_classes, force=args.force))
    ensure_writable_dir(args.out)
    checkpoint = None if args.onnx is not None else resolve_checkpoint(args.model, args.checkpoint)
    search = SearchSettings(sensitivity=args.sensitivity or bool(args.target_agreement),
                            target_agreement=args.target_agreement, max_float=args.max_float,
                            num_heldout=args.num_heldout or 200)
    settings = QuantizeSettings(calib=args.calib, num_calib=args.num_calib, seed=args.seed, target=args.target,
                                onnx_path=args.onnx, checkpoint=checkpoint,
                                keep_float=tuple(comma_list(args.exclude)) if args.exclude else (), search=search,
                                int8_products=args.int8_products, sqnr_threshold=args.sqnr_threshold)
    out, report = publish_quantized(args.model, config, args.out, settings, **class_override(args))
    cache = report.trt_calibration_cache
    print(f"wrote {out} ({len(report.quantized_nodes)} nodes quantized, {len(report.float_nodes)} kept float), "
          f"{out.with_suffix('.json')}" + (f" and {cache.path} (for TensorRT 10 only: TensorRT 11 builds {out.name})"
                                           if cache else ""))
    return 0


def cmd_check_trt(args: argparse.Namespace) -> int:
    from t2tedge.quantize.tensorrt_checks import check_tensorrt_file

    if args.limit is not None and args.data is None:
        raise UsageError("--limit counts the --data images the fp16 range check reads; add --data DIR")
    check_image_folder(args.data, "--data", "image folder not found")
    report = check_tensorrt_file(args.onnx, args.data, args.limit or 16)
    for line in report.errors:
        print(f"error: {line}")
    for line in report.warnings:
        print(f"warning: {line}")
    types = ", ".join(f"{count} {name}" for name, count in report.float_types.items()) or "none"
    print(f"float initializers: {types}")
    checked = (f"on {report.checked_images} images of {args.data}" if report.checked_images
               else "initializers only; --data DIR checks activations on real images")
    for line in report.fp16_hazards:
        print(f"fp16 hazard: {line}")
    print(f"fp16 range ({checked}): {len(report.fp16_hazards)} hazard(s)"
          + ("; t2tedge export tensorrt --precision fp16 keeps those nodes fp32" if report.fp16_hazards else ""))
    print(f"{args.onnx}: {'OK' if report.ok else 'NOT READY'} for TensorRT ({len(report.errors)} errors, "
          f"{len(report.warnings)} warnings, {report.qdq_pairs} quantized tensors)")
    return 0 if report.ok else 1


def profile_parser(sub) -> None:
    from t2tedge.targets import targets

    suffixes = ", ".join(f"{'/'.join(t.suffixes)}: {t.name}" for t in targets().values() if not t.reference)
    p = sub.add_parser(
        "profile", help="latency protocol (and accuracy with --data) for one artifact on this host",
        description=f"Measure an exported artifact with its runtime, chosen from the suffix ({suffixes}): "
                    "warm-up, then --runs timed batch-1 runs (min/p50/p90/p99/mean) and batch-8 throughput. "
                    "Writes a profile record (schema t2tedge.profile/1: one Table 4 cell and the "
                    "machine) that `t2tedge table4 --merge` takes. With --ops: load and first-inference time, "
                    "peak memory, then every op's time from the runtime's own profiler (ONNX Runtime, OpenVINO, "
                    "ExecuTorch; TensorRT on a GPU) mapped to model blocks, op types and precisions (schema "
                    "t2tedge.op-profile/1, with .md and .png views). --compare A.json B.json puts two such records "
                    "side by side, per block.")
    p.add_argument("artifact", type=Path, nargs="?")
    p.add_argument("--ops", action="store_true",
                   help="per-op and per-block times, start-up and peak memory (the runtime's own profiler)")
    p.add_argument("--compare", type=Path, nargs=2, metavar=("A.json", "B.json"),
                   help="compare two --ops records (fp32 vs INT8, runtime vs runtime, two machines)")
    p.add_argument("--runtime", help="override the runtime chosen from the suffix (e.g. openvino or tensorrt for "
                                      "an .onnx)")
    p.add_argument("--model", help="model name, when the artifact carries no t2tedge metadata")
    p.add_argument("--data", type=Path, help="labelled images: also measure top-1/top-5")
    p.add_argument("--limit", type=at_least(1), help="first N images of --data")
    p.add_argument("--runs", type=at_least(1), default=50, help="timed batch-1 runs (default: %(default)s)")
    p.add_argument("--warmup", type=at_least(0), default=10, help="untimed runs first (default: %(default)s)")
    p.add_argument("--threads", type=at_least(1))
    load_option_args(p)
    force_arg(p)
    p.add_argument("--out", type=Path, default=Path("results/profile"),
                   help="a .json file, or a folder for <artifact>_<runtime>.json (default: %(default)s)")
    p.set_defaults(func=cmd_profile)


def parity_parser(sub) -> None:
    from t2tedge.harness.file_parity import PAIRINGS

    p = sub.add_parser(
        "parity", help="compare exported files (or runtimes on one model) on the same real images; exit 1 past "
                       "tolerance",
        description="File form, for CI on the files you ship: t2tedge parity FILE FILE... [--reference MODEL.TAG]. "
                    "Each file (.onnx, OpenVINO .xml, .tflite, .pte; .mlpackage on macOS, .engine on an NVIDIA "
                    "machine) runs as it is on disk through its runtime, on --limit images preprocessed as the "
                    "files' stamps say; every pair is compared, and each file against the PyTorch reference when "
                    "--reference is given, within the tolerance of the pair's precisions (docs/parity.md). Files "
                    "whose runtime is not here are listed as skipped. --blocks (and any pair past its tolerance) "
                    "compares the pairs block by block and names the first block where they part ways. Exit 1 when "
                    "a pair breaks its tolerance. Model form: t2tedge parity MODEL --runtimes torch,onnxruntime,... "
                    "exports the files itself.")
    p.add_argument("model", nargs="+", metavar="FILE|MODEL",
                   help="two or more exported files (or one with --reference); or one model name (model form)")
    files = p.add_argument_group("file form")
    files.add_argument("--reference", metavar="MODEL[.TAG]",
                       help="also compare every file with this PyTorch model (its weights: the tag's, or --checkpoint)")
    files.add_argument("--blocks", action="store_true",
                       help="compare every pair block by block (module paths: tokens_to_token.attention1, blocks.3, "
                            "features.7...); pairs past their tolerance always are")
    files.add_argument("--block-images", type=at_least(1), metavar="N",
                       help="images the block comparison runs on (default: 16)")
    files.add_argument("--pairs", choices=PAIRINGS,
                       help="all: every pair of files (default); reference: each file against --reference only; "
                            "runtime: the files of each runtime against each other (fp32 vs int8), and the reference")
    files.add_argument("--tolerance", metavar="[KEY:]METRIC=VALUE,...",
                       help="override bounds, e.g. int8:cosine=0.97 or top1_agreement=0.95 (KEY: fp32, fp16, bf16, "
                            "w8, int8, int8_vs_int8)")
    files.add_argument("--seed", type=at_least(0), help="seed of the image draw (default: 0)")
    files.add_argument("--junit", type=Path, metavar="PATH.xml", help="JUnit XML report, one test case per pair")
    files.add_argument("--markdown", type=Path, metavar="PATH.md",
                       help="Markdown summary (also appended to $GITHUB_STEP_SUMMARY when set)")
    files.add_argument("--png", type=Path, metavar="PATH.png", help="with --blocks: SQNR per block, one line per pair")
    model = p.add_argument_group("model form")
    model.add_argument("--runtimes", help="comma list; the first is the reference (default: torch,onnxruntime)")
    model.add_argument("--batch", type=at_least(1), help="batch size fed to each runtime (default: 1)")
    model.add_argument("--onnx", type=Path, help="use this ONNX file for ONNX-consuming runtimes instead of exporting")
    model.add_argument("--precision", choices=("fp32", "int8"),
                       help="fp32 files (default), or each runtime's INT8 file of one quantization plan, compared pairwise")
    model.add_argument("--calib", type=Path, metavar="DIR",
                       help="int8: calibration images for the plan (default: ../shared/data/imagenet-sample)")
    model.add_argument("--num-calib", type=at_least(1), metavar="N",
                       help=f"int8: calibration images drawn (default: {DEFAULT_NUM_CALIB})")
    model.add_argument("--num-classes", type=at_least(1),
                       help="classifier size of the checkpoint, for fine-tunes on other label sets (default: 1000)")
    p.add_argument("--checkpoint", metavar="PATH|random",
                   help="weights of the model (model form) or of --reference (file form); default: the tag's, or the "
                        "model's real weights where known")
    p.add_argument("--data", type=Path, default=DEFAULT_EVAL_DATA, help="image folder (default: %(default)s)")
    p.add_argument("--limit", type=at_least(1), default=64, help="number of images (default: %(default)s)")
    p.add_argument("--threads", type=at_least(1))
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the report as JSON")
    load_option_args(p)
    force_arg(p)
    p.set_defaults(func=cmd_parity)


def quantize_parser(sub) -> None:
    from t2tedge.quantize.config import (BIAS_CORRECTIONS, CALIBRATION_METHODS, INT8_PRODUCTS, QUANTIZATION_TARGETS,
                                        WEIGHT_ROUNDINGS)

    p = sub.add_parser("quantize", help="post-training INT8 (QDQ ONNX) calibrated on real images")
    p.add_argument("model")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--onnx", type=Path, help="quantize this fp32 ONNX export")
    source.add_argument("--checkpoint", metavar="PATH|random", help="export these weights first (see `export onnx`)")
    p.add_argument("--calib", type=Path, default=shared_path("data", "imagenet-sample"),
                   help="calibration images, disjoint from evaluation data (default: %(default)s)")
    p.add_argument("--num-calib", type=at_least(1), default=DEFAULT_NUM_CALIB,
                   help="calibration images drawn with --seed (default: %(default)s)")
    p.add_argument("--seed", type=at_least(0), default=0)
    p.add_argument("--method", choices=CALIBRATION_METHODS, default="mse",
                   help="activation range calibration; mse picks, per tensor, the clipping range with the least "
                        "int8 error (measured best on MobileNetV1/V2 and T2T-ViT-7, see docs/quantization.md) (default: %(default)s)")
    granularity = p.add_mutually_exclusive_group()
    granularity.add_argument("--per-channel", dest="per_channel", action="store_true", default=True,
                             help="per-channel symmetric int8 weights (default)")
    granularity.add_argument("--per-tensor", dest="per_channel", action="store_false", help="per-tensor weights")
    p.add_argument("--weight-rounding", choices=WEIGHT_ROUNDINGS, default="gptq",
                   help="gptq rounds each layer's int8 weights against its real calibration inputs so rounding "
                        "errors cancel in the layer's output (MobileNetV1 agreement 95.9%% -> 97.8%%, see docs/quantization.md); "
                        "nearest rounds every weight on its own (default: %(default)s)")
    p.add_argument("--bias-correction", choices=BIAS_CORRECTIONS, default="auto",
                   help="move each quantized layer's bias by the mean shift that quantizing its inputs causes, "
                        "layer by layer on the calibration images (MobileNetV1 SQNR +3.2 dB, see docs/quantization.md); auto "
                        "keeps it only where it raises logits SQNR on those images by 0.5 dB (default: %(default)s)")
    p.add_argument("--target", choices=QUANTIZATION_TARGETS, default="onnxruntime",
                   help="onnxruntime: uint8 asymmetric activations, int32 biases (ORT's fast x86 path); openvino: the "
                        "same choices, measured best for OpenVINO's int8 kernels too (attention MatMuls stay float; "
                        "docs/openvino.md), written as MODEL_int8_openvino.onnx; tensorrt: symmetric int8 activations, "
                        "float biases, as TensorRT's explicit quantization requires (default: %(default)s)")
    p.add_argument("--exclude", metavar="OP_TYPES|NODE_NAMES",
                   help="comma list kept in float: ONNX op types (MatMul) or node names / fnmatch patterns")
    p.add_argument("--config", type=Path, help="a QuantConfig JSON (global, per-op-type, per-node-name settings)")
    p.add_argument("--int8-products", choices=INT8_PRODUCTS,
                   help="products of two activations in int8: none keeps them float (the preset: on ONNX Runtime "
                        "and OpenVINO they gain conversions and no time, docs/quantization.md); attention: those "
                        "next to a Softmax (q.k^T, attention.v); all: the Performer's too (default: the preset's "
                        "none, or what --config says)")
    p.add_argument("--sensitivity", action="store_true",
                   help="score every quantizable node (left in float alone) on held-out images; report sorted")
    p.add_argument("--target-agreement", type=fraction(open_low=True), metavar="FRACTION",
                   help="keep the most sensitive nodes in float until top-1 agreement with fp32 reaches this "
                        "(e.g. 0.99); implies --sensitivity")
    p.add_argument("--max-float", type=at_least(0), metavar="N",
                   help="at most N nodes kept float by --target-agreement (default: 10%% of quantizable nodes)")
    p.add_argument("--num-heldout", type=at_least(1),
                   help="held-out images from --calib (disjoint from calibration) for scoring; near 99%% agreement "
                        "200 images give a standard error of about 0.9%%, 500 about 0.5%% (default: 200)")
    p.add_argument("--sqnr-threshold", type=float, default=10.0, metavar="DB",
                   help="flag layers whose output SQNR vs fp32 (cumulative, on held-out images) is below this "
                        "(default: %(default)s)")
    num_classes_arg(p)
    force_arg(p)
    p.add_argument("--out", type=Path, default=Path("artifacts/int8"), help="output folder (default: %(default)s)")
    p.set_defaults(func=cmd_quantize)


def check_trt_parser(sub) -> None:
    p = sub.add_parser("check-trt", help="list what TensorRT's ONNX parser and INT8 Q/DQ fusion would reject",
                       description="Checks an ONNX file on the CPU for TensorRT: ops its parser rejects, Q/DQ it cannot "
                                   "fuse, the graph's float types, and fp16 range hazards (initializers beyond "
                                   "65504; with --data, activations near it on real images). Exit 1 when not ready.")
    p.add_argument("onnx", type=Path)
    p.add_argument("--data", type=Path, metavar="DIR", help="real images to read activation ranges on (fp16 hazards)")
    p.add_argument("--limit", type=at_least(1), metavar="N", help="images of --data read (default: 16)")
    p.set_defaults(func=cmd_check_trt)
