"""PTQ benchmark: plain onnxruntime.quantization (the peer rows) against t2t-edge's quantizer, same run.

Per model: fp32, then ORT `quantize_static` in QDQ with its defaults except the noted setting (per-tensor
MinMax, per-channel MinMax, per-channel Entropy, per-channel Percentile), then ours (`t2tedge quantize`
defaults: per-channel weights, ReLU6 folded, MSE activation ranges, GPTQ weight rounding, bias correction
where it helps, float logits), and
ours with round-to-nearest weights (same ranges) to show what GPTQ adds. Same calibration images for all (a
seeded subset of imagenet-sample), evaluated on imagenet-val1300: top-1, delta vs fp32, top-1 agreement
with fp32, logits SQNR, and ORT batch-1 latency p50 (one session at a time). The peers calibrate through ORT's
own `CalibStridedMinMax` windows (any method): in one pass ORT keeps every intermediate output of all 256
images, which exhausts 24 GiB on T2T-ViT-7. No official T2T-ViT weights reach this machine: T2T-ViT-7 is the project's own
Imagenette-trained subject (tag t2t_vit_7.imagenette), calibrated on 256 Imagenette train images and evaluated on Imagenette val
(10 classes); `--trained-like` (or a model without such a subject) uses seeded trained-like random weights instead,
scored by agreement and SQNR on imagenet-val1300 only. Prints a table; writes results/bench_ptq.json. `make bench-ptq`.

`--runtime openvino` (`make bench-openvino`) scores on OpenVINO (f32 precision hint) instead: fp32, NNCF's own
`nncf.quantize` on the same calibration images (transformer preset for T2T-ViT, its default for the MobileNets) as
the peer, and `t2tedge quantize --target openvino`; then the fp32 and our INT8 files again on ONNX Runtime, so
one run compares the two runtimes on the same files. These files have a static batch of 1, as `export onnx` writes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from t2tedge.data import Sample, discover, evenly_spread, load_batch
from t2tedge.export import OnnxExportOptions, export_onnx
from t2tedge.export.ort_optimize import optimize_for_onnxruntime
from t2tedge.fileio import atomic_write_text
from t2tedge.harness.latency import machine_info, measure_latency
from t2tedge.models import default_checkpoint, get_spec, trained_subject
from t2tedge.paths import shared_path
from t2tedge.quantize import ImageCalibrationReader, calibration_samples, preset, quantize_onnx
from t2tedge.quantize.ptq import _quiet_ort_logging
from t2tedge.quantize.ranges import WINDOW_IMAGES
from t2tedge.metrics import sqnr_db
from t2tedge.runtimes.onnxruntime_cpu import OnnxRuntimeCPU

RUNTIMES = {"onnxruntime": OnnxRuntimeCPU}

PEERS = [  # (row name, per_channel, ORT calibration method)
    ("ORT per-tensor MinMax", False, "MinMax"),
    ("ORT per-channel MinMax", True, "MinMax"),
    ("ORT per-channel Entropy", True, "Entropy"),
    ("ORT per-channel Percentile", True, "Percentile"),
]


def plain_ort(fp32: Path, out: Path, reader, per_channel: bool, method: str) -> None:
    """What a user gets from onnxruntime.quantization directly: QDQ, its default types and op set."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    window = next(w for w in range(WINDOW_IMAGES, 0, -1) if len(reader) % w == 0)  # ORT needs a divisor
    with _quiet_ort_logging(), contextlib.redirect_stdout(io.StringIO()):
        quantize_static(str(fp32), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        calibrate_method=getattr(CalibrationMethod, method),
                        extra_options={"CalibStridedMinMax": window})


@dataclass
class Subject:
    checkpoint: Path
    weights: str
    evaluation: list[Sample]
    calibration: list[Sample]
    num_classes: int
    scored_by_top1: bool


def subject_for(name: str, workdir: Path, num_calib: int, limit: int | None, trained_like: bool) -> Subject:
    real = default_checkpoint(name)
    trained = None if trained_like else trained_subject(name)
    if trained is not None:
        evaluation = evenly_spread(discover(trained.val, num_classes=trained.num_classes), limit)
        calibration = calibration_samples(trained.train, num_calib)
        return Subject(trained.checkpoint, f"own: {trained.note}", evaluation, calibration, trained.num_classes, True)
    evaluation = evenly_spread(discover(shared_path("data", "imagenet-val1300")), limit)
    calibration = calibration_samples(shared_path("data", "imagenet-sample"), num_calib, exclude=evaluation)
    if real is not None:
        return Subject(real, "trained (ImageNet)", evaluation, calibration, 1000, True)
    from t2tedge.models.synthetic import trained_like_state_dict

    path = workdir / f"{name}_trained_like.pth"
    torch.save(trained_like_state_dict(name), path)
    return Subject(path, "trained-like random", evaluation, calibration, 1000, False)


def nncf_peer(name: str, fp32: Path, out: Path, calibration: np.ndarray) -> str:
    """What a user gets from NNCF directly on the OpenVINO model of our fp32 export; returns the row's label."""
    import nncf
    import openvino as ov

    transformer = get_spec(name).family == "T2T-ViT"
    options = {"model_type": nncf.ModelType.TRANSFORMER} if transformer else {}
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        quantized = nncf.quantize(ov.Core().read_model(str(fp32)), nncf.Dataset([image[None] for image in calibration]),
                                  subset_size=len(calibration), **options)
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    return f"NNCF, {'transformer' if transformer else 'default'} preset"


