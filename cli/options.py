"""What the commands share: argument types and options, and the one weights rule (checkpoint or pretrained tag)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from t2tedge.errors import DataError, UsageError
from t2tedge.paths import shared_path

DEFAULT_EVAL_DATA = shared_path("data", "imagenet-val1300")


def at_least(minimum: int, maximum: int | None = None):
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


def float_where(check, wanted: str):
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


positive_float = float_where(lambda v: 0 < v < float("inf"), "a positive number")
non_negative_float = float_where(lambda v: 0 <= v < float("inf"), "zero or more")


def fraction(open_low: bool = False, open_high: bool = False):
    low, high = ("(0" if open_low else "[0"), ("1)" if open_high else "1]")
    return float_where(lambda v: (v > 0 if open_low else v >= 0) and (v < 1 if open_high else v <= 1),
                        f"in {low}, {high}")


def comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def checkpoint_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", metavar="PATH|random",
                        help="weights: an official T2T-ViT release file or a state dict; 'random' for untrained "
                             "weights. Default: the weights of MODEL.TAG (t2t_vit_7.imagenette; `t2tedge list`); for a "
                             "plain MODEL its real weights in ../shared/weights if any, else seeded random weights.")


def num_classes_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-classes", type=at_least(1), default=1000,
                        help="classifier size of the checkpoint, for fine-tunes on other label sets (default: %(default)s)")


def load_option_args(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """One flag per load option of any registered target (--provider, --precision-hint, --compute-units, ...); the
    target that runs the file refuses those it does not take."""
    from t2tedge.targets import all_load_options

    for option in all_load_options().values():
        if option.name not in skip:
            parser.add_argument(option.flag, dest=option.name, choices=option.choices, help=option.help)


def given_load_options(args: argparse.Namespace) -> dict[str, str]:
    from t2tedge.targets import all_load_options

    return {name: getattr(args, name) for name in all_load_options() if getattr(args, name, None) is not None}


def load_options_by_target(args: argparse.Namespace, runtimes: Sequence[str]) -> dict[str, dict[str, str]]:
    """Each given load option goes to the targets among `runtimes` that take it; one no target there takes is
    refused in one line."""
    from t2tedge.targets import Option, get_target, targets

    chosen = [get_target(name) for name in runtimes]
    by_target: dict[str, dict[str, str]] = {}
    for name, value in given_load_options(args).items():
        takers = [t for t in chosen if any(o.name == name for o in t.load_options)]
        if not takers:
            owners = [t.name for t in targets().values() if any(o.name == name for o in t.load_options)]
            raise UsageError(f"{Option(name, '').flag} is an option of {', '.join(owners)}, not of "
                             f"{', '.join(t.name for t in chosen)}; add {owners[0]} with --runtime(s), or drop it")
        for target in takers:
            target.check_load_options({name: value})
            by_target.setdefault(target.name, {})[name] = value
    return by_target


def force_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true",
                        help="use an artifact whose stamped model, class count or input size differs from the command")


def class_override(args: argparse.Namespace) -> dict[str, int]:
    return {"num_classes": args.num_classes} if args.num_classes not in (None, 1000) else {}


def resolve_checkpoint(model: str, checkpoint: str | None) -> Path | None:
    from t2tedge.models import default_checkpoint

    resolved = default_checkpoint(model, checkpoint)
    if resolved is None:
        from t2tedge.models.pretrained import list_pretrained

        tags = list_pretrained(model)
        print(f"note: {model} uses untrained (random) weights; for real ones pass --checkpoint PATH"
              + (f" or name a pretrained tag: {', '.join(tags)}" if tags else ""), file=sys.stderr)
    return resolved


def apply_pretrained_tag(args: argparse.Namespace) -> None:
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
            if args.num_classes not in (None, 1000, tag.num_classes):
                raise UsageError(f"{tag.name} has {tag.num_classes} classes; drop --num-classes {args.num_classes}")
            args.num_classes = tag.num_classes
        if getattr(args, "checkpoint", "absent") is None:
            args.checkpoint = str(tag.checkpoint())


def say_note(note: str | None) -> None:
    """A library's note to the user (what a command assumes), on stderr beside the result."""
    if note:
        print(note, file=sys.stderr)


def check_image_folder(path: Path | None, flag: str, missing: str) -> None:
    """A folder of images the user named with `flag`: a file there is usage (exit 2), nothing there is data
    (exit 1, `missing: PATH`)."""
    if path is None:
        return
    if path.is_file():
        raise UsageError(f"{flag} {path} is a file, not a folder of images")
    if not path.is_dir():
        raise DataError(f"{missing}: {path}")
