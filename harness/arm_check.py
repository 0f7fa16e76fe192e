"""`make arm-check`: our files and the device bundle on ARM kernels, under qemu-user (t2tedge.harness.arm_env).

For each file: its logits on the same preprocessed images here (x86) and under each emulated ARM CPU, compared as
parity compares two files (bit-identical, within the tolerance of the file's precision, or broken); and the
device bundle of all the files unpacked and run by its own runner inside the ARM environment, whose profile
records (latency marked emulated) merge into Table 4. The result is a typed record (`t2tedge.arm-check/1`) and a
Markdown page.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from t2tedge import __version__
from t2tedge import metadata_keys as keys
from t2tedge.errors import T2TEdgeError
from t2tedge.harness.arm_env import CPUS, NO_AARCH64_WHEEL, WHEELS, ArmEnv
from t2tedge.harness.bundle import make_bundle
from t2tedge.harness.latency import EMULATED, machine_info
from t2tedge.harness.comparison import TOLERANCES, compare
from t2tedge.harness.file_parity import stamped_images
from t2tedge.results import ArmCheckRecord, ArmParityRow, ProfileRecord
from t2tedge.targets import target_for_file

# Run inside the unpacked bundle on the emulated CPU, once per runtime (ONLY= names its files), so that a runtime
# that kills its process (an instruction the CPU lacks) costs only its own rows, and each runtime's import (most of
# a minute under emulation for torch) is paid once: the bundle's own runner (what profile.sh runs), then each
# artifact's logits on images.npy, one .npy each; the exit status is the runner's.
ARM_SCRIPT = """
import json, os, sys, numpy as np
from pathlib import Path
from t2tedge.harness.bundle import run_bundle, selected_artifacts
from t2tedge.targets import target_for_file
profiled = run_bundle(".")
print("logits", flush=True)
images = np.load("images.npy")
for artifact in selected_artifacts(json.loads(Path("manifest.json").read_text()), os.environ.get("ONLY")):
    path = Path("artifacts") / artifact["name"]
    try:
        runtime = target_for_file(path).load(path, threads=int(sys.argv[1]))
        np.save(Path("logits") / (artifact["name"] + ".npy"), runtime.run(images))
        print("ran", artifact["name"], runtime.describe().version, flush=True)
    except Exception as exc:
        print("failed", artifact["name"], type(exc).__name__, str(exc).splitlines()[0][:200], flush=True)
sys.exit(profiled)
"""


@dataclass(frozen=True)
class ArmCheckSettings:
    """`data`: the images (`limit` of them, drawn with `seed`); `cpus`: emulated CPU models (keys of
    arm_env.CPUS); `runs`: timed runs per file in the bundle's profile (emulated, so few); `threads`."""

    data: Path
    limit: int = 64
    seed: int = 0
    cpus: tuple[str, ...] = tuple(CPUS)
    runs: int = 3
    threads: int = 2
    timeout_s: float = 7200.0


@dataclass
class _Run:
    cpu: str
    seconds: float
    logits: dict[str, np.ndarray] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    records: list[ProfileRecord] = field(default_factory=list)


def verdict(x86: np.ndarray, arm: np.ndarray, precision: str) -> tuple[str, dict]:
    """How one file's logits on ARM compare with x86: "bit-identical", "within tolerance" (of the file's precision,
    as parity has it: fp32 max abs <= 1e-4 and the same top-1; INT8 as two INT8 files of one plan) or "broken"."""
    key = "int8_vs_int8" if precision == "int8" else precision if precision in TOLERANCES else "fp32"
    result = compare(x86, arm, key)
    if x86.shape == arm.shape and np.array_equal(x86, arm):
        return "bit-identical", result
    return ("within tolerance" if result["passed"] else "broken"), result


def _bundle_on_arm(env: ArmEnv, bundle: Path, images: np.ndarray, cpu: str, settings: ArmCheckSettings,
                   work: Path, say: Callable[[str], None]) -> _Run:
    folder = work / cpu
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with tarfile.open(bundle) as tar:
        tar.extractall(folder, filter="data")
    np.save(folder / "images.npy", images)
    (folder / "logits").mkdir()
    # Few timed runs and batch-1 throughput: under emulation one T2T-ViT-7 inference takes seconds.
    environment = {EMULATED: f"{cpu} under qemu-user on {machine_info().cpu}", "RUNS": str(settings.runs),
                   "WARMUP": "1", "THROUGHPUT_BATCH": "1", "THREADS": str(settings.threads)}
    by_runtime: dict[str, list[str]] = {}
    for artifact in json.loads((folder / "manifest.json").read_text())["artifacts"]:
        by_runtime.setdefault(artifact["runtime"], []).append(artifact["name"])
    start = time.perf_counter()
    run = _Run(cpu, 0.0)
    for runtime, names in by_runtime.items():
        say(f"{cpu}: {runtime}: the bundle's runner (profile, {settings.runs} runs per file), then the logits of "
            f"{', '.join(names)} on {len(images)} images")
        done = env.run(cpu, ["-c", ARM_SCRIPT, str(settings.threads)], cwd=folder,
                       env={**environment, "PYTHONPATH": f".:{env.python_path(runtime)}", "ONLY": ",".join(names)},
                       timeout=settings.timeout_s)
        for line in done.stdout.splitlines():
            word, _, rest = line.partition(" ")
            if word == "failed":
                name, _, why = rest.partition(" ")
                run.failed[name] = why
        if done.returncode not in (0, 1) or "logits" not in done.stdout.splitlines():
            why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            for name in names:
                run.failed.setdefault(name, f"its {runtime} process on {cpu} ended: {why}")
    run.seconds = time.perf_counter() - start
    for file in sorted((folder / "logits").glob("*.npy")):
        run.logits[file.name.removesuffix(".npy")] = np.load(file)
    for file in sorted((folder / "results").glob("*.json")):
        try:
            run.records.append(ProfileRecord.read(file))
        except T2TEdgeError:
            continue
    return run