def score(path: Path, images: np.ndarray, labels: np.ndarray, reference: np.ndarray | None, threads: int,
          runs: int, runtime_name: str = "onnxruntime") -> dict:
    if runtime_name == "onnxruntime":  # ONNX Runtime times the file `t2tedge optimize` writes for it
        path = optimize_for_onnxruntime(path)[0]
    runtime = RUNTIMES[runtime_name].load(path, threads=threads)
    logits = np.concatenate([runtime.run(images[i:i + 64]) for i in range(0, len(images), 64)])
    row = {"top1": float(np.mean(logits.argmax(1) == labels)), "logits": logits,
           "latency_p50_ms": measure_latency(runtime, images[:1], warmup=10, runs=runs).p50_ms}
    if reference is not None:
        row["agreement"] = float(np.mean(logits.argmax(1) == reference.argmax(1)))
        row["sqnr_db"] = sqnr_db(reference, logits)
    del runtime
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenet_v2_100,mobilenet_v1_100,t2t_vit_7")
    parser.add_argument("--num-calib", type=int, default=256)
    parser.add_argument("--limit", type=int, help="N evaluation images, evenly spread")
    parser.add_argument("--trained-like", action="store_true",
                        help="T2T-ViT on seeded trained-like random weights instead of the Imagenette-trained subject")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--runtime", choices=("onnxruntime", "openvino"), default="onnxruntime",
                        help="score on this runtime; openvino compares against NNCF instead of onnxruntime.quantization")
    parser.add_argument("--out", type=Path, default=Path("results/bench_ptq.json"))
    args = parser.parse_args()
    if args.runtime == "openvino":
        from t2tedge.runtimes.openvino import OpenVINO

        RUNTIMES["openvino"] = OpenVINO
    rows, evaluated = [], {}
    print(f"{'model':18} {'variant':28} {'top-1':>7} {'delta':>7} {'agree':>7} {'SQNR dB':>8} {'p50 ms':>7} {'vs fp32':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.models.split(","):
            spec = get_spec(name)
            subject = subject_for(name, work, args.num_calib, args.limit, args.trained_like)
            trained = subject.scored_by_top1
            evaluated[name] = {"weights": subject.weights, "evaluation_images": len(subject.evaluation),
                               "evaluation_folder": str(subject.evaluation[0].path.parent.parent),
                               "calibration_images": len(subject.calibration)}
            images, labels = load_batch(subject.evaluation, spec.preprocess)
            overrides = {"num_classes": subject.num_classes} if subject.num_classes != 1000 else {}
            # OpenVINO compiles a dynamic-batch file with dynamic-shape kernels: INT8 T2T-ViT-7 took 12.4 ms there
            # against 10.0 ms for the static batch-1 file `export onnx` writes by default, so it times those.
            static = args.runtime == "openvino"
            fp32 = export_onnx(name, subject.checkpoint, out_dir=work,
                               options=OnnxExportOptions(dynamic_batch=not static), **overrides)
            reader = ImageCalibrationReader(subject.calibration, spec.preprocess, batch=1 if static else 16,
                                            progress=None)
            run = args.runtime
            base = score(fp32, images, labels, None, args.threads, args.runs, run)
            variants = [("fp32", base)]
            if run == "onnxruntime":
                for label, per_channel, method in PEERS:
                    out = work / f"{name}_{method}_{per_channel}.onnx"
                    reader.rewind()
                    plain_ort(fp32, out, reader, per_channel, method)
                    variants.append((label, score(out, images, labels, base["logits"], args.threads, args.runs)))
                ours_variants = (("t2t-edge, nearest rounding", "nearest"), ("t2t-edge default", "gptq"))
            else:
                calibration, _ = load_batch(subject.calibration, spec.preprocess)
                label = nncf_peer(name, fp32, work / f"{name}_nncf.xml", calibration)
                variants.append((label, score(work / f"{name}_nncf.xml", images, labels, base["logits"], args.threads,
                                              args.runs, run)))
                ours_variants = (("t2t-edge --target openvino", "gptq"),)
            for label, rounding in ours_variants:
                reader.rewind()
                ours = work / f"{name}_ours_{rounding}.onnx"
                quantize_onnx(fp32, ours, reader, preset(run, weight_rounding=rounding),
                              ranges_cache=work / f"{name}_ranges.json")
                variants.append((label, score(ours, images, labels, base["logits"], args.threads, args.runs, run)))
            if run == "openvino":  # the same two files on ONNX Runtime, for the runtime comparison
                ort_fp32 = score(fp32, images, labels, base["logits"], args.threads, args.runs)
                variants.append(("fp32 on onnxruntime", ort_fp32))
                variants.append(("t2t-edge INT8 on onnxruntime",
                                 score(ours, images, labels, base["logits"], args.threads, args.runs)))
            for label, row in variants:
                row.pop("logits")
                entry = {"model": name, "variant": label, "weights": subject.weights,
                         **row, "latency_vs_fp32": row["latency_p50_ms"] / base["latency_p50_ms"]}
                rows.append(entry)
                top1 = f"{100 * row['top1']:6.2f}%" if trained else "    -  "
                delta = f"{100 * (row['top1'] - base['top1']):+6.2f}" if trained and label != "fp32" else "    -  "
                agree = f"{100 * row['agreement']:6.2f}%" if "agreement" in row else "    -  "
                sqnr = f"{row['sqnr_db']:8.1f}" if "sqnr_db" in row else "       -"
                print(f"{name:18} {label:28} {top1:>7} {delta:>7} {agree:>7} {sqnr} {row['latency_p50_ms']:7.2f} "
                      f"{entry['latency_vs_fp32']:6.2f}x", flush=True)
    report = {"machine": machine_info().to_dict(), "runtime": args.runtime, "subjects": evaluated,
              "calibration_images": args.num_calib, "threads": args.threads, "rows": rows}
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
