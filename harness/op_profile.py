"""`t2tedge profile ARTIFACT --ops`: where the time and memory of one artifact go on this host.

Two passes over the file as it is on disk. First the runtime as `t2tedge profile` loads it: load time, the first
inference, steady-state percentiles and the process's resident memory (before the load, its high-water mark over
the load, over load and runs); the runtime library's import is timed apart, in a fresh process. Then the runtime's own profiler (ONNX Runtime's session profiling, OpenVINO's
performance counters, ExecuTorch's ETDump; `Runtime.trace_ops`) over the same number of runs: each op's mean time,
its model block (`t2tedge.op_blocks`), op type and precision, rolled up, with the ops no block claims listed. A
runtime whose library reports no per-op times gets a record that says so and holds what it does report. Needs no
torch (ExecuTorch aside, whose runtime is torch's).
"""

from __future__ import annotations

import collections
import gc
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from t2tedge import __version__
from t2tedge import metadata_keys as keys
from t2tedge.errors import T2TEdgeError
from t2tedge.harness.latency import machine_info, measure_latency
from t2tedge.harness.profile import artifact_target
from t2tedge.native_output import native_output_captured
from t2tedge.op_blocks import block_of
from t2tedge.results import OpProfileRecord, OpTime, TimeShare

MB = 1024 * 1024


def _status_kb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def resident_mb() -> float:
    """The process's resident set now (Linux); elsewhere its high-water mark."""
    kb = _status_kb("VmRSS")
    return kb / 1024 if kb is not None else peak_resident_mb()


def peak_resident_mb() -> float:
    """The process's resident-set high-water mark since the last `reset_peak_resident` (Linux), else since start."""
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb / 1024
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MB if os.uname().sysname == "Darwin" else peak / 1024


def reset_peak_resident() -> None:
    """Start a new high-water mark (Linux's clear_refs 5); a no-op where the kernel has none."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def library_import_ms(modules: tuple[str, ...]) -> float | None:
    """How long importing `modules` takes in a fresh Python process: what a device app pays before it can load a
    file (this process has them, and this toolkit's own modules, imported already). None when it fails."""
    script = ("import time; start = time.perf_counter()\n"
              + "".join(f"import {module}\n" for module in modules)
              + "print(1e3 * (time.perf_counter() - start))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    try:
        return float(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None
    except (IndexError, ValueError):
        return None


def rollup(ops: Iterable[OpTime], key: Callable[[OpTime], str | None], total: float) -> list[TimeShare]:
    """Rows of (key, summed ms, share of `total`, op count), slowest first; ops whose key is None are left out."""
    ms: collections.Counter[str] = collections.Counter()
    count: collections.Counter[str] = collections.Counter()
    for op in ops:
        name = key(op)
        if name is not None:
            ms[name] += op.ms
            count[name] += 1
    return [TimeShare(name=name, ms=value, share=value / total if total else 0.0, ops=count[name])
            for name, value in ms.most_common()]


def _input_batch(crop: int) -> np.ndarray:
    """A fixed batch-1 NCHW input (what every adapter takes): op times do not depend on pixel values."""
    return np.random.default_rng(0).standard_normal((1, 3, crop, crop)).astype(np.float32)


def profile_ops(path: str | os.PathLike, runtime: str | None = None, model: str | None = None, runs: int = 50,
                warmup: int = 10, threads: int | None = None, **load_options: Any) -> OpProfileRecord:
    """Start-up, memory, latency and per-op times of `path` on this host (see the module's text)."""
    path = Path(path)
    target = artifact_target(path, runtime)
    target.check_load_options(load_options, f" ({path.name})")
    if not path.exists():
        raise T2TEdgeError(f"artifact not found: {path}")
    adapter = target.runtime_class()
    import_ms = library_import_ms(adapter.libraries)
    with native_output_captured():
        for module in adapter.libraries:  # here too, so that `load_ms` is the file's load alone
            try:
                importlib.import_module(module)
            except ImportError:
                pass  # the load names what is missing
    meta = target.read_metadata(path)
    model = model or meta.get(keys.MODEL)
    if not model:
        raise T2TEdgeError(f"{path.name} carries no t2tedge.model metadata; pass --model NAME")
    if keys.PREPROCESS not in meta:
        raise T2TEdgeError(f"{path.name} carries no t2tedge.preprocess metadata; profile the files t2tedge export "
                           f"writes")
    family = meta.get(keys.FAMILY)
    batch = _input_batch(int(json.loads(meta[keys.PREPROCESS])["crop"]))

    gc.collect()
    rss_before = resident_mb()
    reset_peak_resident()
    start = time.perf_counter()
    instance = target.load(path, threads=threads, **load_options)
    load_ms = 1e3 * (time.perf_counter() - start)
    load_peak = peak_resident_mb()
    start = time.perf_counter()
    instance.run(batch)
    first_run_ms = 1e3 * (time.perf_counter() - start)
    latency = measure_latency(instance, batch, warmup=warmup, runs=runs)
    peak = peak_resident_mb()
    description = instance.describe()
    del instance
    gc.collect()

    fields: dict[str, Any] = {
        "version": __version__, "machine": machine_info(), "model": model, "family": family, "runtime": target.name,
        "runtime_version": description.version, "precision": meta.get(keys.PRECISION) or description.precision,
        "artifact": path.name, "artifact_bytes": target.size_bytes(path), "threads": description.threads,
        "import_ms": import_ms, "load_ms": load_ms, "first_run_ms": first_run_ms, "latency_b1": latency,
        "rss_before_load_mb": rss_before, "load_peak_rss_mb": load_peak, "peak_rss_mb": peak, "runs": runs,
        "runtime_info": {k: v for k, v in description.details.items() if k != "artifact"},
    }
    if adapter.op_profiler is None:
        return OpProfileRecord(op_timing=adapter.no_op_timing, **fields)
    trace = adapter.trace_ops(path, batch, runs=runs, warmup=warmup, threads=threads, **load_options)
    ops = [OpTime(name=op.name, op_type=op.op_type, block=block_of(op.module_path, family), precision=op.precision,
                  ms=op.ms, module_path=op.module_path) for op in trace.ops]
    total = sum(op.ms for op in ops)
    return OpProfileRecord(
        op_timing="measured", profiler=trace.profiler, wall_ms=trace.wall_ms, op_sum_ms=total,
        outside_ops=trace.outside_ops, arena_mb=trace.arena_mb, ops=ops,
        blocks=rollup(ops, lambda op: op.block, total), op_types=rollup(ops, lambda op: op.op_type, total),
        precisions=rollup(ops, lambda op: op.precision, total),
        unclaimed=[op.name for op in sorted(ops, key=lambda op: -op.ms) if op.block is None], **fields)


def claimed_share(record: OpProfileRecord) -> float:
    """The share of op time that blocks claim."""
    return sum(row.ms for row in record.blocks) / record.op_sum_ms if record.op_sum_ms else 0.0


def compare_blocks(first: OpProfileRecord, second: OpProfileRecord) -> list[tuple[str, float | None, float | None]]:
    """(block, first's ms, second's ms) for every block either record times, in the first's order, then the
    second's own; "(no block)" for the ops none claims."""
    def table(record: OpProfileRecord) -> dict[str, float]:
        rows = {row.name: row.ms for row in record.blocks}
        unclaimed = sum(op.ms for op in record.ops if op.block is None)
        return {**rows, **({"(no block)": unclaimed} if unclaimed else {})}

    a, b = table(first), table(second)
    return [(name, a.get(name), b.get(name)) for name in [*a, *(n for n in b if n not in a)]]