def run_arm_check(env: ArmEnv, files: Sequence[Path], settings: ArmCheckSettings, work: Path,
                  say: Callable[[str], None] = print, x86_stand_ins: Mapping[str, Path] | None = None
                  ) -> tuple[ArmCheckRecord, list[ProfileRecord]]:
    """Compare `files` on x86 and on each emulated CPU of `settings`; returns the record and the bundle's profile
    records (one per file and CPU). `x86_stand_ins`: file name -> the file whose x86 logits it is judged against
    (an INT8 `.ort` file on an x86 CPU whose int8 dot products saturate is wrong there as it is: its source `.onnx`,
    run with uint8 weights, gives the x86 logits; the row says so)."""
    x86_stand_ins = dict(x86_stand_ins or {})
    files = [Path(f) for f in files]
    by_model: dict[str, list[Path]] = {}
    metas = {}
    for path in files:
        meta = target_for_file(path).read_metadata(path)
        metas[path.name] = meta
        by_model.setdefault(meta.get(keys.MODEL, "?"), []).append(path)
    rows: list[ArmParityRow] = []
    records: list[ProfileRecord] = []
    seconds: dict[str, float] = {}
    for model, paths in by_model.items():
        preprocess = json.loads(metas[paths[0].name][keys.PREPROCESS])
        images = stamped_images(settings.data, settings.limit, settings.seed, preprocess)
        x86 = {}
        for p in paths:
            source = x86_stand_ins.get(p.name, p)
            x86[p.name] = target_for_file(source).load(source, threads=settings.threads).run(images)
        bundle = make_bundle(paths, work / f"{model}.tar.gz")
        for cpu in settings.cpus:
            run = _bundle_on_arm(env, bundle, images, cpu, settings, work / model, say)
            seconds[f"{model} {cpu}"] = round(run.seconds, 1)
            records.extend(run.records)
            for path in paths:
                precision = str(metas[path.name].get(keys.PRECISION, "fp32"))
                runtime = target_for_file(path).name
                if path.name not in run.logits:
                    rows.append(ArmParityRow(model=model, file=path.name, runtime=runtime, precision=precision,
                                             cpu=cpu, verdict="not run",
                                             note=run.failed.get(path.name, "no logits written")))
                    continue
                outcome, result = verdict(x86[path.name], run.logits[path.name], precision)
                stand_in = x86_stand_ins.get(path.name)
                rows.append(ArmParityRow(model=model, file=path.name, runtime=runtime, precision=precision, cpu=cpu,
                                         verdict=outcome, max_abs=result["max_abs"],
                                         top1_agreement=result["top1_agreement"], cosine=result["cosine"],
                                         note=f"x86 logits from {stand_in.name} (this x86 CPU's int8 dot products "
                                              f"saturate on the file as it is)" if stand_in else None))
    record = ArmCheckRecord(version=__version__, machine=machine_info(), data=str(settings.data),
                            images=settings.limit, cpus=list(settings.cpus), wheels=list(WHEELS),
                            no_aarch64_wheel=dict(NO_AARCH64_WHEEL), seconds=seconds, rows=rows,
                            profiles=[f"{r.cell.artifact} on {r.machine.cpu}: p50 {r.cell.latency_b1.p50_ms:.0f} ms"
                                      for r in records if r.cell.latency_b1 is not None])
    return record, records


def render_markdown(record: ArmCheckRecord) -> str:
    lines = [f"# Our files on ARM kernels under qemu-user ({time.strftime('%Y-%m-%d')})", "",
             f"x86 host: {record.machine.cpu}; emulated CPUs: {', '.join(record.cpus)}; {record.images} images of "
             f"`{record.data}`; t2tedge {record.version}.", "",
             "| model | file | runtime | precision | CPU | verdict | max abs vs x86 | top-1 agreement |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in record.rows:
        numbers = (f"{row.max_abs:.2e} | {100 * row.top1_agreement:.1f}%" if row.max_abs is not None
                   else f"{row.note} | ")
        lines.append(f"| {row.model} | `{row.file}` | {row.runtime} | {row.precision} | {row.cpu} | {row.verdict} | "
                     f"{numbers} |")
    noted = [row for row in record.rows if row.note and row.max_abs is not None]
    if noted:
        lines += [""] + [f"- `{row.file}` on {row.cpu}: {row.note}" for row in noted]
    lines += ["", "Runtimes ARM cannot run at this project's pins (no aarch64 wheel of that version, or one that "
                  "needs CUDA): what runs instead, if anything:", ""]
    lines += [f"- `{name}`: {why}" for name, why in record.no_aarch64_wheel.items()]
    lines += ["", "The bundle's profile records (latency under emulation: never a device's):", ""]
    lines += [f"- {line}" for line in record.profiles]
    lines += ["", "Wall time per model and CPU (bundle runner and logits): " +
              ", ".join(f"{k} {v:.0f} s" for k, v in record.seconds.items())]
    return "\n".join(lines) + "\n"
