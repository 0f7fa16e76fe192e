"""Table 4 measures shipped files: each cell's batch-1 p50 in the grid against `t2tedge profile` of the file
`t2tedge export` writes for it, in one script run.

1. The grid runs (`Grid`, the code behind `t2tedge table4`) on --limit images with a fresh cell cache, reusing the
   artifacts already built under --artifacts (`make table4-imagenette` builds them), so every cell is timed now.
2. For each fp32 cell, `t2tedge export TARGET MODEL.TAG --precision fp32` writes the file again into a fresh folder;
   its sha256 is compared with the cell's.
3. Each exported fp32 file and each quantized cell's file is timed alone by `t2tedge profile` (one process each).

Prints, per runtime: grid p50 vs profile p50 (fp32, the acceptance bound is 15%), and each quantized precision's p50
over fp32, in the grid and alone; writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_common import timed_alone, write_json

from t2tedge.fileio import sha256_file
from t2tedge.harness.table4 import Grid, GridSettings
from t2tedge.harness.table4_grid import SUITES
from t2tedge.models.pretrained import list_pretrained
from t2tedge.targets import get_target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="t2t_vit_7")
    parser.add_argument("--suite", default="imagenette", choices=sorted(SUITES))
    parser.add_argument("--runtimes", default="onnxruntime,openvino,litert,executorch")
    parser.add_argument("--precisions", default="fp32,w8,int8")
    parser.add_argument("--artifacts", type=Path, default=Path("results/imagenette/artifacts"))
    parser.add_argument("--limit", type=int, default=100, help="images the grid evaluates (latency needs none)")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/bench_table4.json"))
    args = parser.parse_args()

    suite = SUITES[args.suite]
    tag = next((t for t in list_pretrained(args.model) if t.endswith(f".{args.suite}")), args.model)
    with tempfile.TemporaryDirectory(prefix="bench-table4-") as tmp:
        settings = GridSettings(data=suite.data(), limit=args.limit, runs=args.runs, threads=args.threads,
                                suite=args.suite)
        grid = Grid([args.model], args.runtimes.split(","), args.precisions.split(","), settings, Path(tmp) / "grid",
                    artifacts=args.artifacts)
        cells = [c for c in grid.run().cells if c.measured]
        rows = []
        for runtime in dict.fromkeys(c.runtime for c in cells):
            target = get_target(runtime)
            mine = {c.precision: c for c in cells if c.runtime == runtime}
            if "fp32" not in mine:
                continue
            export_dir = Path(tmp) / "export" / runtime
            subprocess.run([sys.executable, "-m", "t2tedge.cli", "export", runtime, tag, "--precision", "fp32",
                            "--out", str(export_dir)], check=True, capture_output=True)
            exported = next(p for p in export_dir.iterdir() if target.runs(p))
            files = {"fp32 (export)": exported}
            cell_dirs = {p: next((args.artifacts / runtime).glob(f"{args.model}_{p}_*/{c.artifact}")) for p, c in
                         mine.items() if p != "fp32"}
            files.update({f"{p} (cell)": path for p, path in cell_dirs.items()})
            alone = timed_alone(files, args.model, args.threads, args.runs)
            fp32_alone = alone["fp32 (export)"]["p50_ms"]
            row = {"runtime": runtime, "fp32_grid_ms": mine["fp32"].latency_b1.p50_ms, "fp32_profile_ms": fp32_alone,
                   "same_file": sha256_file(exported) == mine["fp32"].artifact_sha256,
                   "exported": exported.name, "cell_artifact": mine["fp32"].artifact}
            row["grid_over_profile"] = row["fp32_grid_ms"] / fp32_alone
            for precision, cell in mine.items():
                if precision == "fp32":
                    continue
                row[f"{precision}_grid_ms"] = cell.latency_b1.p50_ms
                row[f"{precision}_profile_ms"] = alone[f"{precision} (cell)"]["p50_ms"]
                row[f"{precision}_over_fp32_grid"] = cell.latency_b1.p50_ms / mine["fp32"].latency_b1.p50_ms
                row[f"{precision}_over_fp32_alone"] = alone[f"{precision} (cell)"]["p50_ms"] / fp32_alone
            rows.append(row)
            print(json.dumps(row), flush=True)
    quantized = [p for p in args.precisions.split(",") if p != "fp32"]
    print(f"\n{args.model} ({tag}), {platform.processor() or platform.machine()}, {args.threads} threads, batch 1, "
          f"p50 of {args.runs} runs\n")
    print("| runtime | fp32 grid ms | fp32 profile ms | grid / profile | same file | "
          + " | ".join(f"{p} grid ms | {p}/fp32 grid | {p}/fp32 alone" for p in quantized) + " |")
    print("| --- " * (5 + 3 * len(quantized)) + "|")
    for row in rows:
        extra = " | ".join(
            f"{row[f'{p}_grid_ms']:.2f} | {row[f'{p}_over_fp32_grid']:.2f}x | {row[f'{p}_over_fp32_alone']:.2f}x"
            if f"{p}_grid_ms" in row else "- | - | -" for p in quantized)
        print(f"| {row['runtime']} | {row['fp32_grid_ms']:.2f} | {row['fp32_profile_ms']:.2f} | "
              f"{row['grid_over_profile']:.2f} | {'yes' if row['same_file'] else 'no'} | {extra} |")
    write_json(args.out, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
