"""Fetch a model's official release checkpoint into the user cache, checked by sha256."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from t2tedge.errors import CheckpointError, T2TEdgeError
from t2tedge.fileio import atomic_path, atomic_write_text, sha256_file


def cache_dir() -> Path:
    """$T2TEDGE_CACHE, else $XDG_CACHE_HOME/t2tedge, else ~/.cache/t2tedge."""
    if os.environ.get("T2TEDGE_CACHE"):
        return Path(os.environ["T2TEDGE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "t2tedge"


def fetch_official(name: str, timeout: float = 60.0) -> Path:
    """The cached official checkpoint of `name`, downloading it on first use.

    Where the registry pins a sha256 the file must match it; otherwise the digest seen at first download
    is recorded beside the file and every later use must match that (a changed or damaged cache fails).
    """
    from t2tedge.models.registry import get_spec

    spec = get_spec(name)
    if not spec.release_url:
        raise T2TEdgeError(f"{name} has no official release file; pass --checkpoint PATH or --checkpoint random")
    target = cache_dir() / spec.release_url.rsplit("/", 1)[-1]
    digest_file = target.with_name(target.name + ".sha256")
    if not target.is_file():
        _download(spec.release_url, target, timeout)
    digest = sha256_file(target)
    expected = spec.release_sha256 or (digest_file.read_text().strip() if digest_file.is_file() else None)
    if expected and digest != expected:
        raise CheckpointError(f"{target} has sha256 {digest[:16]}..., expected {expected[:16]}...; "
                              f"delete it to download again")
    if not digest_file.is_file():
        atomic_write_text(digest_file, digest + "\n")
    return target


def _download(url: str, target: Path, timeout: float) -> None:
    from tqdm import tqdm

    hint = "pass CHECKPOINT=/path/to/file (--checkpoint), or WEIGHTS=random (--checkpoint random) for untrained weights"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, atomic_path(target) as tmp:
            total = int(response.headers.get("Content-Length") or 0) or None
            with open(tmp, "wb") as handle, tqdm(total=total, unit="B", unit_scale=True,
                                                 desc=f"download {target.name}") as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    handle.write(block)
                    bar.update(len(block))
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise T2TEdgeError(f"cannot download {url} ({reason}); {hint}") from None
