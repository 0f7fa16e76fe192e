"""Running a graph of fixed batch size on batches of any size."""

from __future__ import annotations

from typing import Callable

import numpy as np


def run_in_chunks(run: Callable[[np.ndarray], list[np.ndarray]], fixed_batch: int | None,
                  batch: np.ndarray) -> list[np.ndarray]:
    """`run(batch)` for a graph of any batch size, or, for a static-batch graph (`fixed_batch`), in chunks of its
    size: the last one zero-padded and its padding cut from every output."""
    if fixed_batch is None or len(batch) == fixed_batch:
        return run(batch)
    chunks = []
    for start in range(0, len(batch), fixed_batch):
        chunk = batch[start:start + fixed_batch]
        pad = fixed_batch - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
        outputs = run(chunk)
        chunks.append([o[:fixed_batch - pad] for o in outputs] if pad else outputs)
    return [np.concatenate(parts) for parts in zip(*chunks)]


def run_batched(runtime, images: np.ndarray, batch: int) -> np.ndarray:
    """A runtime's logits on `images`, fed `batch` at a time."""
    return np.concatenate([runtime.run(images[i:i + batch]) for i in range(0, len(images), batch)])
