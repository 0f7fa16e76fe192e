"""Metadata sidecars: for formats with no place for our metadata (LiteRT .tflite, ExecuTorch .pte), a JSON file
beside the artifact, `NAME.EXT.json`, written and moved into place together with it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from t2tedge.errors import T2TEdgeError
from t2tedge.fileio import publish_together

SIDECAR_SUFFIX = ".json"


def sidecar_path(artifact: str | os.PathLike) -> Path:
    return Path(f"{artifact}{SIDECAR_SUFFIX}")


def read_sidecar(artifact: str | os.PathLike) -> dict[str, Any]:
    """The sidecar metadata of one of our artifacts; {} for a file without one (made elsewhere)."""
    path = sidecar_path(artifact)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise T2TEdgeError(f"cannot read {path.name} (metadata of {Path(artifact).name}): {exc}") from None
    if not isinstance(data, dict):
        raise T2TEdgeError(f"{path.name} (metadata of {Path(artifact).name}) is not a JSON object")
    return data


def publish_with_sidecar(staged: Path, destination: Path, metadata: dict[str, Any]) -> Path:
    """Move a staged artifact and its sidecar (written here from `metadata`) into place together: a failure leaves
    an earlier pair as it was."""
    sidecar = staged.with_name(staged.name + SIDECAR_SUFFIX)
    sidecar.write_text(json.dumps(metadata, indent=1, sort_keys=True) + "\n")
    publish_together({staged: destination, sidecar: sidecar_path(destination)})
    return destination


def sidecar_metadata(artifact: str | os.PathLike) -> dict[str, str]:
    """The sidecar as the other formats' metadata read: string values, JSON-encoded where structured."""
    return {key: value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            for key, value in read_sidecar(artifact).items()}


def sidecar_files(artifact: str | os.PathLike) -> tuple[Path, ...]:
    """The sidecar, as a file that travels with its artifact, where it exists."""
    return (sidecar_path(artifact),) if sidecar_path(artifact).is_file() else ()


def check_flatbuffer_with_sidecar(path: Path, magic: bytes, at: int, kind: str) -> None:
    """A sidecar format's file, parsed without running it: its flatbuffer identifier `magic` at byte `at`, and a
    sidecar that reads (a truncated or edited one is refused here, not on the device)."""
    from t2tedge.errors import DataError

    if path.read_bytes()[at:at + len(magic)] != magic:
        raise DataError(f"{path} is not {kind} (a '{magic.decode()}' flatbuffer)")
    read_sidecar(path)
