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

import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from t2tedge.data import load_batch
from t2tedge.errors import first_line
from t2tedge.export import export_onnx
from t2tedge.export.ort_optimize import optimize_for_onnxruntime
from t2tedge.export.litert_export import ChannelsLast
from t2tedge.fileio import atomic_write_text
from t2tedge.harness.latency import machine_info
from t2tedge.harness.parity import run_parity
from t2tedge.models import create_model, get_spec
from t2tedge.native_output import native_output_captured
from t2tedge.quantize.calibration import images_of
from t2tedge.targets.litert import LiteRTSettings, file_name, write_tflite

from bench_common import bench_arguments, evaluation_folder, data_for, print_rows, score_files, timed_alone, weights_for

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


def parity_rows(names, workdir: Path, threads: int) -> list[dict]:
    rows = []
    for name in names:
        checkpoint, overrides, label = weights_for(name)
        data = evaluation_folder(name)
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
        # int8 here calibrates on its own images (what `export` ships applies the ONNX plan: make bench-int8).
        files[f"LiteRT {precision}" + ("" if precision != "int8" else " (self-calibrated)")] = write_tflite(
            name, checkpoint, workdir / file_name(name, precision),
            LiteRTSettings(precision=precision, calibration=calibration), **overrides)[0]
    if not args.skip_peer:
        print(f"{name}: litert-torch PT2E peer ...", flush=True)
        peer = workdir / f"{name}_pt2e.tflite"
        try:
            pt2e_peer(name, checkpoint, overrides, images_of(calibration, get_spec(name).preprocess, "nhwc"), peer)
            files["LiteRT int8, litert-torch PT2E (peer)"] = peer
        except Exception as exc:  # the peer is what it is; a failure is a result too
            print(f"  peer failed: {first_line(exc, 160)}", flush=True)
    # ONNX Runtime times the file `t2tedge optimize` writes for it (contrib-op attention).
    fp32_onnx = export_onnx(name, checkpoint, out_dir=workdir, **overrides)
    files["ONNX Runtime fp32"] = optimize_for_onnxruntime(fp32_onnx)[0]
    print(f"{name}: timing each file alone ...", flush=True)
    latency = timed_alone(files, name, args.threads, args.runs)
    rows = score_files(files, name, label, images, labels, latency, args.threads,
                       lambda runtime: {"ops_outside_delegate": runtime.describe().details["ops_outside_delegate"]}
                       if runtime.name == "litert" else {})
    fp32 = rows[0]["p50_ms"]
    for row in rows:
        row["vs_litert_fp32"] = row["p50_ms"] / fp32
    return rows


def main() -> int:
    args = bench_arguments(__doc__.splitlines()[0], "results/bench_litert.json").parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-litert-") as tmp:
        parity = parity_rows([m for m in args.parity_models.split(",") if m], Path(tmp), args.threads)
        rows = [row for name in args.models.split(",") if name for row in quantized_rows(name, Path(tmp), args)]
    print(f"\nmachine: {machine_info().cpu}, {args.threads} threads, batch 1\n")
    print("| model | weights | max abs vs torch | agreement | ops outside XNNPACK | partitions |")
    print("| --- | --- | --- | --- | --- | --- |")
    for p in parity:
        print(f"| {p['model']} | {p['weights']} | {p['max_abs']:.1e} | {100 * p['top1_agreement']:.1f}% | "
              f"{p['ops_outside_delegate']} {p['outside_by_type']} | {p['delegate_partitions']} |")
    print_rows(rows, {"vs LiteRT fp32": "vs_litert_fp32"})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps({"machine": machine_info().to_dict(), "threads": args.threads, "parity": parity,
                                            "rows": rows}, indent=1) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
