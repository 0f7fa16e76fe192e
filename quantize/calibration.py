"""Calibration images: real images through the model's own preprocessing, a seeded subset."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from t2tedge.data import Sample, discover_images, load_batch, readable_samples, split
from t2tedge.errors import DataError
from t2tedge.quantize.records import CalibrationInfo


def calibration_samples(folder: str | os.PathLike, count: int, seed: int = 0,
                        exclude: Sequence[Sample] = ()) -> list[Sample]:
    """`count` images drawn with `seed` from any image under `folder` (labels are not needed: a folder of one's
    own photos will do), never any of `exclude` (the evaluation images). Fewer images than `count`: all of them,
    and the caller says so."""
    if count < 1:
        raise DataError(f"the calibration image count must be at least 1, not {count}")
    samples = discover_images(folder)
    held_out = {s.path.resolve() for s in exclude}
    samples = [s for s in samples if s.path.resolve() not in held_out]
    if not samples:
        raise DataError(f"no calibration images left in {folder}")
    chosen, _ = split(samples, min(count, len(samples)), seed=seed)
    return readable_samples(chosen, "calibration images")


def calibration_set(calib: str | os.PathLike | None, count: int, seed: int = 0, exclude: Sequence[Sample] = (),
                    given: Sequence[Sample] | None = None) -> tuple[list[Sample], CalibrationInfo]:
    """The calibration images of an exporter, and how they were chosen (for its report): `given` as they are, else
    `count` drawn from `calib` (default ../shared/data/imagenet-sample), saying so when the folder has fewer."""
    if given:
        samples = list(given)
        return samples, CalibrationInfo(folder=str(samples[0].path.parent), images=len(samples), seed=seed)
    if calib is None:
        from t2tedge.paths import shared_path

        calib = shared_path("data", "imagenet-sample")
    samples = calibration_samples(calib, count, seed=seed, exclude=exclude)
    if len(samples) < count:
        print(f"note: calibrating on all {len(samples)} images under {calib} ({count} asked for)", file=sys.stderr)
    return samples, CalibrationInfo(folder=str(Path(calib)), images=len(samples), seed=seed)


def images_of(samples: Sequence[Sample], preprocess, layout: str = "nchw") -> np.ndarray:
    """The samples through `preprocess`, as one contiguous float32 array in `layout`."""
    images, _ = load_batch(samples, preprocess)
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1) if layout == "nhwc" else images)


class ImageCalibrationReader:
    """onnxruntime.quantization CalibrationDataReader over preprocessed images, `batch` at a time."""

    def __init__(self, samples: Sequence[Sample], preprocess, input_name: str = "image", batch: int = 1,
                 progress: str | None = "calibrate") -> None:
        from tqdm import tqdm

        self.input_name = input_name
        self.progress = progress
        self.images, _ = load_batch(samples, preprocess)
        self.batch = batch
        self._position = 0
        self._end = len(self.images)
        self._bar = tqdm(total=len(self.images), desc=progress, unit="img", disable=progress is None, leave=False)

    def __len__(self) -> int:
        return len(self.images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._position >= self._end:
            if self._end >= len(self.images):
                self._bar.close()
            return None
        chunk = self.images[self._position:min(self._position + self.batch, self._end)]
        self._position += len(chunk)
        self._bar.update(len(chunk))
        return {self.input_name: chunk}

    def set_range(self, start_index: int, end_index: int) -> None:
        """Read images [start_index, end_index) only: ORT's calibrators keep every output of a pass in memory,
        so they are fed a bounded window at a time (ORT's `CalibStridedMinMax` protocol)."""
        self._position, self._end = start_index, min(end_index, len(self.images))

    def rewind(self) -> None:
        self._position, self._end = 0, len(self.images)
