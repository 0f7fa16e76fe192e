"""Errors the command line reports as one line and a non-zero exit code."""

import importlib
import importlib.util


class T2TEdgeError(Exception):
    """A user-facing failure: bad input, missing data or a missing runtime."""

    exit_code = 1


class UsageError(T2TEdgeError):
    """Options that do not go together; argparse's own usage errors exit 2 as well."""

    exit_code = 2


class CheckpointError(T2TEdgeError):
    """A checkpoint that cannot be read or does not fit the model."""


class DataError(T2TEdgeError):
    """An image or dataset that cannot be read."""


class RuntimeUnavailable(T2TEdgeError):
    """An optional runtime (Core ML, TensorRT, ...) is not installed or cannot run here."""

    exit_code = 2


class OpTimingUnavailable(T2TEdgeError):
    """`t2tedge profile --ops` on a runtime whose library reports no per-op times."""

    exit_code = 2


class BlocksUnavailable(T2TEdgeError):
    """`t2tedge parity --blocks` on a runtime that exposes no block outputs."""


def first_line(exc: BaseException, limit: int = 200, text: str | None = None) -> str:
    """The first non-empty line of `exc`'s message (or of `text`, a cleaned copy of it), at most `limit`
    characters; the exception's type name when there is none. Third-party libraries raise with pages of context
    (MLIR, C++ traces), and our errors are one line."""
    lines = [line.strip() for line in (str(exc) if text is None else text).splitlines() if line.strip()]
    return lines[0][:limit] if lines else type(exc).__name__


def native_message(exc: BaseException, limit: int = 200) -> str:
    """The line of a native library's exception that says what went wrong: OpenVINO's and other C++ messages start
    with where they were thrown ("Exception from src/inference/src/cpp/core.cpp:84:", "Check '...' failed at
    ...:900:") and say why on a later line ("Incorrect weights in bin file!")."""
    import re

    boilerplate = re.compile(r"^(Exception from \S+:\d+:?|Check '.*' failed at \S+:\d+:?)$")
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not boilerplate.match(line)]
    return (useful[0] if useful else lines[0] if lines else type(exc).__name__)[:limit]


def missing_package(module: str, install: str) -> str | None:
    """None when `module` imports; otherwise the one line that says how to install it (`install`: the pip
    argument, e.g. "'t2t-edge[openvino]'")."""
    try:
        importlib.import_module(module)
    except ImportError:
        return f"{module} is not installed (pip install {install})"
    return None


def require_installed(module: str, install: str) -> None:
    """Like `require_package`, without importing `module`: for packages whose import is slow or prints (litert-torch
    loads torchao and writes absl logs), checked before the work starts and imported later, quietly."""
    if importlib.util.find_spec(module) is None:
        raise RuntimeUnavailable(f"{module} is not installed (pip install {install})")


def require_package(module: str, install: str) -> None:
    reason = missing_package(module, install)
    if reason:
        raise RuntimeUnavailable(reason)
