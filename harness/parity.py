"""Runtime parity on one model: the same real images through several runtimes, each on the file `t2tedge export`
writes for it, compared pairwise with the first (`t2tedge parity MODEL`; the files users ship:
t2tedge.harness.file_parity). Tolerances: t2tedge.harness.comparison."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from t2tedge.data import discover, load_batch, split
from t2tedge.errors import RuntimeUnavailable, T2TEdgeError, UsageError
from t2tedge.fileio import temp_staging_dir
from t2tedge.harness.artifacts import artifact_for, takes_onnx
from t2tedge.batching import run_batched
from t2tedge.harness.comparison import compare_pair
from t2tedge.models import get_spec
from t2tedge.targets import DEFAULT_NUM_CALIB, BuildRequest, get_target, int8_origin, int8_prerequisite, int8_request


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
        key = "int8_vs_int8" if precision == "int8" else described[second]["precision"]
        pairs.append(compare_pair(first, second, outputs[first], outputs[second], key).to_dict())
    return {
        "model": model_name, "images": len(images), "batch": batch, "data": str(data), "precision": precision,
        "checkpoint": str(checkpoint) if checkpoint else "untrained (random init)",
        "runtimes": described, "skipped": skipped, "pairs": pairs, "int8_made": how,
        "passed": all(p["passed"] for p in pairs),
    }


def format_report(report: dict[str, Any]) -> str:
    header = (f"parity {report['model']}: {report['images']} images, batch {report['batch']}, "
              f"weights {report['checkpoint']}")
    columns = ["pair", "tolerance", "max_abs", "mean_abs", "max_rel", "cos_min", "top1_agree", "top5_overlap", "result"]
    rows = [columns]
    for p in report["pairs"]:
        rows.append([f"{p['first']} vs {p['second']}", p["tolerance_key"], f"{p['max_abs']:.3e}",
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
