"""Core ML packages: size per compression, export time, and accuracy of the weights read back from the package.

Linux cannot run Core ML, so accuracy is measured in torch: the package's (decompressed) weights are loaded
into the network they came from (`coreml_checks.roundtrip_network`); for w8a8 the calibrated W8A8 torch
model runs with the package's weights, after checking that its activation scales are the packaged ones.
T2T-ViT-7 is scored with the project's Imagenette-trained subject (tag t2t_vit_7.imagenette) on Imagenette val, its W8A8
calibration drawn from Imagenette train. Prints a table and writes results/bench_coreml.json. `make bench-coreml`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from t2tedge.data import discover, evenly_spread
from t2tedge.errors import first_line
from t2tedge.export.common import build_model
from t2tedge.export.coreml_checks import activation_scales, package_size, roundtrip_network
from t2tedge.export.coreml_export import CoreMLExportOptions
from t2tedge.quantize.coreml_ptq import calibrate_w8a8
from t2tedge.targets.coreml import write_package
from t2tedge.fileio import atomic_write_text
from t2tedge.harness.evaluate import evaluate
from t2tedge.models import default_checkpoint, get_spec, trained_subject
from t2tedge.paths import shared_path
from t2tedge.runtimes.torch_eager import TorchRuntime

COMPRESSIONS = [("none", "iOS16"), ("w8", "iOS16"), ("palettize6", "iOS16"), ("palettize4", "iOS16"), ("w8a8", "iOS17")]


def scales_match(network, package) -> bool:
    """Every activation scale of the W8A8 torch model appears among the package's quantize scales (fp16)."""
    ours = [float(v) for k, v in network.state_dict().items() if k.endswith("_scale_0") and v.numel() == 1]
    stored = np.array(activation_scales(package), np.float32)
    return bool(ours) and all(np.isclose(stored, s, rtol=2e-3).any() for s in ours)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenet_v2_100,t2t_vit_7,t2t_vit_12")
    parser.add_argument("--data", type=Path, default=shared_path("data", "imagenet-val1300"))
    parser.add_argument("--limit", type=int, help="N evaluation images, evenly spread")
    parser.add_argument("--out", type=Path, default=Path("results/bench_coreml.json"))
    args = parser.parse_args()
    samples = evenly_spread(discover(args.data), args.limit) if args.data.is_dir() else []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            checkpoint = default_checkpoint(name)
            pre = get_spec(name).preprocess
            subject = trained_subject(name) if checkpoint is None else None
            overrides, model_samples, calib_dir = {}, samples, shared_path("data", "imagenet-sample")
            weights = "trained (ImageNet)"
            if subject is not None:
                checkpoint, overrides, calib_dir = subject.checkpoint, {"num_classes": subject.num_classes}, subject.train
                model_samples = evenly_spread(discover(subject.val, num_classes=subject.num_classes), args.limit)
                weights = f"own: {subject.note}"
            trained = checkpoint is not None
            reference = None
            fp16_size = None
            for compress, target in COMPRESSIONS:
                row = {"model": name, "compress": compress, "target": target,
                       "weights": weights if trained else "untrained"}
                start = time.perf_counter()
                try:
                    package = write_package(name, checkpoint, tmp, progress=False,
                                            options=CoreMLExportOptions(compress=compress, target=target), **overrides)
                except Exception as exc:  # report the cell and go on with the others
                    row["error"] = first_line(exc, 160)
                    rows.append(row)
                    print(f"{name:18} {compress:11} failed: {row['error']}", flush=True)
                    continue
                row["export_s"] = round(time.perf_counter() - start, 2)
                row["size_mb"] = round(package_size(package) / 1e6, 3)
                fp16_size = fp16_size or row["size_mb"]
                row["size_vs_fp16"] = round(row["size_mb"] / fp16_size, 3)
                if trained and model_samples:
                    calibrated = None
                    if compress == "w8a8":
                        calibrated, _ = build_model(name, checkpoint, **overrides)
                        calibrated = calibrate_w8a8(calibrated, pre, calib_dir, 128, progress=False)
                        row["scales_match_package"] = scales_match(calibrated, package)
                    network, trip = roundtrip_network(name, package, checkpoint, network=calibrated, **overrides)
                    row["weights_loaded"], row["weights_compressed"] = trip.loaded, trip.compressed
                    row["unmatched"] = len(trip.unmatched)
                    result = evaluate(TorchRuntime.load(network), model_samples, pre, progress=None)
                    if reference is None:
                        fp32, _ = build_model(name, checkpoint, **overrides)
                        reference = evaluate(TorchRuntime.load(fp32), model_samples, pre, progress=None)
                        row_fp32 = {"model": name, "compress": "fp32 torch", "top1": round(100 * reference.top1, 2)}
                        rows.append(row_fp32)
                        print(f"{name:18} {'fp32 torch':11} top-1 {row_fp32['top1']:.2f}%", flush=True)
                    row["top1"] = round(100 * result.top1, 2)
                    row["delta_top1"] = round(100 * (result.top1 - reference.top1), 2)
                    row["agreement"] = round(100 * float(np.mean(result.predictions == reference.predictions)), 2)
                rows.append(row)
                accuracy = (f"top-1 {row['top1']:.2f}% ({row['delta_top1']:+.2f}), agreement {row['agreement']:.2f}%"
                            if "top1" in row else "accuracy: untrained weights, not measured")
                print(f"{name:18} {compress:11} {row['size_mb']:7.2f} MB ({row['size_vs_fp16']:.2f}x fp16) "
                      f"export {row['export_s']:5.1f} s  {accuracy}", flush=True)
    report = {"images": len(samples), "data": str(args.data), "rows": rows}
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
