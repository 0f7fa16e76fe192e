"""Latency in the conventions of onnxruntime_perf_test / trtexec: warm-up, then a fixed count, percentiles."""

from __future__ import annotations

import os
import platform
import time

import numpy as np

from t2tedge.fileio import hostname_digest
from t2tedge.results import LatencyStats, MachineInfo


def measure_latency(runtime, batch: np.ndarray, warmup: int = 10, runs: int = 50) -> LatencyStats:
    for _ in range(warmup):
        runtime.run(batch)
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        runtime.run(batch)
        times[i] = (time.perf_counter() - start) * 1e3
    return LatencyStats(min_ms=float(times.min()), p50_ms=float(np.percentile(times, 50)),
                        p90_ms=float(np.percentile(times, 90)), p99_ms=float(np.percentile(times, 99)),
                        mean_ms=float(times.mean()), runs=runs, warmup=warmup)


# Set by `make arm-check` for runs under qemu-user: the emulated CPU, named in every record as emulated, so its
# latency never reads as a real device's.
EMULATED = "T2TEDGE_EMULATED"


def machine_info() -> MachineInfo:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    if os.environ.get(EMULATED):
        cpu = f"{os.environ[EMULATED]} (emulated)"
    return MachineInfo(cpu=cpu, cores=os.cpu_count(), system=f"{platform.system()} {platform.release()}",
                       python=platform.python_version(), hostname_hash=hostname_digest())
