"""Atomic file writes: an artifact is either complete at its destination or absent."""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from t2tedge.errors import UsageError

# Every temporary file or folder of ours starts with this, the owning process id and a tag of its host, so the next
# run on the same folder can tell one left behind by a process that is gone (kill -9, a power cut) and remove it. On
# storage that several hosts share (a cluster's artifacts), another host's process ids mean nothing here: only the
# host that owns a staging folder judges it.
STAGING_PREFIX = ".t2tedge-staging-"


def hostname_digest() -> str:
    """A stable, non-reversible tag of this host's name. Python's hash() of a str is salted per process, which made
    one host look like a new machine in every run and broke `table4 --merge` and the fp32-reference lookup."""
    return hashlib.sha256(platform.node().encode()).hexdigest()[:12]


HOST_TAG = hostname_digest()


def staging_prefix(name: str) -> str:
    """The start of a staging name of this process: `.t2tedge-staging-PID@HOST-NAME.`"""
    return f"{STAGING_PREFIX}{os.getpid()}@{HOST_TAG}-{name}."


def _owner_alive(path: Path) -> bool:
    owner = path.name[len(STAGING_PREFIX):].split("-", 1)[0]
    pid_text, _, host = owner.partition("@")
    if host and host != HOST_TAG:
        return True  # another host's, on shared storage: that host's runs clean it up
    try:
        pid = int(pid_text)
    except ValueError:
        return True  # not named by us after all: leave it
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_staging(folder: str | os.PathLike) -> list[Path]:
    """Remove the staging files and folders of ours in `folder` whose process is gone; returns what was removed."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for path in folder.glob(f"{STAGING_PREFIX}*"):
        if _owner_alive(path):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


@contextlib.contextmanager
def staging_dir(parent: str | os.PathLike, name: str = "work") -> Iterator[Path]:
    """A staging folder of ours inside `parent` (an output folder, or the temp folder), removed on any exit we
    control; one a killed process left behind is removed by the next `remove_stale_staging` of `parent`."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=staging_prefix(name), dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def temp_staging_dir(name: str):
    """`staging_dir` in the system temp folder, for work with no output folder (eval, parity), after removing what
    killed runs left there."""
    remove_stale_staging(tempfile.gettempdir())
    return staging_dir(tempfile.gettempdir(), name)


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `destination`; rename it into place only on success."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=staging_prefix(destination.name), suffix=suffix or ".tmp",
                               dir=destination.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.is_file():
            # mkstemp makes private files; an artifact gets the permissions a plain open() would give it.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, destination)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(destination: str | os.PathLike, data: bytes) -> None:
    with atomic_path(destination) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(destination: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(destination, text.encode("utf-8"))


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_dir(destination: str | os.PathLike) -> Iterator[Path]:
    """Yield a path for a directory artifact (an .mlpackage) beside `destination`; swap it in only on success.

    A previous artifact at `destination` stays in place until the new one is complete.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=staging_prefix(destination.name), dir=destination.parent))
    tmp_path = staging / destination.name
    retired = None
    try:
        yield tmp_path
        if not tmp_path.exists():
            raise FileNotFoundError(f"nothing was written to {tmp_path}")
        if destination.exists():
            retired = staging / f"{destination.name}.old"
            os.replace(destination, retired)
        os.replace(tmp_path, destination)
    except BaseException:
        if retired is not None and retired.exists() and not destination.exists():
            os.replace(retired, destination)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def ensure_writable_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """Prove that `path` is, or can be made, a folder to write in, before any work is done: an --out that is a
    file, lies under a file, is read-only or in /proc fails now, in one line, not after an hour. Nothing is
    created: the nearest existing folder on the way is probed with a file that is removed at once."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{option} {folder} is a file, not a folder; name a folder")
    remove_stale_staging(folder)
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{option} {folder} is not a writable folder ({existing} is a file); choose another")
    try:
        fd, probe = tempfile.mkstemp(prefix=".t2tedge-write-test.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"{option} {folder} is not a writable folder ({exc.strerror or exc}); "
                         f"choose another") from None
    return folder


def ensure_writable_file(path: str | os.PathLike, option: str = "--out", suffix: str | None = None) -> Path:
    """The same check for an output that is one file: its folder must be writable and it must not be a folder."""
    target = Path(path)
    if suffix and not target.name.endswith(suffix):
        raise UsageError(f"{option} {target} must end in {suffix}")
    if target.is_dir():
        raise UsageError(f"{option} {target} is a folder; name a file")
    ensure_writable_dir(target.parent if str(target.parent) else Path("."), option)
    return target


def publish_together(staged: dict[Path, Path]) -> None:
    """Move each staged file (key) onto its destination (value), all or none: a destination's previous file is
    put back if a later move fails. Staged files must lie on the destination's file system (renames only)."""
    done: list[tuple[Path, Path, Path | None]] = []  # (staged, destination, backup) of each file moved in
    try:
        for source, destination in staged.items():
            backup = None
            if destination.exists():
                backup = source.with_name(source.name + ".previous")
                os.replace(destination, backup)
            try:
                os.replace(source, destination)
            except BaseException:
                if backup is not None:
                    os.replace(backup, destination)
                raise
            done.append((source, destination, backup))
    except BaseException:
        for source, destination, backup in reversed(done):
            os.replace(destination, source)
            if backup is not None:
                os.replace(backup, destination)
        raise
    for _, _, backup in done:
        if backup is not None:
            backup.unlink()
