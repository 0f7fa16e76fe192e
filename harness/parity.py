"""Runtime parity: the same real images through several runtimes, compared pairwise with the first.

Default tolerances per precision of the compared runtime (documented in docs/runtimes.md):
- fp32: max abs diff <= 1e-4 and top-1 agreement 100%;
- fp16: cosine >= 0.999 and top-1 agreement >= 99%;
- bf16: cosine >= 0.99 and top-1 agreement >= 95%;
- int8: cosine >= 0.98 and top-1 agreement >= 90% (an INT8 file against the fp32 reference);
- int8 files of two runtimes made from one quantization plan (`--precision int8`): top-1 agreement >= 98% and
  cosine >= 0.99, set from the spread of kernels' rounding measured in docs/quantization-plan.md.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from t2tedge.data import discover, load_batch, split
from t2tedge.errors import RuntimeUnavailable, T2TEdgeError, UsageError
from t2tedge.fileio import temp_staging_dir
from t2tedge.harness.artifacts import artifact_for, takes_onnx
from t2tedge.models import get_spec
from t2tedge.targets import DEFAULT_NUM_CALIB, BuildRequest, get_target, int8_origin, int8_prerequisite, int8_request

TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"max_abs": 1e-4, "top1_agreement": 1.0},
    "fp16": {"cosine": 0.999, "top1_agreement": 0.99},
    # bf16 keeps 8 significant bits: OpenVINO's bf16 path measured 20-44 dB logits SQNR (MobileNetV2, T2T-ViT-7).
    "bf16": {"cosine": 0.99, "top1_agreement": 0.95},
    "int8": {"cosine": 0.98, "top1_agreement": 0.90},
    # Two runtimes' INT8 files of one plan: what differs is each kernel's rounding and what a runtime did not honour.
    "int8_vs_int8": {"cosine": 0.99, "top1_agreement": 0.98},
    # LiteRT's dynamic-range int8 (int8 weights, activations quantized per batch by the kernels).
    "w8": {"cosine": 0.98, "top1_agreement": 0.90},
}


@dataclass
class PairReport:
    reference: str
    candidate: str
    precision: str
    max_abs: float
    mean_abs: float
    max_rel: float
    cosine: float
    top1_agreement: float
    top5_overlap: float
    tolerance: dict[str, float]
    passed: bool
    failures: list[str] = field(default_factory=list)


def compare(reference: np.ndarray, candidate: np.ndarray, precision: str = "fp32",
            tolerance: dict[str, float] | None = None) -> dict[str, Any]:
    """Polygraphy-style comparison of two logit arrays (N, classes)."""
    if reference.shape != candidate.shape:
        raise T2TEdgeError(f"output shapes differ: {reference.shape} vs {candidate.shape}")
    ref, cand = reference.astype(np.float64), candidate.astype(np.float64)
    diff = np.abs(ref - cand)
    finite = bool(np.isfinite(cand).all())
    cos = np.sum(ref * cand, axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1) + 1e-30)
    top5_ref, top5_cand = np.argsort(-ref, axis=1)[:, :5], np.argsort(-cand, axis=1)[:, :5]
    overlap = np.mean([len(set(a) & set(b)) / 5.0 for a, b in zip(top5_ref, top5_cand)])
    metrics = {
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "max_rel": float((diff / (np.abs(ref) + 1e-6)).max()),
        "cosine": float(cos.min()),
        "top1_agreement": float(np.mean(ref.argmax(1) == cand.argmax(1))),
        "top5_overlap": float(overlap),
    }
    tolerance = tolerance or TOLERANCES.get(precision, TOLERANCES["fp32"])
    failures = [] if finite else ["non-finite outputs"]
    for key, bound in tolerance.items():
        value = metrics[key]
        if (key in ("max_abs", "mean_abs", "max_rel") and not value <= bound) or \
                (key not in ("max_abs", "mean_abs", "max_rel") and not value >= bound):
            failures.append(f"{key}={value:.6g} (limit {bound:g})")
    return {**metrics, "tolerance": tolerance, "passed": not failures, "failures": failures}


def parity_images(model_name: str, data: str | os.PathLike, n: int, seed: int = 0,
                  num_classes: int = 1000) -> tuple[np.ndarray, list[Any]]:
    """(the images, their samples): `n` drawn from `data` with `seed`."""
    samples = discover(data, num_classes=num_classes)
    chosen, _ = split(samples, min(n, len(samples)), seed=seed)
    images, _ = load_batch(chosen, get_spec(model_name).preprocess)
    return images, list(chosen)


def int8_artifacts(targets: Sequence[Any], model_name: str, checkpoint: str | os.PathLike | None, work: Path,
                   calib: str | os.PathLike | None, num_calib: int, exclude: Sequence[Any], num_classes: int
                   ) -> tuple[dict[str, Path], dict[str, str]]:
    """Each target's INT8 file as `export` makes it, the plan-making target's QDQ file built once and every other
    target starting from it as `Target.int8_from` says. Returns ({target: file}, {target: how its INT8 was made})."""
    common = dict(model=model_name, precision="int8", checkpoint=Path(checkpoint) if checkpoint else None,
                  calib=Path(calib) if calib else None, num_calib=num_calib, exclude=tuple(exclude),
                  num_classes=num_classes)
    built: dict[str, Path] = {}

    def file_of(target) -> Path:
        if target.name not in built:
            request = BuildRequest(out_dir=work / target.name, **common)
            target.check_request(request)
            before = int8_prerequisite(target, request)
            if before is not None:
                request = int8_request(target, request, file_of(before))
            built[target.name] = target.build(request)
        return built[target.name]

    files = {target.name: file_of(target) for target in targets if not target.reference}
    how = {target.name: int8_origin(target) for target in targets if not target.reference}
    return files, how


def run_batched(runtime, images: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([runtime.run(images[i:i + batch]) for i in range(0, len(images), batch)])


def run_parity(model_name: str, runtimes: Sequence[str], data: str | os.PathLike, n: int = 64, batch: int = 1,
               checkpoint: str | os.PathLike | None = None, onnx_path: str | os.PathLike | None = None,
               threads: int | None = None, workdir: str | os.PathLike | None = None,
               load_options: dict[str, dict[str, Any]] | None = None, num_classes: int = 1000,
               precision: str = "fp32", calib: str | os.PathLike | None = None, num_calib: int = DEFAULT_NUM_CALIB
               ) -> dict[str, Any]:
    """Run `runtimes` (targets) on the same images, each on the file `t2tedge export` writes for it; the first is
    the reference. Returns the JSON-ready report. `load_options`: target name -> options for its `load` (e.g.
    {"openvino": {"precision_hint": "bf16"}}), checked before any work. `num_classes`: the checkpoint's classifier
    size (10 for a fine-tune). `precision` int8: every runtime runs its INT8 file of one plan (calibrated on
    `calib`, never on the compared images), and every pair is compared, not only pairs with the first."""
    if len(runtimes) < 2:
        raise UsageError("parity needs at least two runtimes, e.g. --runtimes torch,onnxruntime")
    targets = [get_target(name) for name in runtimes]
    for target in targets:
        target.check_load_options((load_options or {}).get(target.name, {}))
    refused = [t.name for t in targets if onnx_path is not None and not t.reference and not takes_onnx(t)]
    if refused:
        raise UsageError(f"--onnx goes with runtimes that run ONNX files; {', '.join(refused)} build their own from "
                         f"the model (drop --onnx, or leave them out)")
    if precision not in ("fp32", "int8"):
        raise UsageError(f"parity compares fp32 or int8 files, not {precision}")
    if precision == "int8" and (onnx_path is not None or any(t.reference for t in targets)):
        raise UsageError("parity --precision int8 compares the INT8 files of runtimes users ship: leave out torch "
                         "and --onnx")
    images, chosen = parity_images(model_name, data, n)
    outputs: dict[str, np.ndarray] = {}
    described: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    how: dict[str, str] = {}
    with temp_staging_dir("parity") as tmp:
        work = Path(workdir) if workdir else Path(tmp)
        available = []
        for target in targets:
            try:
                target.runtime_class()
                available.append(target)
            except RuntimeUnavailable as exc:
                skipped[target.name] = str(exc)
        files: dict[str, Path] = {}
        if precision == "int8":
            files, how = int8_artifacts(available, model_name, checkpoint, work, calib, num_calib, chosen,
                                        num_classes)
        for target in available:
            name = target.name
            artifact = files.get(name) or artifact_for(target, model_name, checkpoint, work,
                                                       onnx_path=None if target.reference else onnx_path,
                                                       num_classes=num_classes)
            runtime = target.load(artifact, threads=threads, **(load_options or {}).get(name, {}))
            outputs[name] = run_batched(runtime, images, batch)
            described[name] = runtime.describe().to_dict()
    reference = targets[0].name
    if reference not in outputs:
        raise T2TEdgeError(f"the reference runtime {reference!r} is unavailable: {skipped[reference]}")
    names = [t.name for t in targets if t.name in outputs]
    compared = ([(a, b) for i, a in enumerate(names) for b in names[i + 1:]] if precision == "int8"
                else [(reference, b) for b in names[1:]])
    pairs = []
    for first, second in compared:
        held = described[second]["precision"]
        tolerance = TOLERANCES["int8_vs_int8"] if precision == "int8" else None
        result = compare(outputs[first], outputs[second], held, tolerance)
        pairs.append(asdict(PairReport(reference=first, candidate=second, precision=held, **result)))
    return {
        "model": model_name, "images": len(images), "batch": batch, "data": str(data), "precision": precision,
        "checkpoint": str(checkpoint) if checkpoint else "untrained (random init)",
        "runtimes": described, "skipped": skipped, "pairs": pairs, "int8_made": how,
        "passed": all(p["passed"] for p in pairs),
    }


def format_report(report: dict[str, Any]) -> str:
    header = (f"parity {report['model']}: {report['images']} images, batch {report['batch']}, "
              f"weights {report['checkpoint']}")
    columns = ["pair", "prec", "max_abs", "mean_abs", "max_rel", "cos_min", "top1_agree", "top5_overlap", "result"]
    rows = [columns]
    for p in report["pairs"]:
        rows.append([f"{p['reference']} vs {p['candidate']}", p["precision"], f"{p['max_abs']:.3e}",
                     f"{p['mean_abs']:.3e}", f"{p['max_rel']:.3e}", f"{p['cosine']:.6f}",
                     f"{100 * p['top1_agreement']:.1f}%", f"{100 * p['top5_overlap']:.1f}%",
                     "PASS" if p["passed"] else "FAIL: " + "; ".join(p["failures"])])
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns) - 1)]
    lines = [header] + ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    lines += [f"skipped {name}: {reason}" for name, reason in report["skipped"].items()]
    lines += [f"int8 {name}: {how}" for name, how in report.get("int8_made", {}).items()]
    return "\n".join(lines)


def write_report(report: dict[str, Any], path: str | os.PathLike) -> None:
    from t2tedge.fileio import atomic_write_text

    atomic_write_text(path, json.dumps(report, indent=2, sort_keys=True) + "\n")
