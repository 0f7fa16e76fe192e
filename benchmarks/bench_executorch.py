"""ExecuTorch benchmark (`make bench-executorch`): delegation and fp32 parity for the five Table 4 models, then fp32 /
w8 / int8 / a plain-default peer for T2T-ViT-7 and MobileNetV2 against ONNX Runtime and LiteRT fp32, in one run.

Delegation: each model's `.pte` as `t2tedge export executorch` writes it (XNNPACK): delegate calls and ops left
outside. For T2T-ViT-7 also the program a user gets by lowering the export form as it is (before), next to ours
(after). Parity: the `.pte` against torch on 64 real images (max abs logit difference, top-1 agreement). Weights:
ImageNet weights where ../shared has them, the project's Imagenette-trained T2T-ViT-7, seeded random otherwise.

Quantized rows (the same calibration images for every calibrated row):
- `w8`: int8 weights of every linear layer, activations quantized per token at run time (torchao 8da8w);
- `int8`: static PT2E with XNNPACKQuantizer, ReLU6 outputs quantized on their own range (ours);
- the peer: XNNPACKQuantizer's symmetric per-channel config applied to the whole model, as a user would.
MobileNetV2 is scored on all of imagenet-val1300 (calibrated on imagenet-sample), T2T-ViT-7 (the trained subject) on
Imagenette val (calibrated on Imagenette train): top-1, agreement and logits SQNR against ExecuTorch fp32. Latency:
batch 1, `--threads` threads, each file timed by `t2tedge profile` in a process of its own, in two interleaved
rounds (the lower p50 counts). ONNX Runtime times the static batch-1 `.onnx` of the same weights, LiteRT its fp32
`.tflite` (when the litert extra is installed). Prints tables; writes results/bench_executorch.json.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from t2tedge.data import load_batch
from t2tedge.errors import missing_package
from t2tedge.export import export_onnx
from t2tedge.export.ort_optimize import optimize_for_onnxruntime
from t2tedge.export.common import build_model
from t2tedge.export.executorch_export import export_program, lower_program
from t2tedge.fileio import atomic_write_text
from t2tedge.harness.latency import machine_info
from t2tedge.harness.parity import run_parity
from t2tedge.models import get_spec
from t2tedge.native_output import native_output_captured
from t2tedge.quantize.calibration import images_of
from t2tedge.quantize.executorch_ptq import quantize_static
from t2tedge.targets.executorch import ExecuTorchSettings, file_name, write_program

from bench_common import bench_arguments, evaluation_folder, data_for, print_rows, score_files, timed_alone, weights_for


def naive_program(name: str, checkpoint, overrides: dict, destination: Path) -> dict:
    """The export form lowered as it is (what a user tries first): its delegation report."""
    model, _ = build_model(name, checkpoint, **overrides)
    crop = get_spec(name).preprocess.crop
    buffer, report, _ = lower_program(export_program(model, torch.zeros(1, 3, crop, crop)), "xnnpack", allow_outside=True)
    destination.write_bytes(buffer)
    return report


def plain_peer(name: str, checkpoint, overrides: dict, calibration: np.ndarray, destination: Path) -> None:
    """XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True)) on the model we lower,
    calibrated the same way as ours."""
    from t2tedge.export.executorch_form import delegable_form

    with native_output_captured():
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                               get_symmetric_quantization_config)

    model, _ = build_model(name, checkpoint, **overrides)
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    program = export_program(delegable_form(model), torch.from_numpy(calibration[:1]))
    quantized = quantize_static(program, get_spec(name).family, calibration, progress=False, quantizer=quantizer)
    buffer, _, _ = lower_program(quantized, "xnnpack", allow_outside=True)
    destination.write_bytes(buffer)


def delegation_rows(names, workdir: Path, threads: int) -> list[dict]:
    rows = []
    for name in names:
        checkpoint, overrides, label = weights_for(name)
        data = evaluation_folder(name)
        report = run_parity(name, ["torch", "executorch"], data, n=64, batch=32, checkpoint=checkpoint,
                            threads=threads, workdir=workdir, **overrides)
        result, details = report["pairs"][0], report["runtimes"]["executorch"]["details"]
        path = Path(details["artifact"])
        rows.append({"model": name, "weights": label, "max_abs": result["max_abs"],
                     "top1_agreement": result["top1_agreement"], "passed": result["passed"],
                     "delegate_calls": details["delegate_calls"], "ops_outside_delegate": details["ops_outside_delegate"],
                     "outside_by_type": details["ops_outside_delegate_by_type"], "size_mb": path.stat().st_size / 1e6})
        print(f"parity {name}: max abs {result['max_abs']:.2e}, agreement {100 * result['top1_agreement']:.1f}%, "
              f"{details['delegate_calls']} delegate call(s), {details['ops_outside_delegate']} kernels outside",
              flush=True)
    return rows


def quantized_rows(name: str, workdir: Path, args) -> tuple[list[dict], dict | None]:
    checkpoint, overrides, label = weights_for(name)
    evaluation, calibration, _ = data_for(name, args.limit, args.num_calib)
    spec = get_spec(name)
    images, labels = load_batch(evaluation, spec.preprocess)
    files: dict[str, Path] = {}
    for precision in ("fp32", "w8", "int8"):
        print(f"{name}: {precision} ...", flush=True)
        # int8 here calibrates on its own images (what `export` ships applies the ONNX plan: make bench-int8).
        settings = ExecuTorchSettings(precision=precision, calibration=calibration if precision == "int8" else ())
        files[f"ExecuTorch {precision}" + ("" if precision != "int8" else " (self-calibrated)")] = write_program(
            name, checkpoint, workdir / file_name(name, precision, "xnnpack"), settings, **overrides)[0]
    if not args.skip_peer:
        print(f"{name}: plain XNNPACKQuantizer peer ...", flush=True)
        peer = workdir / f"{name}_peer.pte"
        plain_peer(name, checkpoint, overrides, images_of(calibration, spec.preprocess), peer)
        files["ExecuTorch int8, XNNPACKQuantizer defaults (peer)"] = peer
    before = None
    if spec.family == "T2T-ViT":
        print(f"{name}: the export form lowered as it is ...", flush=True)
        files["ExecuTorch fp32, export form as is (before)"] = workdir / f"{name}_before.pte"
        before = naive_program(name, checkpoint, overrides, files["ExecuTorch fp32, export form as is (before)"])
    # ONNX Runtime times the file `t2tedge optimize` writes for it (contrib-op attention).
    fp32_onnx = export_onnx(name, checkpoint, out_dir=workdir, **overrides)
    files["ONNX Runtime fp32"] = optimize_for_onnxruntime(fp32_onnx)[0]
    if missing_package("ai_edge_litert", "") is None and missing_package("litert_torch", "") is None:
        from t2tedge.targets.litert import LiteRTSettings, file_name as tflite_name, write_tflite

        files["LiteRT fp32"] = write_tflite(name, checkpoint, workdir / tflite_name(name, "fp32"), LiteRTSettings(),
                                            **overrides)[0]
    print(f"{name}: timing each file alone ...", flush=True)
    latency = timed_alone(files, name, args.threads, args.runs)
    rows = score_files(files, name, label, images, labels, latency, args.threads,
                       lambda runtime: {"delegate_calls": runtime.describe().details["delegate_calls"]}
                       if runtime.name == "executorch" else {})
    fp32 = rows[0]["p50_ms"]
    onnx = next(r["p50_ms"] for r in rows if r["variant"] == "ONNX Runtime fp32")
    for row in rows:
        row["vs_executorch_fp32"] = row["p50_ms"] / fp32
        row["vs_onnxruntime_fp32"] = row["p50_ms"] / onnx
    return rows, before


def main() -> int:
    args = bench_arguments(__doc__.splitlines()[0], "results/bench_executorch.json").parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-executorch-") as tmp:
        parity = delegation_rows([m for m in args.parity_models.split(",") if m], Path(tmp), args.threads)
        rows, before = [], {}
        for name in [m for m in args.models.split(",") if m]:
            model_rows, naive = quantized_rows(name, Path(tmp), args)
            rows += model_rows
            if naive:
                before[name] = naive
    print(f"\nmachine: {machine_info().cpu}, {args.threads} threads, batch 1\n")
    for name, report in before.items():
        outside = report["ops_outside_delegate"]
        print(f"{name} export form lowered as is: {report['delegate_calls']} delegate calls, "
              f"{sum(outside.values())} ops outside: " + ", ".join(f"{k} x{n}" for k, n in outside.items()))
    print("\n| model | weights | max abs vs torch | agreement | delegate calls | kernels outside |")
    print("| --- | --- | --- | --- | --- | --- |")
    for p in parity:
        print(f"| {p['model']} | {p['weights']} | {p['max_abs']:.1e} | {100 * p['top1_agreement']:.1f}% | "
              f"{p['delegate_calls']} | {p['ops_outside_delegate']} {p['outside_by_type']} |")
    print_rows(rows, {"vs ET fp32": "vs_executorch_fp32", "vs ORT fp32": "vs_onnxruntime_fp32"})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps({"machine": machine_info().to_dict(), "threads": args.threads, "parity": parity,
                                            "before": before, "rows": rows}, indent=1) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
