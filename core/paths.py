"""Where the read-only shared data lives: $T2TEDGE_SHARED, else ../shared beside the project."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    env = os.environ.get("T2TEDGE_SHARED")
    if env:
        return Path(env)
    for candidate in (PROJECT_ROOT.parent / "shared", Path.cwd().parent / "shared"):
        if candidate.is_dir():
            return candidate
    return PROJECT_ROOT.parent / "shared"


def shared_path(*parts: str) -> Path:
    return shared_dir().joinpath(*parts)


def synset_words_file() -> Path:
    return shared_path("data", "imagenet-meta", "synset_words.txt")
