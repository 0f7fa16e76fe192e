"""Time one artifact in a process of its own, the way `t2tedge profile` times it: the Table 4 grid's process holds
every earlier cell's runtime and its thread pools, which would run beside the timing. Needs no torch for files
other than the torch reference.

    python -m t2tedge.harness.timing FILE TARGET RUNS WARMUP THREADS OUT.json   (THREADS 0: all cores)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from t2tedge import metadata_keys as keys
from t2tedge.errors import T2TEdgeError
from t2tedge.fileio import atomic_write_text, staging_dir
from t2tedge.harness.measure import LatencySettings, measure_speed
from t2tedge.results import LatencyStats
from t2tedge.targets import get_target


def time_here(path: Path, target_name: str, settings: LatencySettings, threads: int | None) -> dict[str, Any]:
    target = get_target(target_name)
    preprocess = SimpleNamespace(**json.loads(target.read_metadata(path)[keys.PREPROCESS]))
    instance = target.load(path, threads=threads)
    fields = measure_speed(instance, preprocess, settings)
    fields["runtime_info"]["details"].pop("artifact", None)
    return fields


def time_alone(path: Path, target_name: str, settings: LatencySettings, threads: int | None,
               workdir: Path) -> dict[str, Any]:
    """`time_here` in a fresh Python process; the fields of a Table 4 cell's speed."""
    with staging_dir(workdir, "timing") as tmp:
        out = tmp / "timing.json"
        done = subprocess.run([sys.executable, "-m", "t2tedge.harness.timing", str(path), target_name,
                               str(settings.runs), str(settings.warmup), str(threads or 0), str(out)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            raise T2TEdgeError(f"timing {path.name} alone failed: {lines[-1] if lines else done.returncode}")
        data = json.loads(out.read_text())
    return {"latency_b1": LatencyStats.from_dict(data["latency_b1"]), "throughput_b8_ips": data["throughput_b8_ips"],
            "runtime_info": data["runtime_info"]}


def main(argv: list[str]) -> int:
    path, target_name, runs, warmup, threads, out = argv
    fields = time_here(Path(path), target_name, LatencySettings(warmup=int(warmup), runs=int(runs)),
                       int(threads) or None)
    atomic_write_text(out, json.dumps({**fields, "latency_b1": fields["latency_b1"].to_dict()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
