"""The Table 4 grid: models x runtimes x precisions, each cell measured (accuracy, size, latency).

Results are data first (`table4.json`, one schema for every runtime so files from a Mac or a GPU box
merge), then views (`table4.md`, `table4.png`). Finished cells are cached by the content hash of
artifact + data + settings, so an interrupted run resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from t2tedge import __version__
from t2tedge.data import discover, evenly_spread
from t2tedge.errors import RuntimeUnavailable, UsageError, first_line
from t2tedge.fileio import atomic_write_text, publish_together, sha256_file, staging_dir
from t2tedge.harness.latency import machine_info
from t2tedge.harness.measure import LatencySettings, measure_accuracy, measure_speed
from t2tedge.harness.timing import time_alone
# Re-exported: the grid's vocabulary lives in table4_grid so that it imports without torch.
from t2tedge.harness.table4_grid import SUITES, TABLE4_MODELS, Suite  # noqa: F401
from t2tedge.models import create_model, get_spec
from t2tedge.models.complexity import count_macs, count_params
from t2tedge.results import DataInfo, ResultFormatError, Table4Cell, Table4Result, read_measurements
from t2tedge.targets import (DEFAULT_NUM_CALIB, PRECISIONS, BuildRequest, Target, get_target, int8_prerequisite,
                             int8_request)

# Beside each built artifact in the grid's cache: which file the build wrote, and from what.
BUILT_RECORD = "built.json"


@dataclass
class GridSettings:
    data: Path
    limit: int | None = None
    threads: int | None = None
    warmup: int = 10
    runs: int = 50
    throughput_batch: int = 8
    num_calib: int = DEFAULT_NUM_CALIB
    suite: str = "imagenet"
    weights: str = "local"  # local | official (t2tedge.harness.table4_grid.WEIGHT_SOURCES)
    labels: Path | None = None  # a flat ImageNet val folder's ground-truth file, where ../shared has none
    calib: Path | None = None  # calibration images of the int8 cells (default: the suite's)
    # Time each cell's file in a process of its own (t2tedge.harness.timing): the grid's process holds every earlier
    # cell's runtime and thread pools. Off for a target registered only in this process.
    time_alone: bool = True


def _hash_bytes(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


def _warn_rebuilt(entry: Path, exc: Exception, what: str) -> None:
    print(f"warning: cache entry {entry} is unreadable ({first_line(exc, 120)}); {what}", file=sys.stderr)


@dataclass
class CellJob:
    """A cell that will be measured: its target, weights and the fields every such cell carries."""

    model: str
    target: Target
    precision: str
    checkpoint: Path | None
    fields: dict[str, Any]


class Grid:
    """Every cell's file is built by its target's build function with the defaults `t2tedge export` uses (static
    batch 1), so a cell times the file a user ships and names it. Files are cached under `artifacts/TARGET/` by
    what they were made from."""

    def __init__(self, models: Sequence[str], runtimes: Sequence[str], precisions: Sequence[str],
                 settings: GridSettings, out: Path, artifacts: Path | None = None) -> None:
        for name in models:
            get_spec(name)
        self.targets = [get_target(name) for name in runtimes]
        unknown = [p for p in precisions if p not in PRECISIONS]
        if unknown:
            raise UsageError(f"unknown precision {', '.join(unknown)}; the vocabulary is {', '.join(PRECISIONS)}")
        self.models, self.precisions = list(models), list(precisions)
        if settings.suite not in SUITES:
            raise UsageError(f"unknown suite {settings.suite!r}; choose {', '.join(SUITES)}")
        self.suite = SUITES[settings.suite]
        self.settings = settings
        self.out = out
        self.cache_dir = out / "cache"
        self.artifacts = artifacts or out / "artifacts"
        # Absolute paths: the same on every worker of a cluster, and in the data hash however --data was spelt.
        samples = discover(Path(settings.data).resolve(), num_classes=self.suite.num_classes,
                           labels_file=settings.labels)
        self.samples = evenly_spread(samples, settings.limit)
        self.data_hash = _hash_bytes("\n".join(str(s.path) for s in self.samples).encode())

    def calibration_folder(self) -> Path:
        return Path(self.settings.calib).resolve() if self.settings.calib else self.suite.calibration_folder()

    def cells(self) -> list[tuple[str, str, str]]:
        return [(m, t.name, p) for m in self.models for t in self.targets for p in self.precisions]

    def build_request(self, model_name: str, precision: str, checkpoint: Path | None, out_dir: Path) -> BuildRequest:
        """What `t2tedge export TARGET MODEL --precision P --calib SUITE_CALIBRATION --num-calib N` asks for."""
        return BuildRequest(model=model_name, precision=precision, out_dir=out_dir, checkpoint=checkpoint,
                            calib=self.calibration_folder(), num_calib=self.settings.num_calib,
                            num_classes=self.suite.num_classes, exclude=tuple(self.samples))

    def artifact_folder(self, model_name: str, target: Target, precision: str,
                        checkpoint: Path | None) -> tuple[Path, dict[str, Any]]:
        """Where the cell's file is built, and the recipe the folder is named after (toolkit version, weights,
        precision, calibration), so a new checkpoint or default never reuses a stale file."""
        weights = sha256_file(checkpoint) if checkpoint else "untrained"
        recipe = {"version": __version__, "target": target.name, "model": model_name,
                  "precision": precision, "weights": weights, "num_classes": self.suite.num_classes,
                  "calibration": str(self.calibration_folder()) if precision in target.calibrated else None,
                  "num_calib": self.settings.num_calib if precision in target.calibrated else None}
        digest = _hash_bytes(json.dumps(recipe, sort_keys=True).encode())[:12]
        return self.artifacts / target.name / f"{model_name}_{precision}_{digest}", recipe

    @staticmethod
    def built_artifact(folder: Path, target: Target) -> Path | None:
        """The file an earlier build left in `folder` with every companion, or None."""
        built = folder / BUILT_RECORD
        if built.is_file():
            try:
                path = folder / json.loads(built.read_text())["artifact"]
            except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
                _warn_rebuilt(built, exc, "building the file again")
                return None
            if all(f.exists() for f in target.files(path)):
                return path
        return None

    def artifact(self, model_name: str, target: Target, precision: str, checkpoint: Path | None) -> Path:
        """The cell's file, built once per recipe."""
        folder, recipe = self.artifact_folder(model_name, target, precision, checkpoint)
        path = self.built_artifact(folder, target)
        if path is not None:
            return path
        request = self.build_request(model_name, precision, checkpoint, folder)
        target.check_request(request)
        before = int8_prerequisite(target, request)
        if before is not None:  # the grid's own cell of that target: one calibration for every INT8 cell
            request = int8_request(target, request, self.artifact(model_name, before, precision, checkpoint))
        path = target.build(request)
        atomic_write_text(folder / BUILT_RECORD, json.dumps({"artifact": path.name, "recipe": recipe}, indent=1) + "\n")
        return path

    def _overrides(self) -> dict[str, int]:
        return {"num_classes": self.suite.num_classes} if self.suite.num_classes != 1000 else {}

    def skip_reason(self, model_name: str, target: Target, precision: str) -> str | None:
        reason = target.why_not(precision) or target.not_measured_here.get(precision) \
            or self.suite.missing_weights(model_name)
        if reason:
            return reason
        try:
            target.runtime_class()
        except RuntimeUnavailable as exc:
            return str(exc)
        return None

    def prepare_cell(self, model_name: str, runtime: str, precision: str) -> CellJob | Table4Cell:
        """What a cell needs measured, or the cell itself when it is skipped."""
        spec = get_spec(model_name)
        target = get_target(runtime)
        checkpoint = self.suite.checkpoint(model_name, self.settings.weights)
        missing = self.suite.missing_weights(model_name)
        weights = "trained" if checkpoint else "none" if missing else "untrained"
        fields: dict[str, Any] = {"model": model_name, "runtime": target.name, "precision": precision,
                                  "family": spec.family, "weights": weights, "version": __version__,
                                  "paper": vars(spec.paper) if spec.paper else None}
        reason = self.skip_reason(model_name, target, precision)
        if reason:
            return Table4Cell(**fields, status="skipped", reason=reason)
        return CellJob(model_name, target, precision, checkpoint, fields)

    def cell_key(self, job: CellJob, path: Path) -> tuple[str, str]:
        """(cache key, artifact sha256): the key names the file, the images and the settings measured with."""
        artifact_hash = sha256_file(path) if path.is_file() else _hash_bytes(
            *(sha256_file(p).encode() for p in sorted(path.rglob("*")) if p.is_file()))
        settings = {k: str(v) for k, v in vars(self.settings).items()}
        key = _hash_bytes(artifact_hash.encode(), self.data_hash.encode(), json.dumps(
            {"cell": [job.model, job.target.name, job.precision], "settings": settings, "version": __version__},
            sort_keys=True).encode())
        return key, artifact_hash

    def cached_cell(self, key: str) -> Table4Cell | None:
        cached = self.cache_dir / f"{key}.json"
        if cached.is_file():
            try:
                return dataclasses.replace(Table4Cell.read(cached), cached=True)
            except ResultFormatError as exc:  # damaged, or written by an older toolkit: a cache is disposable
                _warn_rebuilt(cached, exc, "measuring the cell again")
        return None

    def latency_settings(self) -> LatencySettings:
        return LatencySettings(self.settings.warmup, self.settings.runs, self.settings.throughput_batch)

    def complexity(self, model_name: str) -> dict[str, int]:
        spec = get_spec(model_name)
        reference_model = create_model(model_name, **self._overrides())
        return {"params": count_params(reference_model), "macs": count_macs(reference_model, spec.preprocess.crop)}

    def finish_cell(self, job: CellJob, path: Path, key: str, artifact_hash: str, measured: dict[str, Any],
                    complexity: dict[str, int]) -> Table4Cell:
        """The measured cell from its accuracy and speed fields, written to the cell cache."""
        cell = Table4Cell(**job.fields, **measured, **complexity, status="measured", artifact=path.name,
                          artifact_bytes=job.target.size_bytes(path), artifact_sha256=artifact_hash, cache_key=key)
        atomic_write_text(self.cache_dir / f"{key}.json", cell.to_json())
        return dataclasses.replace(cell, cached=False)

    def run_cell(self, model_name: str, runtime: str, precision: str) -> Table4Cell:
        job = self.prepare_cell(model_name, runtime, precision)
        if isinstance(job, Table4Cell):
            return job
        path = self.artifact(model_name, job.target, precision, job.checkpoint)
        key, artifact_hash = self.cell_key(job, path)
        cached = self.cached_cell(key)
        if cached is not None:
            return cached
        preprocess = get_spec(model_name).preprocess
        instance = job.target.load(path, threads=self.settings.threads)
        measured = measure_accuracy(instance, self.samples, preprocess,
                                    progress=f"{model_name} {job.target.name} {precision}")
        if self.settings.time_alone:
            del instance  # its thread pools must not run beside the timing
            measured.update(time_alone(path, job.target.name, self.latency_settings(), self.settings.threads,
                                       self.out))
        else:
            measured.update(measure_speed(instance, preprocess, self.latency_settings()))
        return self.finish_cell(job, path, key, artifact_hash, measured, self.complexity(model_name))

    def data_info(self) -> DataInfo:
        return DataInfo(folder=str(self.settings.data), images=len(self.samples), suite=self.suite.name,
                        calibration=str(self.calibration_folder()))

    def run(self) -> Table4Result:
        from tqdm import tqdm

        cells = []
        for model_name, runtime, precision in tqdm(self.cells(), desc="table4", unit="cell"):
            cells.append(self.run_cell(model_name, runtime, precision))
        return finish(Table4Result(version=__version__, machine=machine_info(), data=self.data_info(), cells=cells))


