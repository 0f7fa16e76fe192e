"""`t2tedge export TARGET MODEL --precision auto`: the precision chosen by the latency measured on this machine.

Every candidate precision the target builds is built from the same request (one calibration set for the INT8
file), timed alone in a process of its own as `t2tedge profile` times it, and scored by top-1 agreement with the
target's own fp32 file on held-out images (drawn from the calibration folder, never calibrated on). The fastest
file that meets the agreement target is written; the others are discarded. The record (`t2tedge.auto-precision/1`)
and its views (a Markdown table, a PNG of agreement against p50) go beside it. No candidate meeting the target is
a data error naming the best one found, and nothing is written.

The candidates are whole files, one precision each; choosing per block (int8 here, fp32 there) by each block's
measured time is not done yet.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from t2tedge import __version__
from t2tedge.batching import run_batched
from t2tedge.data import discover_images, load_batch, split
from t2tedge.errors import DataError, UsageError
from t2tedge.fileio import atomic_write_text, publish_together, staging_dir
from t2tedge.harness.latency import machine_info
from t2tedge.harness.measure import LatencySettings
from t2tedge.harness.timing import time_alone
from t2tedge.results import AutoCandidate, AutoPrecisionRecord
from t2tedge.targets import BuildRequest, Target, build_artifact
from t2tedge.targets.onnx_fed import calibration_folder

AUTO = "auto"
REFERENCE = "fp32"


@dataclass(frozen=True)
class AutoPrecisionSettings:
    """`target_agreement`: top-1 agreement with the fp32 file a candidate must reach; `candidates`: precisions to
    try (None: every precision the target builds and can time here); `num_heldout` images score agreement;
    `runs`/`warmup` time each file; `threads`: intra-op threads of every timing (None: all cores)."""

    target_agreement: float = 0.99
    candidates: tuple[str, ...] | None = None
    num_heldout: int = 200
    runs: int = 30
    warmup: int = 5
    threads: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.target_agreement <= 1:
            raise UsageError(f"--target-agreement must lie in (0, 1], not {self.target_agreement}")


def candidate_precisions(target: Target, asked: Sequence[str] | None) -> tuple[str, ...]:
    """The precisions an auto search of `target` tries: `asked` (each one the target must build and time here),
    or every such precision. The fp32 file is always built: agreement is measured against it."""
    missing = target.unavailable_reason()
    if missing:
        raise UsageError(f"--precision auto times each candidate on this machine, and {target.name} cannot run "
                         f"here: {missing}")
    timeable = [p for p in target.builds if p not in target.not_measured_here]
    if asked is None:
        return tuple(timeable)
    for precision in asked:
        if precision not in target.builds:
            raise UsageError(f"--candidates {precision}: {target.name} does not build it ({target.why_not(precision)})")
        if precision in target.not_measured_here:
            raise UsageError(f"--candidates {precision}: {target.name} cannot time it here "
                             f"({target.not_measured_here[precision]})")
    return tuple(dict.fromkeys(asked))


def choose_fastest(candidates: Sequence[AutoCandidate], target_agreement: float) -> AutoCandidate:
    """The candidate with the lowest p50 among those whose agreement reaches `target_agreement` (ties: the one
    listed first). None does: a DataError naming the best agreement found and its p50."""
    measured = [c for c in candidates if c.p50_ms is not None and c.agreement is not None]
    meeting = [c for c in measured if c.agreement >= target_agreement]
    if meeting:
        return min(meeting, key=lambda c: c.p50_ms)
    if not measured:
        raise DataError("no candidate precision was measured")
    best = max(measured, key=lambda c: (c.agreement, -c.p50_ms))
    raise DataError(f"no candidate reaches top-1 agreement {target_agreement:.4g} with fp32: the best is "
                    f"{best.precision} at {best.agreement:.4f} (p50 {best.p50_ms:.2f} ms); lower --target-agreement "
                    f"or add fp32 to --candidates")


def held_out(calib: Path, count: int, seed: int) -> list:
    """`count` images of the calibration folder drawn with a seed of their own; the builds are told to leave them
    out of calibration (BuildRequest.exclude)."""
    samples = discover_images(calib)
    if len(samples) < 2:
        raise DataError(f"{calib}: --precision auto needs images to calibrate on and others to score agreement on; "
                        f"found {len(samples)}")
    chosen, _ = split(samples, min(count, len(samples) // 2), seed=seed + 7919)
    return chosen


def _logits(target: Target, path: Path, images: np.ndarray, threads: int | None) -> np.ndarray:
    return run_batched(target.load(path, threads=threads), images, 32)


def search(target: Target, request: BuildRequest, settings: AutoPrecisionSettings, preprocess,
           say: Callable[[str], None] = print) -> tuple[Path, AutoPrecisionRecord]:
    """Build, time and score every candidate of `target` for `request` (its precision is ignored), write the
    fastest meeting the agreement target into `request.out_dir` and its record beside it; return both."""
    precisions = candidate_precisions(target, settings.candidates)
    calib = calibration_folder(request)
    samples = held_out(calib, settings.num_heldout, settings.seed)
    images, _ = load_batch(samples, preprocess)
    timing = LatencySettings(warmup=settings.warmup, runs=settings.runs)
    built = {}
    with staging_dir(request.out_dir, "auto") as tmp:
        for precision in dict.fromkeys((REFERENCE, *precisions)):
            say(f"auto: building {target.name} {precision}")
            candidate = replace(request, precision=precision, out_dir=tmp / precision,
                                exclude=tuple(request.exclude) + tuple(samples))
            target.check_request(candidate)
            built[precision] = build_artifact(target, candidate)
        top1 = {REFERENCE: _logits(target, built[REFERENCE], images, settings.threads).argmax(1)}
        rows = []
        for precision in precisions:
            path = built[precision]
            say(f"auto: timing and scoring {path.name}")
            if precision not in top1:  # the fp32 file's predictions are the reference, run once
                top1[precision] = _logits(target, path, images, settings.threads).argmax(1)
            agreement = float(np.mean(top1[precision] == top1[REFERENCE]))
            p50 = time_alone(path, target.name, timing, settings.threads, tmp)["latency_b1"].p50_ms
            rows.append(AutoCandidate(precision=precision, file=path.name, bytes=target.size_bytes(path),
                                      p50_ms=round(p50, 4), agreement=round(agreement, 6),
                                      meets_target=agreement >= settings.target_agreement))
        fp32_p50 = next((r.p50_ms for r in rows if r.precision == REFERENCE), None)
        if fp32_p50 is None:  # fp32 was not a candidate: time it still, for the ratios
            fp32_p50 = time_alone(built[REFERENCE], target.name, timing, settings.threads, tmp)["latency_b1"].p50_ms
        rows = [replace(r, ratio_to_fp32=round(r.p50_ms / fp32_p50, 4)) for r in rows]
        chosen = choose_fastest(rows, settings.target_agreement)  # none: nothing is written
        record = AutoPrecisionRecord(version=__version__, machine=machine_info(), model=request.model,
                                     target=target.name, target_agreement=settings.target_agreement,
                                     images=len(images), threads=settings.threads, runs=settings.runs,
                                     candidates=rows, chosen=chosen.precision)
        path = built[chosen.precision]
        publish_together({p: request.out_dir / p.name for p in target.files(path) if p.exists()})
    final = request.out_dir / path.name
    write_views(record, report_stem(final))
    return final, record


def report_stem(path: Path) -> Path:
    """Where the record of the search that chose `path` goes: `MODEL_P.onnx` -> `MODEL_P.auto` (+ .json/.md/.png)."""
    return path.with_name(path.name.split(".")[0] + ".auto")


def render_markdown(record: AutoPrecisionRecord) -> str:
    lines = [f"# `--precision auto`: {record.model} on {record.target}", "",
             f"{record.machine.cpu}, {record.threads or 'all'} threads, batch 1, each file timed alone "
             f"({record.runs} runs); agreement: top-1 with the fp32 file on {record.images} held-out images; "
             f"target {record.target_agreement:.4g}.", "",
             "| precision | file | MB | p50 ms | x fp32 | agreement | meets target |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for c in record.candidates:
        mark = " **chosen**" if c.precision == record.chosen else ""
        lines.append(f"| {c.precision}{mark} | `{c.file}` | {c.bytes / 1e6:.1f} | {c.p50_ms:.2f} | "
                     f"{c.ratio_to_fp32:.2f} | {100 * c.agreement:.2f}% | {'yes' if c.meets_target else 'no'} |")
    lines += ["", f"Chosen: {record.chosen} (the fastest file meeting the target)."]
    return "\n".join(lines) + "\n"


def render_png(record: AutoPrecisionRecord, path: Path) -> bool:
    """Agreement against p50, one point per candidate, the target as a line; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for c in record.candidates:
        ax.scatter(c.p50_ms, 100 * c.agreement, s=60 if c.precision == record.chosen else 30,
                   color="tab:green" if c.meets_target else "tab:red")
        ax.annotate(c.precision, (c.p50_ms, 100 * c.agreement), textcoords="offset points", xytext=(5, 5))
    ax.axhline(100 * record.target_agreement, color="grey", linestyle="--", label="agreement target")
    low = min([100 * record.target_agreement] + [100 * c.agreement for c in record.candidates])
    ax.set_ylim(max(0.0, low - 1), 100.5)
    ax.set_xlabel("batch-1 p50 (ms), lower is better")
    ax.set_ylabel("top-1 agreement with fp32 (%)")
    ax.set_title(f"{record.model} on {record.target}: {record.machine.cpu}", fontsize=9)
    ax.legend(loc="lower right")
    fig.tight_layout()
    from t2tedge.fileio import atomic_path

    with atomic_path(path, suffix=".png") as out:
        fig.savefig(out)
    plt.close(fig)
    return True


def write_views(record: AutoPrecisionRecord, stem: Path) -> list[Path]:
    """`STEM.json` (the record), `STEM.md`, and `STEM.png` where matplotlib is installed."""
    written = [stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".md")]
    atomic_write_text(written[0], record.to_json())
    atomic_write_text(written[1], render_markdown(record))
    png = stem.with_name(stem.name + ".png")
    if render_png(record, png):
        written.append(png)
    return written
