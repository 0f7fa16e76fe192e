"""`make arm-check`: T2T-ViT-7 (the Imagenette subject) and MobileNetV2, fp32 and int8, for ONNX Runtime (.onnx and
.ort), LiteRT and ExecuTorch, on x86 and under emulated ARM CPUs (qemu-user), with the device bundle run by its own runner there.

Builds the ARM environment once under .arm-env/ (t2tedge.harness.arm_env; a second run reuses it), exports the
files with `t2tedge export`, and writes OUT/arm-check.json (t2tedge.arm-check/1), OUT/arm-check.md and the bundle's
profile records (OUT/profiles/*.json, latency marked emulated; `t2tedge table4 --merge` takes them).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    from t2tedge.cli import main as t2tedge
    from t2tedge.fileio import atomic_write_text
    from t2tedge.harness.arm_check import ArmCheckSettings, render_markdown, run_arm_check
    from t2tedge.harness.arm_env import CPUS, build_env
    from t2tedge.models import trained_subject
    from t2tedge.ort_int8_weights import int8_dot_may_saturate
    from t2tedge.paths import shared_path
    from t2tedge.targets import get_target

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "arm-check")
    parser.add_argument("--env", type=Path, default=ROOT / ".arm-env", help="where the ARM environment lives")
    parser.add_argument("--limit", type=int, default=64, help="images per model (default: %(default)s)")
    parser.add_argument("--cpus", default=",".join(CPUS), help="emulated CPU models (default: %(default)s)")
    parser.add_argument("--models", default="t2t_vit_7.imagenette,mobilenet_v2_100")
    parser.add_argument("--targets", default="onnxruntime,ort,litert,executorch",
                        help="onnxruntime (.onnx), ort (ONNX Runtime format, ARM-optimized), litert (.tflite), "
                             "executorch (.pte, XNNPACK)")
    parser.add_argument("--precisions", default="fp32,int8")
    args = parser.parse_args()
    start = time.perf_counter()
    env = build_env(args.env)
    built = time.perf_counter() - start
    subject = trained_subject("t2t_vit_7")
    data = {"t2t_vit_7.imagenette": subject.val if subject else None}
    records, profiles = [], []
    work = args.out / "work"
    shutil.rmtree(work, ignore_errors=True)
    for model in args.models.split(","):
        folder = data.get(model) or shared_path("data", "imagenet-val1300")
        files, stand_ins = [], {}
        for target in args.targets.split(","):
            for precision in args.precisions.split(","):
                # ort: ONNX Runtime's own format, converted from the .onnx with ARM's optimizations baked in.
                builder = "onnxruntime" if target == "ort" else target
                out = work / "files" / builder
                stem = model.split(".")[0] + ("" if precision == "fp32" else f"_{precision}")
                made = out / (stem + get_target(builder).suffixes[0])  # the file `build` writes
                calib = ["--num-calib", "64"] if precision == "int8" else []
                if not made.is_file() and t2tedge(["export", builder, model, "--precision", precision, "--out",
                                                   str(out), *calib]) != 0:
                    return 1
                if target == "ort":
                    if t2tedge(["export", "ort", str(made), "--platform", "arm", "--out", str(work / "files" / "ort")]):
                        return 1
                    source, made = made, work / "files" / "ort" / (stem + ".ort")
                    if precision == "int8" and int8_dot_may_saturate():
                        stand_ins[made.name] = source
                files.append(made)
        settings = ArmCheckSettings(data=folder, limit=args.limit, cpus=tuple(args.cpus.split(",")))
        record, model_profiles = run_arm_check(env, files, settings, work / "arm", say=print, x86_stand_ins=stand_ins)
        records.append(record)
        profiles.extend(model_profiles)
    record = dataclasses.replace(records[0], data="; ".join(r.data for r in records),
                                 rows=[row for r in records for row in r.rows],
                                 seconds={k: v for r in records for k, v in r.seconds.items()},
                                 profiles=[line for r in records for line in r.profiles])
    (args.out / "profiles").mkdir(parents=True, exist_ok=True)
    for profile in profiles:
        atomic_write_text(args.out / "profiles" / f"{profile.cell.artifact}_{profile.machine.cpu.split()[0]}.json",
                          profile.to_json())
    atomic_write_text(args.out / "arm-check.json", record.to_json())
    atomic_write_text(args.out / "arm-check.md", render_markdown(record) +
                      f"\nEnvironment: {'reused' if built < 5 else f'built in {built:.0f} s'}; whole run "
                      f"{time.perf_counter() - start:.0f} s.\n")
    broken = [r for r in record.rows if r.verdict == "broken"]
    not_run = [r for r in record.rows if r.verdict == "not run"]
    print(f"wrote {args.out / 'arm-check.md'}: {len(record.rows)} file x CPU rows, {len(broken)} broken, "
          f"{len(not_run)} not run")
    # Broken kernels fail the check; so does an environment in which nothing ran.
    return 1 if broken or len(not_run) == len(record.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
