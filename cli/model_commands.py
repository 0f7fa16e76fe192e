"""`t2tedge list | info | eval | train | runtimes`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from t2tedge.cli.options import (
    DEFAULT_EVAL_DATA,
    at_least,
    checkpoint_arg,
    force_arg,
    fraction,
    non_negative_float,
    load_option_args,
    load_options_by_target,
    positive_float,
    resolve_checkpoint,
    say_note,
)
from t2tedge.errors import UsageError
from t2tedge.fileio import ensure_writable_file, temp_staging_dir


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
        print(f"  {'':<28}{'here' if tag.present() else 'not here yet'}: {tag.origin()}")
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
        _check_json_path(args.json)
        _write_json(args.json, info)
        if str(args.json) == "-":
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
    from t2tedge.harness.artifacts import artifact_for
    from t2tedge.harness.evaluate import evaluate
    from t2tedge.models import get_spec
    from t2tedge.targets import get_target

    spec = get_spec(args.model)
    target = get_target(args.runtime or ("onnxruntime" if args.onnx else "torch"))
    load_options = load_options_by_target(args, [target.name]).get(target.name, {})
    if args.json:
        _check_json_path(args.json)
    if args.onnx:
        if args.checkpoint is not None:
            raise UsageError("--onnx files hold their weights; drop --checkpoint")
        if target.reference:
            raise UsageError(f"--onnx needs a runtime that runs ONNX files, not {target.name}; "
                             f"use --runtime onnxruntime (or openvino, tensorrt)")
        say_note(check_onnx_fits(args.onnx, args.model, args.num_classes, force=args.force))
    checkpoint = None if args.onnx else resolve_checkpoint(args.model, args.checkpoint)  # the file has its weights
    samples = discover(args.data, num_classes=args.num_classes)
    if args.limit:
        samples = samples[: args.limit]
    with temp_staging_dir("eval") as tmp:
        artifact = artifact_for(target, args.model, checkpoint, Path(tmp), onnx_path=args.onnx,
                                num_classes=args.num_classes)
        runtime = target.load(artifact, threads=args.threads, **load_options)
        result = evaluate(runtime, samples, spec.preprocess, batch=args.batch, progress=f"eval {args.model}")
    report = {"model": args.model, "runtime": runtime.describe().to_dict(), "data": str(args.data),
              "checkpoint": str(checkpoint) if checkpoint else "untrained (random init)", **result.to_dict()}
    if args.onnx:
        del report["checkpoint"]
        report["onnx"] = str(args.onnx)
    _write_json(args.json, report)
    if str(args.json) != "-":
        print(f"{args.model} on {target.name}: top-1 {100 * result.top1:.2f}%  top-5 {100 * result.top5:.2f}%  "
              f"({result.images} images from {args.data})" + (f"; wrote {args.json}" if args.json else ""))
    return 0


def _check_json_path(path: Path) -> None:
    if str(path) != "-":
        ensure_writable_file(path, "--json", suffix=".json")


def _write_json(path: Path | None, data: dict) -> None:
    """`--json PATH` means the same on every command: write the report there; `-` is standard output."""
    if path is None:
        return
    text = json.dumps(data, indent=2) + "\n"
    if str(path) == "-":
        print(text, end="")
    else:
        from t2tedge.fileio import atomic_write_text

        atomic_write_text(path, text)


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


def cmd_runtimes(args: argparse.Namespace) -> int:
    from t2tedge.targets import targets

    print(f"{'target':<13}{'files':<16}{'builds':<20}runs here")
    for target in targets().values():
        reason = target.unavailable_reason()
        builds = ",".join(target.builds) + (" (reference)" if target.reference else "")
        print(f"{target.name:<13}{' '.join(target.suffixes):<16}{builds:<20}"
              f"{'yes' if reason is None else 'no: ' + reason}")
    return 0


def models_parser(sub) -> None:
    p = sub.add_parser("list", help="list the registered models")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="params, MACs and preprocessing of a model")
    p.add_argument("model")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the facts as JSON to PATH ('-': print "
                                                              "only the JSON)")
    p.set_defaults(func=cmd_info)


def eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="top-1/top-5 accuracy on a labelled image folder")
    p.add_argument("model")
    checkpoint_arg(p)
    p.add_argument("--data", type=Path, default=DEFAULT_EVAL_DATA,
                   help="ImageFolder, flat wnid_*.JPEG or flat ImageNet val folder (default: %(default)s)")
    p.add_argument("--runtime", help="runtime to evaluate on (default: onnxruntime with --onnx, else torch)")
    p.add_argument("--onnx", type=Path, help="evaluate this ONNX file (fp32 or INT8 QDQ) instead of exporting one")
    p.add_argument("--num-classes", type=at_least(1), default=1000,
                   help="classifier size; other than 1000, class folders are labelled in sorted order")
    p.add_argument("--limit", type=at_least(1), help="only the first N images")
    p.add_argument("--batch", type=at_least(1), default=32)
    p.add_argument("--threads", type=at_least(1), help="intra-op threads (default: all cores)")
    load_option_args(p)
    force_arg(p)
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the report as JSON to PATH ('-': print only "
                                                              "the JSON)")
    p.set_defaults(func=cmd_eval)


def train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model from scratch on an ImageFolder (checkpoint in release format)")
    p.add_argument("model")
    p.add_argument("--data", type=Path, required=True, help="training folder <class>/<image>; classes in sorted order")
    p.add_argument("--val", type=Path, help="validation folder, evaluated after every epoch")
    p.add_argument("--epochs", type=at_least(1), default=100)
    p.add_argument("--img-size", type=at_least(32), default=224)
    p.add_argument("--batch", type=at_least(1), default=64)
    p.add_argument("--lr", type=positive_float, default=1e-3, help="peak AdamW learning rate (default: %(default)s)")
    p.add_argument("--warmup-epochs", type=at_least(0), default=5)
    p.add_argument("--label-smoothing", type=fraction(open_high=True), default=0.1)
    p.add_argument("--weight-decay", type=non_negative_float, default=0.05)
    p.add_argument("--mixup", type=non_negative_float, default=0.0, help="mixup alpha; 0 disables (default)")
    p.add_argument("--cutmix", type=non_negative_float, default=0.0,
                   help="CutMix alpha; 0 disables (default). With --mixup too, each batch uses one of the two")
    p.add_argument("--color-jitter", type=fraction(), default=0.0,
                   help="brightness/contrast/saturation factors drawn from [1-s, 1+s]; 0 disables (default)")
    p.add_argument("--random-erase", type=fraction(), default=0.0,
                   help="probability of erasing one random rectangle per image (timm's 'pixel' mode)")
    p.add_argument("--drop-path", type=fraction(open_high=True), default=0.1, help="stochastic depth rate for T2T-ViT")
    p.add_argument("--ema-decay", type=fraction(open_high=True), default=0.0, help="keep an EMA of weights (saved as state_dict_ema)")
    p.add_argument("--amp", action="store_true", help="mixed precision on CUDA")
    p.add_argument("--seed", type=at_least(0), default=0)
    p.add_argument("--workers", type=at_least(1), default=2, help="image decoding threads")
    p.add_argument("--preload", type=at_least(1), metavar="SIZE",
                   help="decode every training image once at SIZExSIZE and crop batches on the training device "
                        "(keeps a GPU fed; 9469 images at 192 px hold 1 GB). Default: decode per image per epoch")
    p.add_argument("--eval-every", type=at_least(1), default=1, help="evaluate --val every N epochs (and after the last)")
    p.add_argument("--save-every", type=at_least(1), default=1,
                   help="write the resumable checkpoint every N epochs (and after the last)")
    p.add_argument("--max-steps", type=at_least(1), help="cap steps per epoch (smoke tests)")
    p.add_argument("--limit", type=at_least(1), help="train on an evenly spread subset of N images")
    p.add_argument("--out", type=Path, help="checkpoint path (default: artifacts/train/MODEL_DATASET.pth)")
    p.add_argument("--no-resume", action="store_true", help="start over even if --out exists")
    p.add_argument("--fp16", action="store_true", help="also write a compact fp16 release file beside --out")
    p.set_defaults(func=cmd_train)


def runtimes_parser(sub) -> None:
    p = sub.add_parser("runtimes", help="list the targets: their files, the precisions they build, and whether they "
                                        "run here")
    p.set_defaults(func=cmd_runtimes)