def _is_reference(runtime: str) -> bool:
    try:
        return get_target(runtime).reference
    except UsageError:  # a cell from a toolkit with other targets
        return False


def finish(table: Table4Result, same_machine: bool = True) -> Table4Result:
    """Derived columns: delta top-1 and top-1 agreement against the same model's fp32 on the same machine.
    `same_machine` False: one run whose images were scored across a cluster, its cells timed on several nodes; every
    cell compares with the run's fp32 cell (a later merge keeps those fields where no same-machine peer exists)."""
    for cell in table.cells:
        cell.machine = cell.machine or table.machine
    for cell in table.cells:
        if not cell.measured or cell.predictions is None:
            continue
        peers = [c for c in table.cells if c.measured and c.model == cell.model and c.precision == "fp32"
                 and (c.machine == cell.machine or not same_machine) and c.predictions is not None
                 and len(c.predictions) == len(cell.predictions)]
        reference = next((c for c in peers if _is_reference(c.runtime)), peers[0] if peers else None)
        if reference is not None:
            cell.delta_top1 = cell.top1 - reference.top1
            cell.top1_agreement = float(np.mean(np.asarray(cell.predictions) == np.asarray(reference.predictions)))
            cell.reference = f"{reference.runtime} fp32"
    return table


def merge(tables: Sequence[Table4Result]) -> Table4Result:
    """One table from several runs (this machine, a Mac, a GPU box); a later file wins for the same cell. Two runs
    on one host are one machine: `MachineInfo.hostname_hash` is a stable digest."""
    cells: dict[tuple, Table4Cell] = {}
    for table in tables:
        for cell in table.cells:
            cell = dataclasses.replace(cell, machine=cell.machine or table.machine, version=cell.version or table.version)
            cells[(cell.model, cell.runtime, cell.precision, cell.machine)] = cell
    machines = {c.machine for c in cells.values()}
    return finish(Table4Result(version=__version__, machine=next(iter(machines)) if len(machines) == 1 else None,
                               data=tables[-1].data, cells=list(cells.values())))


def write_outputs(table: Table4Result, out: Path) -> dict[str, Path]:
    from t2tedge.harness.table4_views import render_markdown, render_plot

    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "table4.json", "md": out / "table4.md", "png": out / "table4.png"}
    # The data and its views are one set: staged beside them and moved in together, never a new JSON beside an
    # old plot.
    with staging_dir(out, "table4") as tmp:
        staged = {kind: Path(tmp) / path.name for kind, path in paths.items()}
        staged["json"].write_text(table.to_json())
        staged["md"].write_text(render_markdown(table))
        render_plot(table, staged["png"])
        publish_together({staged[kind]: paths[kind] for kind in paths})
    return paths


def load_table(path: str | os.PathLike) -> Table4Result:
    """A `table4.json`, or a `t2tedge profile` record as a one-cell table."""
    return read_measurements(path)
