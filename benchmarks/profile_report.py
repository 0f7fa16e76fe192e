"""`make profile-report`: where the time goes, per block and op type, for T2T-ViT-7 and MobileNetV2, fp32 and INT8,
on every CPU runtime here; writes docs/results/DATE-op-profile.md and its PNGs.

Builds the files with `t2tedge export` (kept in --work; existing files are reused), then runs
`t2tedge profile FILE --ops` on each in a process of its own, one after another (time it alone on the machine),
and `t2tedge profile --compare` for each runtime's fp32 and INT8 records.

    python benchmarks/profile_report.py [--work DIR] [--runs 50] [--threads 2] [--num-calib 64]
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
from pathlib import Path

from t2tedge.harness.op_profile import claimed_share
from t2tedge.results import OpProfileRecord

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"t2t_vit_7.imagenette": "t2t_vit_7", "mobilenet_v2_100.tf_in1k": "mobilenet_v2_100"}
# target -> (suffix of the file it writes, built from the ONNX Runtime file of the same precision)
TARGETS = {"onnxruntime": (".onnx", False), "openvino": (".xml", True), "executorch": (".pte", False),
           "litert": (".tflite", False)}


def t2tedge(*words: str) -> None:
    command = [str(Path(sys.executable).with_name("t2tedge")), *words]
    print("$", " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True)


def artifact(work: Path, tag: str, target: str, precision: str, num_calib: int) -> Path:
    """The file `t2tedge export` writes for (model, target, precision), built unless it is there."""
    name = MODELS[tag]
    folder = work / name / f"{target}_{precision}"
    suffix, from_onnx = TARGETS[target]
    path = folder / f"{name}{'_int8' if precision == 'int8' else ''}{suffix}"
    if path.exists():
        return path
    onnx_int8 = artifact(work, tag, "onnxruntime", "int8", num_calib) if precision == "int8" and target != "onnxruntime" else None
    if from_onnx:
        t2tedge("export", target, str(artifact(work, tag, "onnxruntime", precision, num_calib)), "--out", str(folder))
    elif onnx_int8 is not None:
        t2tedge("export", target, tag, "--precision", "int8", "--plan", str(onnx_int8.with_suffix(".plan.json")),
                "--out", str(folder))
    else:
        calib = ["--num-calib", str(num_calib)] if precision == "int8" else []
        t2tedge("export", target, tag, "--precision", precision, *calib, "--out", str(folder))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "artifacts" / "profile-report")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--num-calib", type=int, default=64,
                        help="calibration images of the INT8 files (timing does not depend on it)")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--rounds", type=int, default=2,
                        help="profile every file this many times, in turn, and keep each file's fastest round "
                             "(a virtual machine's neighbours move single runs by tens of percent)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results")
    args = parser.parse_args()
    targets = args.targets.split(",")
    records: dict[tuple[str, str, str], OpProfileRecord] = {}
    profiles = args.work / "profiles"
    files = {(MODELS[tag], target, precision): artifact(args.work, tag, target, precision, args.num_calib)
             for tag in MODELS for target in targets for precision in ("fp32", "int8")}
    for round_ in range(args.rounds):
        for key, path in files.items():
            out = profiles / f"{'_'.join(key)}.round{round_}.json"
            t2tedge("profile", str(path), "--ops", "--runs", str(args.runs), "--threads", str(args.threads),
                    "--out", str(out))
            record = OpProfileRecord.read(out)
            if key not in records or record.latency_b1.p50_ms < records[key].latency_b1.p50_ms:
                records[key] = record
                (profiles / f"{'_'.join(key)}.json").write_text(record.to_json())
    date = datetime.date.today().isoformat()
    figures = args.out / f"{date}-op-profile"
    for (model, target, precision), record in records.items():
        if precision == "int8" and record.ops:
            t2tedge("profile", "--compare", str(profiles / f"{model}_{target}_fp32.json"),
                    str(profiles / f"{model}_{target}_int8.json"), "--out", str(figures / f"{model}_{target}.md"))
    for (model, target, precision), record in records.items():  # the data behind the views
        (figures / f"{model}_{target}_{precision}.ops.json").write_text(record.to_json())
    report = args.out / f"{date}-op-profile.md"
    report.write_text(render(records, date, figures.name, args.threads, args.rounds))
    print(f"wrote {report} and {figures}/")
    return 0


def _int8_row(target: str, record: OpProfileRecord, fp32: OpProfileRecord) -> str:
    by_precision = {row.name: row.ms for row in record.precisions}
    int8 = by_precision.get("int8", 0.0)
    convert = by_precision.get("convert", 0.0)
    floating = record.op_sum_ms - int8 - convert
    t2t = sum(row.ms for row in record.blocks if row.name.startswith("tokens_to_token"))
    float_types: dict[str, float] = {}
    for op in record.ops:
        if op.precision not in ("int8", "convert"):
            float_types[op.op_type] = float_types.get(op.op_type, 0.0) + op.ms
    slowest = ", ".join(f"{name} {ms:.2f}" for name, ms in sorted(float_types.items(), key=lambda x: -x[1])[:4])
    return (f"| {target} | {fp32.op_sum_ms:.2f} | {int8:.2f} | {floating:.2f} | {convert:.2f} | "
            f"{100 * (floating + convert) / record.op_sum_ms:.0f}% | {(floating + convert) / fp32.op_sum_ms:.2f}x | "
            f"{100 * t2t / record.op_sum_ms:.0f}% | {slowest} |")


def cpu_words() -> str:
    """The CPU as /proc/cpuinfo has it, with the instruction sets that decide int8 speed."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    fields = {key.strip(): value for key, value in (line.split(":", 1) for line in text.split("\n\n")[0].splitlines()
                                                     if ":" in line)}
    get = lambda key: fields.get(key, "").strip()  # noqa: E731
    flags = set(get("flags").split())
    isa = ", ".join(name for name, flag in (("AVX2", "avx2"), ("AVX-512", "avx512f"), ("AVX-512 VNNI", "avx512_vnni"),
                                            ("AVX-VNNI", "avx_vnni")) if flag in flags)
    vnni = "" if flags & {"avx512_vnni", "avx_vnni"} else "; no VNNI: int8 dot products have no fast path"
    return f"{get('model name')} (family {get('cpu family')}, model {get('model')}; {isa}{vnni})"


