"""Parameter and multiply-accumulate counts, measured on the reference form."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: torch.nn.Module) -> int:
    # Includes the fixed Performer matrices and the saved position table, as the paper's counts do.
    return sum(p.numel() for p in model.parameters())


def count_macs(model: torch.nn.Module, input_size: int = 224) -> int:
    """MACs of one 224x224 image: matmul/conv FLOPs counted by torch, halved."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, input_size, input_size))
    return counter.get_total_flops() // 2
