"""Shared fixtures: the read-only ../shared data (tests skip only when it is absent) and checkpoints."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from t2tedge.paths import shared_dir  # noqa: E402


def shared_or_skip(*parts: str) -> Path:
    path = shared_dir().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not found: {path} (set T2TEDGE_SHARED)")
    return path


@pytest.fixture(scope="session")
def val_dir() -> Path:
    return shared_or_skip("data", "imagenet-val1300")


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return shared_or_skip("data", "imagenet-sample")


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    return shared_or_skip("weights")


def real_images(folder: Path, n: int, preprocess) -> torch.Tensor:
    from t2tedge.data import discover, load_batch, split

    chosen, _ = split(discover(folder), n, seed=1)
    images, _ = load_batch(chosen, preprocess)
    return torch.from_numpy(images)


def trained_like_state_dict(model_name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict in the model's key layout whose weights are not near-constant.

    Default init (std 0.02) makes a ViT almost an identity map; Kaiming-scaled weights and non-trivial
    norms give logits with real spread, so comparisons at 1e-5 are meaningful.
    """
    from t2tedge.models import create_model

    generator = torch.Generator().manual_seed(seed)
    state = create_model(model_name).state_dict()
    out = {}
    for key, value in state.items():
        if key.endswith(".w") or key == "pos_embed" or not value.is_floating_point():
            out[key] = value.clone()  # the Performer's random features and the position table stay as drawn
        elif value.ndim >= 2:
            fan_in = value[0].numel()
            out[key] = torch.randn(value.shape, generator=generator) / math.sqrt(fan_in)
        elif ".norm" in key or key.startswith("norm."):
            base = 1.0 if key.endswith("weight") else 0.0
            out[key] = base + 0.1 * torch.randn(value.shape, generator=generator)
        else:
            out[key] = 0.1 * torch.randn(value.shape, generator=generator)
    return out


def save_official_checkpoint(state: dict[str, torch.Tensor], path: Path, wrapper: str = "state_dict_ema",
                             prefix: str = "") -> Path:
    """Write `state` the way the official release and timm's training script do (args, epoch, wrapper)."""
    import argparse

    inner = {prefix + k: v for k, v in state.items()}
    if wrapper == "bare":
        torch.save(inner, path)
    else:
        torch.save({"epoch": 309, "arch": "t2t_vit", "args": argparse.Namespace(lr=1e-3, model="t2t_vit"),
                    "version": 2, wrapper: inner}, path)
    return path


@pytest.fixture(scope="session")
def t2t7_checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "t2t_vit_7_release.pth.tar"
    return save_official_checkpoint(trained_like_state_dict("t2t_vit_7"), path, prefix="module.")


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))
