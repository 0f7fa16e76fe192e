"""Fetch a model's official release into the user cache, checked by sha256: the T2T-ViT checkpoints, and the
MobileNets' float release archives, whose TFLite weights are converted into our layout once and cached."""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from t2tedge.errors import CheckpointError, T2TEdgeError
from t2tedge.fileio import atomic_path, atomic_write_text, sha256_file

# Images the converted weights are checked on against the release's own file (deterministic, so a conversion is
# reproducible without any data folder).
CHECK_IMAGES = 3


def cache_dir() -> Path:
    """$T2TEDGE_CACHE, else $XDG_CACHE_HOME/t2tedge, else ~/.cache/t2tedge."""
    if os.environ.get("T2TEDGE_CACHE"):
        return Path(os.environ["T2TEDGE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "t2tedge"


def release_file(name: str) -> Path:
    """Where the release file of `name` is (or will be) cached."""
    from t2tedge.models.registry import get_spec

    return cache_dir() / str(get_spec(name).release_url).rsplit("/", 1)[-1]


def _digest_file(release: Path) -> Path:
    return release.with_name(release.name + ".sha256")


def cached_official(name: str) -> Path | None:
    """The official checkpoint of `name` when an earlier `fetch_official` left it in the cache (its digest recorded,
    and for an archive the converted state dict beside it), checked as `fetch_official` checks it; None otherwise.
    Never downloads or converts."""
    from t2tedge.models.registry import get_spec

    archive = release_file(name)
    digest_file = _digest_file(archive)
    if not (archive.is_file() and digest_file.is_file()):
        return None
    if get_spec(name).release_member and not _converted_path(name, archive, digest_file.read_text().strip()).is_file():
        return None
    return fetch_official(name)


def _converted_path(name: str, archive: Path, digest: str) -> Path:
    return archive.with_name(f"{name}_official_{digest[:12]}.pth")


def fetch_official(name: str, timeout: float = 60.0) -> Path:
    """The cached official checkpoint of `name`, downloading it on first use (for a release archive: our state dict
    converted from its TFLite file, checked against that file's outputs).

    Where the registry pins a sha256 the download must match it before it is kept; otherwise the digest seen at
    first download is recorded beside the file and every later use must match that (a changed or damaged cache
    fails).
    """
    from t2tedge.models.registry import get_spec

    spec = get_spec(name)
    if not spec.release_url:
        raise T2TEdgeError(f"{name} has no official release file; pass --checkpoint PATH or --checkpoint random")
    target = release_file(name)
    digest_file = _digest_file(target)
    if not target.is_file():
        _download(name, spec.release_url, target, timeout, spec.release_sha256)
    digest = sha256_file(target)
    expected = spec.release_sha256 or (digest_file.read_text().strip() if digest_file.is_file() else None)
    if expected and digest != expected:
        raise CheckpointError(f"{target} has sha256 {digest[:16]}..., expected {expected[:16]}...; "
                              f"delete it to download again")
    if not digest_file.is_file():
        atomic_write_text(digest_file, digest + "\n")
    if spec.release_member:
        return _converted(name, target, str(spec.release_member), digest)
    return target


def _download(name: str, url: str, target: Path, timeout: float, expected: str | None) -> None:
    """Stream `url` into `target`, kept only whole (its Content-Length) and with the pinned digest, if any."""
    from tqdm import tqdm

    hint = ("pass --checkpoint PATH (CHECKPOINT=path with make) for weights you have, or --checkpoint random "
            "(WEIGHTS=random) for untrained ones")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, atomic_path(target) as tmp:
            total = int(response.headers.get("Content-Length") or 0) or None
            digest, received = hashlib.sha256(), 0
            with open(tmp, "wb") as handle, tqdm(total=total, unit="B", unit_scale=True,
                                                 desc=f"download {target.name}") as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    handle.write(block)
                    digest.update(block)
                    received += len(block)
                    bar.update(len(block))
            if total is not None and received != total:
                raise CheckpointError(f"the download of {target.name} broke off ({received} of {total} bytes); "
                                      f"nothing was kept, run again")
            if expected and digest.hexdigest() != expected:
                raise CheckpointError(f"{url} has sha256 {digest.hexdigest()[:16]}..., not the {expected[:16]}... "
                                      f"recorded for {name}.official; nothing was kept")
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise T2TEdgeError(f"cannot download {url} for {name}.official ({reason}); {hint}") from None


def _converted(name: str, archive: Path, member: str, digest: str) -> Path:
    """Our state dict of the release archive's float TFLite file, converted once per archive digest."""
    import numpy as np
    import torch

    from t2tedge.models.registry import create_model, get_spec
    from t2tedge.models.tflite_weights import state_dict_from_tflite, verify_against_tflite

    converted = _converted_path(name, archive, digest)
    if converted.is_file():
        return converted
    with tempfile.TemporaryDirectory(prefix=".t2tedge-release-", dir=archive.parent) as scratch:
        try:
            with tarfile.open(archive) as tar:
                found = [m for m in tar.getmembers() if m.isfile() and Path(m.name).name == member]
                if not found:
                    raise CheckpointError(f"{archive.name} holds no {member}; it is not the release archive of {name}")
                tar.extract(found[0], scratch, filter="data")
                tflite = Path(scratch) / found[0].name
        except (tarfile.TarError, EOFError, OSError) as exc:
            archive.unlink(missing_ok=True)  # a cache is disposable: the next use downloads it again
            _digest_file(archive).unlink(missing_ok=True)
            raise CheckpointError(f"{archive.name} was damaged ({exc}) and is removed; run again to download "
                                  f"it again") from None
        model = create_model(name)
        model.load_state_dict(state_dict_from_tflite(model, tflite))
        crop = get_spec(name).preprocess.crop
        images = np.random.default_rng(0).uniform(-1, 1, (CHECK_IMAGES, 3, crop, crop)).astype(np.float32)
        verify_against_tflite(model, tflite, images)
        with atomic_path(converted, suffix=".pth") as tmp:
            torch.save(model.state_dict(), tmp)
    return converted
