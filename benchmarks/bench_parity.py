"""How long `t2tedge parity FILE...` takes (`make bench-parity`): the two budgets of docs/parity.md.

1. File parity of four T2T-ViT-7 files (ONNX fp32 and int8, OpenVINO int8, LiteRT int8) and the reference on 64
   images: every pair and every file against the reference.
2. Block parity of two T2T-ViT-7 files (ONNX fp32 and int8) on 16 images (`--blocks`).

The files are written once by `t2tedge export` (the trained subject, t2t_vit_7.imagenette); the runtimes are
imported before the clock starts (their import is a process's one-off cost, not a comparison's). Prints the wall
times with the CPU and the thread count; writes results/bench_parity.json.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import tempfile
import time
from pathlib import Path

from t2tedge.cli import main
from t2tedge.harness.file_parity import FileParitySettings, run_file_parity
from t2tedge.harness.latency import machine_info
from t2tedge.models import trained_subject
from t2tedge.paths import shared_path

TAG = "t2t_vit_7.imagenette"
RUNTIME_MODULES = ("onnxruntime", "openvino", "ai_edge_litert.interpreter", "torch")


def export(target: str, precision: str, out: Path, suffix: str) -> Path:
    calib = ["--calib", str(shared_path("data", "imagenet-sample")), "--num-calib", "32"] if precision == "int8" else []
    assert main(["export", target, TAG, "--out", str(out / target), "--precision", precision, *calib]) == 0
    return out / target / f"t2t_vit_7{'_int8' if precision == 'int8' else ''}{suffix}"


def timed(paths, settings: FileParitySettings) -> tuple[float, object]:
    start = time.perf_counter()
    record = run_file_parity(paths, settings)
    return time.perf_counter() - start, record


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/bench_parity.json"))
    parser.add_argument("--threads", type=int, default=None, help="runtime threads (default: all cores)")
    args = parser.parse_args()
    subject = trained_subject("t2t_vit_7")
    if subject is None:
        raise SystemExit("needs the trained T2T-ViT-7 subject and ../shared/data/imagenette2")
    for module in RUNTIME_MODULES:
        importlib.import_module(module)
    with tempfile.TemporaryDirectory(prefix="bench-parity-") as tmp:
        out = Path(tmp)
        onnx32 = export("onnxruntime", "fp32", out, ".onnx")
        onnx8 = export("onnxruntime", "int8", out, ".onnx")
        ir8 = export("openvino", "int8", out, ".xml")
        tflite8 = export("litert", "int8", out, ".tflite")
        files_s, files_record = timed([onnx32, onnx8, ir8, tflite8], FileParitySettings(
            data=subject.val, limit=64, threads=args.threads, reference=TAG))
        blocks_s, blocks_record = timed([onnx32, onnx8], FileParitySettings(
            data=subject.val, limit=16, threads=args.threads, blocks=True, block_images=16))
    machine = machine_info()
    result = {
        "date": time.strftime("%Y-%m-%d"), "cpu": machine.cpu, "cores": os.cpu_count(),
        "threads": args.threads or os.cpu_count(),
        "file_parity": {"files": 4, "reference": TAG, "images": 64, "pairs": len(files_record.pairs),
                        "seconds": round(files_s, 1), "budget_seconds": 60},
        "block_parity": {"files": 2, "images": 16, "blocks": len(blocks_record.blocks), "seconds": round(blocks_s, 1),
                         "budget_seconds": 120},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{machine.cpu}, {result['threads']} threads")
    print(f"file parity, 4 files + reference, 64 images, {len(files_record.pairs)} pairs: {files_s:.1f} s (budget 60)")
    print(f"block parity, 2 files, 16 images, {len(blocks_record.blocks)} blocks: {blocks_s:.1f} s (budget 120)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main_()
