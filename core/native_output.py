"""Quiet native libraries: converters and runtimes that print pages of logs to the process's stdout/stderr."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Iterator

from t2tedge.fileio import remove_stale_staging, staging_prefix


@contextlib.contextmanager
def native_output_captured() -> Iterator[Path]:
    """Send what native code and Python print to stdout/stderr into a file for the duration: the converter writes
    pages of MLIR and absl lines there. The file is handed to the caller, who reads it when something failed."""
    remove_stale_staging(tempfile.gettempdir())
    with tempfile.NamedTemporaryFile(prefix=staging_prefix("native"), suffix=".log",
                                     delete=False) as log:
        path = Path(log.name)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(path, "wb") as sink:
            for fd in (1, 2):
                os.dup2(sink.fileno(), fd)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    yield path
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                for fd, original in zip((1, 2), saved):
                    os.dup2(original, fd)
    finally:
        for original in saved:
            os.close(original)
        path.unlink(missing_ok=True)
