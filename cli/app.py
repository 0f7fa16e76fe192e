"""The parser that gathers every command, and `main`: one line per error, exit codes, SIGTERM."""

from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path
from typing import Sequence

from t2tedge import __version__
from t2tedge.cli.export_commands import export_parser
from t2tedge.cli.measure_commands import (
    check_trt_parser,
    parity_parser,
    profile_parser,
    quantize_parser,
)
from t2tedge.cli.model_commands import (
    eval_parser,
    models_parser,
    runtimes_parser,
    train_parser,
)
from t2tedge.cli.options import apply_pretrained_tag
from t2tedge.cli.ort_commands import optimize_parser
from t2tedge.cli.table4_commands import table4_parser
from t2tedge.errors import T2TEdgeError, first_line


class _Parser(argparse.ArgumentParser):
    """Usage errors in the one error style of every other error: one line, exit 2. No abbreviated flags: `--n`
    would silently mean `--num-classes`, and a flag means one thing everywhere."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

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

    for add_parsers in (models_parser, eval_parser, export_parser, profile_parser, parity_parser, quantize_parser,
                        optimize_parser, check_trt_parser, train_parser, table4_parser, runtimes_parser):
        add_parsers(sub)
    return parser


# The file-system failures a user can act on, as what happened and what to do; where comes from the error.
_OS_ERRORS = {
    errno.ENOSPC: ("no space left on the device being written", "free space there or write elsewhere (--out); "
                                                                 "nothing half-written was left in place"),
    errno.EACCES: ("permission denied", "write to a folder you may write, or change the file's permissions"),
    errno.EPERM: ("operation not permitted (an immutable or protected file?)",
                  "remove the protection (chattr -i) or write elsewhere (--out)"),
    errno.EROFS: ("the file system is read-only", "write elsewhere (--out)"),
    errno.ENAMETOOLONG: ("a file or folder name is longer than the file system allows", "choose a shorter name"),
}
# What the user typed and the file system cannot take at all: usage (exit 2), not a data error.
_USAGE_ERRNOS = (errno.ENAMETOOLONG,)


def _where(exc: OSError) -> str:
    if not exc.filename:
        return ""
    name = str(exc.filename)
    if exc.errno == errno.ENAMETOOLONG:
        longest = max(Path(name).parts, key=len)
        name = f"{name[:60]}... (a name of {len(longest)} characters)"
    return f" ({name})"


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so every `with` block (temporary folders, staged artifacts) unwinds."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def _interruption(exc: BaseException) -> BaseException | None:
    """The Ctrl-C or SIGTERM behind `exc`, if any: one that lands while a C extension initialises comes back as
    that extension's ImportError ("initialization failed"), with the interruption as its cause."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, (KeyboardInterrupt, Terminated)):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _close_progress_bars() -> None:
    """Close any progress bar still drawn, so the error line starts a line of its own instead of the bar's."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ()) or ()):
        bar.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (usage errors raise SystemExit(2) from the parser, as argparse does)."""
    import signal
    import threading

    args = build_parser().parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        apply_pretrained_tag(args)
        return args.func(args)
    except T2TEdgeError as exc:
        if args.debug:
            raise
        _close_progress_bars()
        print(f"t2tedge: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("t2tedge: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `t2tedge list | head`: the reader has what it wanted; end as a piped Unix tool does
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so flushing at exit cannot fail again
        return 141
    except Terminated:
        print("t2tedge: terminated", file=sys.stderr)
        return 143
    except Exception as exc:  # anything unforeseen still ends in one line unless --debug asks for the traceback
        if args.debug:
            raise
        _close_progress_bars()
        interruption = _interruption(exc)
        if interruption is not None:
            terminated = isinstance(interruption, Terminated)
            print(f"t2tedge: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
            return 143 if terminated else 130
        if isinstance(exc, OSError) and exc.errno in _OS_ERRORS:
            what, advice = _OS_ERRORS[exc.errno]
            print(f"t2tedge: error: {what}{_where(exc)}; {advice}", file=sys.stderr)
            return 2 if exc.errno in _USAGE_ERRNOS else 1
        text = first_line(exc, 300) if str(exc).strip() else ""
        where = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
        print(f"t2tedge: error: {type(exc).__name__}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else text}"
              f"{where}; rerun with `t2tedge --debug ...` for the traceback", file=sys.stderr)
        return 1
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
