"""Weights that behave like trained ones, for models without a downloadable checkpoint here.

Default init (std 0.02) makes a ViT almost an identity map, so its logits barely move and comparisons
(export parity, PTQ SQNR/agreement) say little. Kaiming-scaled matrices and non-trivial norms give
logits with real spread.
"""

from __future__ import annotations

import math

import torch


def trained_like_state_dict(model_name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict in `model_name`'s key layout whose weights are not near-constant (seeded)."""
    from t2tedge.models.registry import create_model

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
