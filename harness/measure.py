"""Measure one loaded runtime: accuracy on labelled images (if any) and the latency protocol.

Shared by the Table 4 grid and `t2tedge profile`, so a cell measured on a phone, a Mac or a GPU box
has exactly the fields of one measured here. Needs no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from t2tedge.data import Sample
from t2tedge.harness.evaluate import evaluate
from t2tedge.harness.latency import measure_latency
from t2tedge.runtimes.base import Runtime


@dataclass
class LatencySettings:
    warmup: int = 10
    runs: int = 50
    throughput_batch: int = 8


def measure_runtime(instance: Runtime, samples: Sequence[Sample], preprocess, settings: LatencySettings,
                    progress: str | None = None) -> dict[str, Any]:
    """Top-1/top-5 and predictions (when `samples`), batch-1 latency percentiles, batch-N throughput: the measured
    fields of a `Table4Cell`, as its keyword arguments."""
    return {**measure_accuracy(instance, samples, preprocess, progress), **measure_speed(instance, preprocess, settings)}


# Images per evaluation batch. Shards of a grid's images start at multiples of it, so a sharded cell runs exactly the
# batches one process runs.
EVAL_BATCH = 32


@dataclass
class ShardScore:
    """One contiguous run of a cell's images, scored: top-1 class per image and the hit counts."""

    start: int
    predictions: list[int]
    top1_hits: int
    top5_hits: int


def score_shard(instance: Runtime, samples: Sequence[Sample], preprocess, start: int = 0,
                progress: str | None = None) -> ShardScore:
    """Score `samples` (the images from index `start` of a cell's list)."""
    result = evaluate(instance, samples, preprocess, batch=EVAL_BATCH, progress=progress)
    return ShardScore(start=start, predictions=result.predictions.tolist(), top1_hits=result.top1_hits,
                      top5_hits=result.top5_hits)


def accuracy_fields(shards: Sequence[ShardScore], images: int) -> dict[str, Any]:
    """The accuracy fields of a `Table4Cell` from its shards, in image order: the same numbers one pass computes."""
    shards = sorted(shards, key=lambda shard: shard.start)
    predictions = [p for shard in shards for p in shard.predictions]
    if len(predictions) != images or any(a.start + len(a.predictions) != b.start for a, b in zip(shards, shards[1:])):
        raise ValueError(f"shards cover {len(predictions)} of {images} images, or leave gaps")
    return {"top1": sum(s.top1_hits for s in shards) / images, "top5": sum(s.top5_hits for s in shards) / images,
            "images": images, "predictions": predictions}


def shard_bounds(images: int, shard_images: int) -> list[tuple[int, int]]:
    """[start, stop) of each shard, every start a multiple of `EVAL_BATCH` (`shard_images` rounded up to one)."""
    size = max(EVAL_BATCH, -(-shard_images // EVAL_BATCH) * EVAL_BATCH)
    return [(start, min(start + size, images)) for start in range(0, images, size)]


def measure_accuracy(instance: Runtime, samples: Sequence[Sample], preprocess,
                     progress: str | None = None) -> dict[str, Any]:
    """Top-1/top-5 and predictions on `samples` (none: no fields)."""
    if not samples:
        return {}
    return accuracy_fields([score_shard(instance, samples, preprocess, progress=progress)], len(samples))


def measure_speed(instance: Runtime, preprocess, settings: LatencySettings) -> dict[str, Any]:
    """Batch-1 latency percentiles, batch-N throughput and the runtime's description."""
    cell: dict[str, Any] = {}
    image = np.zeros((1, 3, preprocess.crop, preprocess.crop), np.float32)
    batch = np.zeros((settings.throughput_batch,) + image.shape[1:], np.float32)
    latency = measure_latency(instance, image, settings.warmup, settings.runs)
    batch_latency = measure_latency(instance, batch, max(2, settings.warmup // 2), max(5, settings.runs // 5))
    description = instance.describe().to_dict()
    description["details"].pop("artifact", None)
    cell.update(latency_b1=latency, throughput_b8_ips=settings.throughput_batch / (batch_latency.p50_ms / 1e3),
                runtime_info=description)
    return cell
