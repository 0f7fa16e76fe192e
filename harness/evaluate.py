"""Top-1 / top-5 accuracy of any runtime on a labelled image folder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from t2tedge.data import ImageDataset, Sample, iter_batches
from t2tedge.runtimes.base import Runtime


@dataclass
class EvalResult:
    images: int
    predictions: np.ndarray  # top-1 class per image, for agreement between runtimes
    top1_hits: int
    top5_hits: int

    @property
    def top1(self) -> float:
        return self.top1_hits / self.images

    @property
    def top5(self) -> float:
        return self.top5_hits / self.images

    def to_dict(self) -> dict:
        return {"top1": self.top1, "top5": self.top5, "images": self.images}


def evaluate(runtime: Runtime, samples: Sequence[Sample], preprocess, batch: int = 32,
             progress: str | None = "eval") -> EvalResult:
    dataset = ImageDataset(samples, preprocess)
    top1 = top5 = 0
    predictions = []
    for images, labels in iter_batches(dataset, batch, progress=progress):
        logits = runtime.run(images)
        ranked = np.argsort(-logits, axis=1)[:, :5]
        top1 += int((ranked[:, 0] == labels).sum())
        top5 += int((ranked == labels[:, None]).any(axis=1).sum())
        predictions.append(ranked[:, 0])
    n = len(dataset)
    return EvalResult(images=n, predictions=np.concatenate(predictions), top1_hits=top1, top5_hits=top5)
