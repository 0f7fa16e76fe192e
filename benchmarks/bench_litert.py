"""LiteRT benchmark (`make bench-litert`): fp32 parity and delegation for the five Table 4 models, then fp32 / int8 /
w8 / a plain-default peer for T2T-ViT-7 and MobileNetV2 against ONNX Runtime fp32, in one run.

Parity: each model's `.tflite` (NHWC, as `t2tedge export litert` writes it) against torch on 64 real images: max abs
logit difference and top-1 agreement; and how many ops ran outside the XNNPACK delegate. Weights: ImageNet weights
where ../shared has them, the project's Imagenette-trained T2T-ViT-7, seeded random weights otherwise.

Quantized rows (same 256 calibration images for every calibrated row):
- `int8`: our static full-integer file; `w8`: our dynamic-range file (t2tedge.quantize.litert_ptq);
- the peer: what a user gets from litert-torch's own PT2E quantizer with its symmetric per-channel config, the
  obvious way (quantize the PyTorch graph, then convert).
MobileNetV2 is scored on all of imagenet-val1300 (calibrated on imagenet-sample), T2T-ViT-7 (the trained subject) on
Imagenette val (calibrated on Imagenette train): top-1, agreement and logits SQNR against LiteRT fp32. Latency: batch
1, `--threads` threads, each file timed by `t2tedge profile` in a process of its own, in two interleaved rounds
(the lower p50 counts), p50/p90 over `--runs` runs. ONNX Runtime times the static
batch-1 `.onnx` of the same weights (`t2tedge export onnx`). Prints a table; writes results/bench_litert.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from t2tedge.data import Sample, discover, evenly_spread, load_batch
from t2tedge.export import export_onnx
from t2tedge.export.litert_export import ChannelsLast
from t2tedge.fileio import atomic_write_text
from t2tedge.harness.latency import machine_info
from t2tedge.harness.parity import run_parity
from t2tedge.metrics import sqnr_db
from t2tedge.models import create_model, default_checkpoint, get_spec, trained_subject
from t2tedge.native_output import native_output_captured
from t2tedge.paths import shared_path
from t2tedge.quantize.calibration import calibration_samples
from t2tedge.quantize.litert_ptq import calibration_images, export_litert_model
from t2tedge.runtimes.litert import LiteRT
from t2tedge.runtimes.onnxruntime_cpu import OnnxRuntimeCPU

TABLE4 = ("t2t_vit_7", "t2t_vit_12", "mobilenet_v1_100", "mobilenet_v2_100", "mobilenet_v2_140")


def weights_for(name: str) -> tuple[Path | None, dict, str]:
    """(checkpoint, constructor overrides, label)."""
    subject = trained_subject(name)
    if subject is not None:
        return subject.checkpoint, {"num_classes": subject.num_classes}, "own Imagenette-trained"
    real = default_checkpoint(name)
    return real, {}, "ImageNet" if real else "random (seeded)"


def data_for(name: str, limit: int | None, num_calib: int) -> tuple[list[Sample], list[Sample], int]:
    subject = trained_subject(name)
    if subject is not None:
        evaluation = evenly_spread(discover(subject.val, num_classes=subject.num_classes), limit)
        return evaluation, calibration_samples(subject.train, num_calib), subject.num_classes
    evaluation = evenly_spread(discover(shared_path("data", "imagenet-val1300")), limit)
    return evaluation, calibration_samples(shared_path("data", "imagenet-sample"), num_calib, exclude=evaluation), 1000


def pt2e_peer(name: str, checkpoint, overrides: dict, calibration: np.ndarray, destination: Path) -> None:
    """litert-torch's PT2E quantizer, symmetric per-channel, calibrated on the same images, then converted."""
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import quantize_pt2e

    model = ChannelsLast(create_model(name, checkpoint=checkpoint, export_form=True, **overrides)).eval()
    sample = torch.from_numpy(calibration[:1])
    with native_output_captured(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
            pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True))
        prepared = quantize_pt2e.prepare_pt2e(torch.export.export(model, (sample,)).module(), quantizer)
        with torch.no_grad():
            for image in calibration:
                prepared(torch.from_numpy(image[None]))
        converted = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
        import litert_torch

        litert_torch.convert(converted, (sample,), quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(
            str(destination))


def logits_of(runtime, images: np.ndarray) -> np.ndarray:
    return np.concatenate([runtime.run(images[i:i + 32]) for i in range(0, len(images), 32)])


def timed_alone(files: dict[str, Path], model: str, threads: int, runs: int, rounds: int = 2) -> dict[str, dict]:
    """p50/p90 of each file, each timed by `t2tedge profile` in a process of its own (a runtime's idle thread pool
    slows the next one timed in the same process), in interleaved rounds; the round with the lower p50 counts."""
    best: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-litert-time-") as tmp:
        for _ in range(rounds):
            for variant, path in files.items():
                out = Path(tmp) / "cell.json"
                subprocess.run([sys.executable, "-m", "t2tedge.cli", "profile", str(path), "--model", model, "--runs",
                                str(runs), "--warmup", "20", "--threads", str(threads), "--out", str(out)],
                               check=True, capture_output=True)
                latency = json.loads(out.read_text())["cells"][0]["latency_b1"]
                if variant not in best or latency["p50_ms"] < best[variant]["p50_ms"]:
                    best[variant] = {"p50_ms": latency["p50_ms"], "p90_ms": latency["p90_ms"]}
    return best


def parity_rows(names, workdir: Path, threads: int) -> list[dict]:
    rows = []
    for name in names:
        checkpoint, overrides, label = weights_for(name)
        subject = trained_subject(name)
        data = subject.val if subject else shared_path("data", "imagenet-val1300")
        report = run_parity(name, ["torch", "litert"], data, n=64, batch=32, checkpoint=checkpoint, threads=threads,
                            workdir=workdir, **overrides)
        result, details = report["pairs"][0], report["runtimes"]["litert"]["details"]
        path = Path(details["artifact"])
        rows.append({"model": name, "weights": label, "max_abs": result["max_abs"],
                     "top1_agreement": result["top1_agreement"], "passed": result["passed"],
                     "ops_outside_delegate": details["ops_outside_delegate"],
                     "outside_by_type": details["ops_outside_delegate_by_type"],
                     "delegate_partitions": details["delegate_partitions"], "size_mb": path.stat().st_size / 1e6})
        print(f"parity {name}: max abs {result['max_abs']:.2e}, agreement {100 * result['top1_agreement']:.1f}%, "
              f"{details['ops_outside_delegate']} ops outside XNNPACK", flush=True)
    return rows


def quantized_rows(name: str, workdir: Path, args) -> list[dict]:
    checkpoint, overrides, label = weights_for(name)
    evaluation, calibration, num_classes = data_for(name, args.limit, args.num_calib)
    images, labels = load_batch(evaluation, get_spec(name).preprocess)
    files: dict[str, Path] = {}
    for precision in ("fp32", "int8", "w8"):
        print(f"{name}: {precision} ...", flush=True)
        files[f"LiteRT {precision}" + ("" if precision == "fp32" else " (ours)")] = export_litert_model(
            name, checkpoint, out_dir=workdir, precision=precision, calibration=calibration, **overrides)[0]
    if not args.skip_peer:
        print(f"{name}: litert-torch PT2E peer ...", flush=True)
        peer = workdir / f"{name}_pt2e.tflite"
        try:
            pt2e_peer(name, checkpoint, overrides, calibration_images(calibration, name, "nhwc"), peer)
            files["LiteRT int8, litert-torch PT2E (peer)"] = peer
        except Exception as exc:  # the peer is what it is; a failure is a result too
            print(f"  peer failed: {str(exc).splitlines()[0][:160]}", flush=True)
    files["ONNX Runtime fp32"] = export_onnx(name, checkpoint, out_dir=workdir, **overrides)
    print(f"{name}: timing each file alone ...", flush=True)
    latency = timed_alone(files, name, args.threads, args.runs)
    rows, reference = [], None
    for variant, path in files.items():
        runtime = (OnnxRuntimeCPU if path.suffix == ".onnx" else LiteRT).load(path, threads=args.threads)
        logits = logits_of(runtime, images)
        if reference is None:
            reference = logits
        row = {"model": name, "weights": label, "variant": variant, "size_mb": path.stat().st_size / 1e6,
               "top1": float(np.mean(logits.argmax(1) == labels)),
               "agreement": float(np.mean(logits.argmax(1) == reference.argmax(1))),
               "sqnr_db": sqnr_db(reference, logits) if logits is not reference else None,
               "images": len(images), **latency[variant]}
        if isinstance(runtime, LiteRT):
            row["ops_outside_delegate"] = runtime.describe().details["ops_outside_delegate"]
        rows.append(row)
        del runtime
        print(f"  {variant}: top-1 {100 * row['top1']:.2f}%, agreement {100 * row['agreement']:.2f}%, "
              f"p50 {row['p50_ms']:.2f} ms", flush=True)
    fp32 = rows[0]["p50_ms"]
    for row in rows:
        row["vs_litert_fp32"] = row["p50_ms"] / fp32
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parity-models", default=",".join(TABLE4))
    parser.add_argument("--models", default="t2t_vit_7,mobilenet_v2_100", help="models with quantized rows")
    parser.add_argument("--limit", type=int, help="evaluation images per model (default: all)")
    parser.add_argument("--num-calib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("results/bench_litert.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-litert-") as tmp:
        parity = parity_rows([m for m in args.parity_models.split(",") if m], Path(tmp), args.threads)
        rows = [row for name in args.models.split(",") if name for row in quantized_rows(name, Path(tmp), args)]
    print(f"\nmachine: {machine_info()['cpu']}, {args.threads} threads, batch 1\n")
    print("| model | weights | max abs vs torch | agreement | ops outside XNNPACK | partitions |")
    print("| --- | --- | --- | --- | --- | --- |")
    for p in parity:
        print(f"| {p['model']} | {p['weights']} | {p['max_abs']:.1e} | {100 * p['top1_agreement']:.1f}% | "
              f"{p['ops_outside_delegate']} {p['outside_by_type']} | {p['delegate_partitions']} |")
    print("\n| model | variant | size MB | top-1 | agreement | SQNR dB | p50 ms | p90 ms | vs LiteRT fp32 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        sqnr = f"{r['sqnr_db']:.1f}" if r["sqnr_db"] is not None else ""
        print(f"| {r['model']} | {r['variant']} | {r['size_mb']:.1f} | {100 * r['top1']:.2f}% | "
              f"{100 * r['agreement']:.2f}% | {sqnr} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | "
              f"{r['vs_litert_fp32']:.2f}x |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps({"machine": machine_info(), "threads": args.threads, "parity": parity,
                                            "rows": rows}, indent=1) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
