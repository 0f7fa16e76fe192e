"""INT8 of one plan on every target (`make bench-int8`): target x model, top-1, agreement with the target's fp32
file, agreement with the ONNX Runtime INT8 file, logits SQNR against the target's fp32 file, batch-1 p50 and its
ratio to that fp32 file, and file size.

Each target's INT8 file is made the way `t2tedge parity --precision int8` makes it (harness/parity.int8_artifacts):
ONNX Runtime's QDQ build computes the plan (calibrated once), OpenVINO runs that file, ExecuTorch applies the plan,
a target without plan support calibrates on its own (said in the row). Peer rows: ExecuTorch's own XNNPACKQuantizer
calibration (what its int8 was before the plan). MobileNetV2 on imagenet-val1300 (calibrated on imagenet-sample),
the trained T2T-ViT-7 subject on Imagenette val (calibrated on Imagenette train). Latency: each file timed by
`t2tedge profile` in a process of its own, two interleaved rounds (the lower p50 counts). Writes
results/bench_int8.json; prints a Markdown table.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from t2tedge.fileio import atomic_write_text
from t2tedge.harness.artifacts import artifact_for
from t2tedge.harness.latency import machine_info
from t2tedge.metrics import sqnr_db
from t2tedge.targets import get_target, target_for_file

from bench_common import bench_arguments, logits_of, planned_model, timed_alone

TARGETS = ("onnxruntime", "openvino", "executorch", "litert")


def executorch_peer(name: str, checkpoint, overrides: dict, calibration, destination: Path) -> Path:
    from t2tedge.targets.executorch import ExecuTorchSettings, write_program

    settings = ExecuTorchSettings(precision="int8", calibration=calibration, progress=False)
    return write_program(name, checkpoint, destination, settings, **overrides)[0]


def main() -> int:
    parser = bench_arguments(__doc__.splitlines()[0], "results/bench_int8.json")
    parser.add_argument("--targets", default=",".join(TARGETS))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        for name in args.models.split(","):
            work = Path(tmp) / name
            targets = [get_target(t) for t in args.targets.split(",")]
            planned = planned_model(name, targets, work, args.limit, args.num_calib)
            checkpoint, overrides, label, calibration = (planned.checkpoint, planned.overrides, planned.label,
                                                         planned.calibration)
            classes, images, labels, int8, how = (planned.classes, planned.images, planned.labels, planned.int8,
                                                  planned.int8_made)
            files = {}
            for target in targets:
                files[f"{target.name} fp32"] = artifact_for(target, name, checkpoint, work / "fp32",
                                                            num_classes=classes)
                files[f"{target.name} int8"] = int8[target.name]
            if not args.skip_peer and "executorch" in args.targets:
                files["executorch int8 (own calibration, peer)"] = executorch_peer(
                    name, checkpoint, overrides, calibration, work / "peer" / f"{name}_int8.pte")
            print(f"{name}: timing {len(files)} files alone ...", flush=True)
            latency = timed_alone(files, name, args.threads, args.runs)
            logits = {v: logits_of(target_for_file(p).load(p, threads=args.threads), images) for v, p in files.items()}
            reference_int8 = logits["onnxruntime int8"]
            for variant, path in files.items():
                target = variant.split()[0]
                fp32 = logits[f"{target} fp32"]
                out = logits[variant]
                row = {"model": name, "weights": label, "variant": variant, "images": len(images),
                       "size_mb": target_for_file(path).size_bytes(path) / 1e6,
                       "top1": float(np.mean(out.argmax(1) == labels)),
                       "agreement_fp32": float(np.mean(out.argmax(1) == fp32.argmax(1))),
                       "agreement_ort_int8": float(np.mean(out.argmax(1) == reference_int8.argmax(1))),
                       "max_abs_vs_ort_int8": float(np.abs(out - reference_int8).max()),
                       "sqnr_db": sqnr_db(fp32, out) if out is not fp32 else None,
                       "made": how.get(target, "") if variant.endswith("int8") else "",
                       **latency[variant],
                       "ratio_to_fp32": latency[variant]["p50_ms"] / latency[f"{target} fp32"]["p50_ms"]}
                rows.append(row)
                print(f"  {variant}: top-1 {100 * row['top1']:.2f}%, fp32 agreement "
                      f"{100 * row['agreement_fp32']:.2f}%, ORT-int8 agreement {100 * row['agreement_ort_int8']:.2f}%, "
                      f"p50 {row['p50_ms']:.2f} ms", flush=True)
    print("\n| model | file | top-1 | agree fp32 | agree ORT int8 | max abs vs ORT int8 | SQNR dB | p50 ms | "
          "x fp32 | MB | INT8 made |")
    print("| --- " * 11 + "|")
    for r in rows:
        sqnr = f"{r['sqnr_db']:.1f}" if r["sqnr_db"] is not None else ""
        print(f"| {r['model']} | {r['variant']} | {100 * r['top1']:.2f}% | {100 * r['agreement_fp32']:.2f}% | "
              f"{100 * r['agreement_ort_int8']:.2f}% | {r['max_abs_vs_ort_int8']:.3f} | {sqnr} | {r['p50_ms']:.2f} | "
              f"{r['ratio_to_fp32']:.2f}x | {r['size_mb']:.1f} | {r['made']} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps({"machine": machine_info().to_dict(), "threads": args.threads,
                                            "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
