"""Activation ranges, calibrated a window of images at a time and saved as ORT's calibration cache.

ORT's calibrators hold every intermediate output of a `collect_data` pass in memory until it ends; over
256 images of T2T-ViT-7 (3136-token tensors) that is more than 24 GiB. Feeding them windows of
`WINDOW_IMAGES` images keeps memory flat: MinMax merges the ranges and the histogram calibrators merge the
histograms between windows. The ranges go to `quantize_static` as its calibration cache, so it places
Q/DQ exactly as if it had calibrated itself.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from t2tedge.quantize.mse_calibration import HISTOGRAM_BINS, mse_range

WINDOW_IMAGES = 32


def ort_method(method: str):
    """The ORT CalibrationMethod that collects for `method` (MSE collects histograms like Entropy) and the one
    its cache is saved under (MSE ranges are final ranges, i.e. what MinMax would hand over)."""
    from onnxruntime.quantization import CalibrationMethod

    collect = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy, "mse": CalibrationMethod.Entropy}[method]
    return collect, CalibrationMethod.MinMax if method == "mse" else collect


def collect_in_windows(calibrator, reader) -> None:
    """Run `calibrator.collect_data` over `reader` `WINDOW_IMAGES` images at a time (a reader without `__len__`
    and `set_range`, ORT's windowing protocol, is read in one pass)."""
    if not (hasattr(reader, "__len__") and hasattr(reader, "set_range")):
        calibrator.collect_data(reader)
        return
    for start in range(0, len(reader), WINDOW_IMAGES):
        reader.set_range(start, start + WINDOW_IMAGES)
        calibrator.collect_data(reader)
    reader.rewind()


def write_ranges(model_path: str | os.PathLike, reader, op_types: Sequence[str], cache_path: str | os.PathLike,
                 method: str, symmetric: bool, percentile: float = 99.999) -> int:
    """Calibrate `model_path` with `reader` by `method` and write ORT's cache to `cache_path`; return the tensor count."""
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, create_calibrator, save_tensors_data

    collect, saved_as = ort_method(method)
    options = {"symmetric": symmetric}
    if method == "percentile":
        options["percentile"] = percentile
    if method == "mse":
        options = {"num_bins": HISTOGRAM_BINS}  # signed histograms; symmetry is applied when choosing the range
    # Beside the ranges file (in the quantizer's staging folder), not in TMPDIR: a killed run leaves nothing there.
    with tempfile.TemporaryDirectory(prefix="calib-", dir=Path(cache_path).parent) as tmp:
        calibrator = create_calibrator(Path(model_path), list(op_types),
                                       augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=collect, extra_options=options)
        collect_in_windows(calibrator, reader)
        if method == "mse":
            ranges = {}
            for tensor, (counts, edges, low, high, _) in calibrator.collector.histogram_dict.items():
                lowest, highest = mse_range(counts, edges, float(low), float(high), symmetric)
                ranges[tensor] = TensorData(lowest=np.float32(lowest), highest=np.float32(highest))
            data = TensorsData(saved_as, ranges)
        else:
            data = calibrator.compute_data()
        del calibrator
    save_tensors_data(data, Path(cache_path))
    return len(data.data)