def _reading(target: str, record: OpProfileRecord, fp32: OpProfileRecord) -> str:
    by_precision = {row.name: row.ms for row in record.precisions}
    int8 = by_precision.get("int8", 0.0)
    rest = record.op_sum_ms - int8
    return (f"- **{target}**: the INT8 file's float ops and conversions take {rest:.1f} ms per run, "
            f"{rest / fp32.op_sum_ms:.2f}x of the fp32 file's op time ({fp32.op_sum_ms:.1f} ms) before a single "
            f"int8 op runs; its int8 ops take {int8:.1f} ms more.")


def render(records: dict[tuple[str, str, str], OpProfileRecord], date: str, figures: str, threads: int,
           rounds: int) -> str:
    any_record = next(iter(records.values()))
    lines = [f"# Where the time goes: per-op profiles ({date})", "",
             f"`make profile-report` (benchmarks/profile_report.py): `t2tedge profile FILE --ops` on the files "
             f"`t2tedge export` writes, batch 1, {threads} threads, each file in a process of its own, "
             f"{any_record.runs} profiled runs after warm-up. CPU: {cpu_words()}, "
             f"{any_record.machine.cores} cores; t2t-edge {any_record.version}. Versions: "
             + ", ".join(sorted({f'{r.runtime} {r.runtime_version}' for r in records.values()})) + ".", "",
             "op / wall: the profiler's op times summed, against the wall time of the same runs (the slowest tenth "
             "of runs left out of both; the rest: the runtime's call overhead, see each record's `outside_ops`). profiler cost: that wall time against the "
             "unprofiled p50. claimed: the share of op time that model blocks claim. import: the runtime library's "
             "import in a fresh Python process; load: the file's load and compile. "
             f"Every file is profiled {rounds} times in turn in one script run and its fastest round kept: single "
             "runs on this virtual machine moved a file's p50 by up to 40%. The records (`t2tedge.op-profile/1`, "
             f"every op) and the per-block comparisons are in [{figures}/]({figures}/).", ""]
    for model in dict.fromkeys(m for m, _, _ in records):
        lines += [f"## {model}", "", "| runtime | precision | p50 (ms) | int8/fp32 | op / wall | profiler cost | "
                  "claimed | import (ms) | load (ms) | first run (ms) | peak RSS (MB) | top blocks |", "|---" * 12 + "|"]
        for (m, target, precision), record in records.items():
            if m != model:
                continue
            fp32 = records.get((m, target, "fp32"))
            ratio = (f"{record.latency_b1.p50_ms / fp32.latency_b1.p50_ms:.2f}x" if precision == "int8" and fp32
                     else "")
            timed = record.op_sum_ms and record.wall_ms
            top = ", ".join(f"{b.name} {100 * b.share:.0f}%" for b in record.blocks[:3])
            lines.append(
                f"| {target} | {precision} | {record.latency_b1.p50_ms:.2f} | {ratio} | "
                f"{f'{100 * record.op_sum_ms / record.wall_ms:.0f}%' if timed else 'no per-op times'} | "
                f"{f'{record.wall_ms / record.latency_b1.p50_ms:.2f}x' if timed else '-'} | "
                f"{f'{100 * claimed_share(record):.1f}%' if timed else '-'} | {record.import_ms or 0:.0f} | "
                f"{record.load_ms:.0f} | {record.first_run_ms:.1f} | {record.peak_rss_mb:.0f} | {top} |")
        lines += ["", "What the INT8 file spends its op time on (ms per run, from the profiler; float share: float ops "
                  "and conversions in the INT8 file's op time; floor: the INT8/fp32 ratio of op time if its int8 ops "
                  "took no time at all):", "",
                  "| runtime | fp32 file | INT8: int8 ops | float ops | convert | float share | floor | "
                  "tokens_to_token | slowest float op types in INT8 |", "|---" * 9 + "|"]
        for (m, target, precision), record in records.items():
            fp32 = records.get((m, target, "fp32"))
            if m == model and precision == "int8" and record.ops and fp32 and fp32.op_sum_ms:
                lines.append(_int8_row(target, record, fp32))
        lines += [""]
        for (m, target, precision), record in records.items():
            fp32 = records.get((m, target, "fp32"))
            if m == model and precision == "int8" and record.ops and fp32 and fp32.op_sum_ms:
                lines.append(_reading(target, record, fp32))
        lines += [""]
        for (m, target, precision), record in records.items():
            if m == model and precision == "int8" and record.ops:
                lines += [f"![{model} {target}]({figures}/{model}_{target}.png)", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
