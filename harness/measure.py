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


def measure_accuracy(instance: Runtime, samples: Sequence[Sample], preprocess,
                     progress: str | None = None) -> dict[str, Any]:
    """Top-1/top-5 and predictions on `samples` (none: no fields)."""
    if not samples:
        return {}
    result = evaluate(instance, samples, preprocess, batch=32, progress=progress)
    return {"top1": result.top1, "top5": result.top5, "images": result.images,
            "predictions": result.predictions.tolist()}


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
