"""What the runtime benchmarks share: the weights and images each model is measured with, and timing each file
alone. The scripts in this folder import it (it sits beside them on sys.path)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from t2tedge.data import Sample, discover, evenly_spread
from t2tedge.metrics import sqnr_db
from t2tedge.models import default_checkpoint, trained_subject
from t2tedge.paths import shared_path
from t2tedge.quantize.calibration import calibration_samples
from t2tedge.results import ProfileRecord
from t2tedge.targets import target_for_file

TABLE4 = ("t2t_vit_7", "t2t_vit_12", "mobilenet_v1_100", "mobilenet_v2_100", "mobilenet_v2_140")


def weights_for(name: str) -> tuple[Path | None, dict, str]:
    """(checkpoint, constructor overrides, label)."""
    subject = trained_subject(name)
    if subject is not None:
        return subject.checkpoint, {"num_classes": subject.num_classes}, "own Imagenette-trained"
    real = default_checkpoint(name)
    return real, {}, "ImageNet" if real else "random (seeded)"


def evaluation_folder(name: str) -> Path:
    """The labelled images a model is scored on: its trained subject's val folder, else imagenet-val1300."""
    subject = trained_subject(name)
    return subject.val if subject is not None else shared_path("data", "imagenet-val1300")


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def data_for(name: str, limit: int | None, num_calib: int) -> tuple[list[Sample], list[Sample], int]:
    subject = trained_subject(name)
    if subject is not None:
        evaluation = evenly_spread(discover(subject.val, num_classes=subject.num_classes), limit)
        return evaluation, calibration_samples(subject.train, num_calib), subject.num_classes
    evaluation = evenly_spread(discover(evaluation_folder(name)), limit)
    return evaluation, calibration_samples(shared_path("data", "imagenet-sample"), num_calib, exclude=evaluation), 1000


@dataclass
class PlannedModel:
    """A model as the INT8 benchmarks measure it: weights, evaluation images, calibration and each target's INT8
    file of the one plan (calibrated once, on images disjoint from `evaluation`)."""

    checkpoint: Path | None
    overrides: dict
    label: str
    evaluation: list[Sample]
    calibration: list[Sample]
    classes: int
    images: np.ndarray
    labels: np.ndarray
    int8: dict[str, Path]
    int8_made: dict[str, str]


def planned_model(name: str, targets, work: Path, limit: int | None, num_calib: int) -> PlannedModel:
    from t2tedge.data import load_batch
    from t2tedge.harness.parity import int8_artifacts
    from t2tedge.models import get_spec

    checkpoint, overrides, label = weights_for(name)
    evaluation, calibration, classes = data_for(name, limit, num_calib)
    subject = trained_subject(name)
    calib = subject.train if subject is not None else shared_path("data", "imagenet-sample")
    images, labels = load_batch(evaluation, get_spec(name).preprocess)
    int8, how = int8_artifacts(targets, name, checkpoint, work / "int8", calib, num_calib, evaluation, classes)
    return PlannedModel(checkpoint, overrides, label, evaluation, calibration, classes, images, labels, int8, how)


def logits_of(runtime, images: np.ndarray) -> np.ndarray:
    return np.concatenate([runtime.run(images[i:i + 32]) for i in range(0, len(images), 32)])


def timed_alone(files: dict[str, Path], model: str, threads: int, runs: int, rounds: int = 2) -> dict[str, dict]:
    """p50/p90 of each file, each timed by `t2tedge profile` in a process of its own (a runtime's idle thread pool
    slows the next one timed in the same process), in interleaved rounds; the round with the lower p50 counts."""
    best: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-time-") as tmp:
        for _ in range(rounds):
            for variant, path in files.items():
                out = Path(tmp) / "cell.json"
                subprocess.run([sys.executable, "-m", "t2tedge.cli", "profile", str(path), "--model", model, "--runs",
                                str(runs), "--warmup", "20", "--threads", str(threads), "--out", str(out)],
                               check=True, capture_output=True)
                latency = ProfileRecord.read(out).cell.latency_b1
                if variant not in best or latency.p50_ms < best[variant]["p50_ms"]:
                    best[variant] = {"p50_ms": latency.p50_ms, "p90_ms": latency.p90_ms}
    return best


def bench_arguments(description: str, out: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--parity-models", default=",".join(TABLE4))
    parser.add_argument("--models", default="t2t_vit_7,mobilenet_v2_100", help="models with quantized rows")
    parser.add_argument("--limit", type=int, help="evaluation images per model (default: all)")
    parser.add_argument("--num-calib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(out))
    return parser


def score_files(files: dict[str, Path], name: str, label: str, images: np.ndarray, labels: np.ndarray,
                latency: dict[str, dict], threads: int, details=lambda runtime: {}) -> list[dict]:
    """One row per file: size, top-1, agreement and logits SQNR against the first file, and its latency.
    `details(runtime)` adds the runtime's own fields (delegation, say)."""
    rows, reference = [], None
    for variant, path in files.items():
        runtime = target_for_file(path).load(path, threads=threads)
        logits = logits_of(runtime, images)
        if reference is None:
            reference = logits
        row = {"model": name, "weights": label, "variant": variant, "size_mb": path.stat().st_size / 1e6,
               "top1": float(np.mean(logits.argmax(1) == labels)),
               "agreement": float(np.mean(logits.argmax(1) == reference.argmax(1))),
               "sqnr_db": sqnr_db(reference, logits) if logits is not reference else None,
               "images": len(images), **latency[variant], **details(runtime)}
        rows.append(row)
        del runtime
        print(f"  {variant}: top-1 {100 * row['top1']:.2f}%, agreement {100 * row['agreement']:.2f}%, "
              f"p50 {row['p50_ms']:.2f} ms", flush=True)
    return rows


def print_rows(rows: list[dict], ratios: dict[str, str]) -> None:
    """The quantized rows as a Markdown table; `ratios`: column title -> the row key of a latency ratio."""
    titles = " | ".join(ratios)
    print(f"\n| model | variant | size MB | top-1 | agreement | SQNR dB | p50 ms | p90 ms | {titles} |")
    print("| --- " * (8 + len(ratios)) + "|")
    for r in rows:
        sqnr = f"{r['sqnr_db']:.1f}" if r["sqnr_db"] is not None else ""
        print(f"| {r['model']} | {r['variant']} | {r['size_mb']:.1f} | {100 * r['top1']:.2f}% | "
              f"{100 * r['agreement']:.2f}% | {sqnr} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | "
              + " | ".join(f"{r[key]:.2f}x" for key in ratios.values()) + " |")
