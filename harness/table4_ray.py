"""The Table 4 grid on Ray: the same cells as `Grid.run`, the work split the way its costs are.

- one task per artifact build, deduplicated by the recipe folder the file is built in (the ONNX INT8 build a plan
  comes from runs before the builds that start from it, `t2tedge.targets.int8_prerequisite`);
- one task per (cell, shard of images) for accuracy; shards start at multiples of the evaluation batch and merge in
  image order, so a cell's predictions and top-1/top-5 are exactly those one process computes;
- one timing task per cell that holds its node whole: every node offers one `t2tedge_node` token, each other task
  holds a sliver of it, the timing task all of it, so nothing of ours shares the node's cores with a timing. The
  timing itself is `time_alone` (a fresh process, as without Ray), and the cell records the machine it ran on.

Artifacts, the cell cache and staging folders live under the grid's folders, which must be shared storage on a
real cluster. Ray's task retries cover a lost worker; a rerun finds every finished artifact and cell on disk and
submits nothing for them. Ray is imported only here (the `cluster` extra).
"""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t2tedge import __version__
from t2tedge.errors import T2TEdgeError, UsageError, first_line
from t2tedge.harness.latency import machine_info
from t2tedge.harness.measure import ShardScore, accuracy_fields, score_shard, shard_bounds
from t2tedge.harness.table4 import CellJob, Grid, finish
from t2tedge.harness.timing import time_alone
from t2tedge.models import get_spec
from t2tedge.results import Table4Cell, Table4Result
from t2tedge.targets import get_target, int8_prerequisite

# One per node, all of it held by a timing task.
NODE_RESOURCE = "t2tedge_node"
# What every other task holds of its node's token: many fit beside each other, none beside a timing.
TASK_SHARE = 0.001
# A lost worker (killed, out of memory, its node gone) reruns its task this many times.
TASK_RETRIES = 3
LOCAL = "auto"
INSTALL_HINT = "pip install 't2t-edge[cluster]'"


@dataclass(frozen=True)
class RayOptions:
    """`address`: "auto" starts a local Ray instance of `cpus` CPUs (default: all of this machine's); anything else
    is the address of an existing cluster (`ray start --head` prints it). `shard_images`: images per accuracy
    task."""

    address: str = LOCAL
    shard_images: int = 256
    cpus: int | None = None

    def __post_init__(self) -> None:
        if self.shard_images < 1:
            raise UsageError("--shard-images must be at least 1")
        if self.address != LOCAL:
            host, _, port = self.address.rpartition(":")
            if not host or not port.isdigit():
                raise UsageError(f"--ray {self.address}: expected auto or a cluster's HOST:PORT (the head's GCS port, "
                                 f"6379 by default)")
            if self.cpus is not None:
                raise UsageError(f"--ray-cpus sizes the local instance of --ray {LOCAL}; the cluster at "
                                 f"{self.address} has its own")

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.address.rpartition(":")
        return host, int(port)


@dataclass
class RayRunStats:
    """What a run submitted: a rerun of a finished grid submits nothing."""

    builds: int = 0
    shards: int = 0
    timings: int = 0
    failed: list[str] = field(default_factory=list)


def import_ray():
    try:
        import ray
    except ImportError:
        raise UsageError(f"--ray needs Ray, the cluster extra: {INSTALL_HINT}") from None
    return ray


def connect(options: RayOptions) -> None:
    """Start the local instance, or join the cluster at `options.address` and check it offers the node token."""
    ray = import_ray()
    common = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR",
              "ignore_reinit_error": False}
    if options.address == LOCAL:
        # The object store holds only predictions and paths; Ray's default (30% of memory) is for data pipelines.
        ray.init(address="local", num_cpus=options.cpus, resources={NODE_RESOURCE: 1},
                 object_store_memory=256 * 1024 ** 2, **common)
        return
    _check_reachable(options)
    try:
        ray.init(address=options.address, **common)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UsageError(f"cannot join the Ray cluster at {options.address}: {first_line(exc)}; start it with "
                         f"`ray start --head --resources='{{\"{NODE_RESOURCE}\": 1}}'`, and where it uses Ray's token "
                         f"authentication (the default of `ray start`) set RAY_AUTH_MODE=token here (docs/cluster.md); "
                         f"or use --ray {LOCAL}") from None
    if not ray.cluster_resources().get(NODE_RESOURCE):
        ray.shutdown()
        raise UsageError(f"no node of the Ray cluster at {options.address} offers the {NODE_RESOURCE} resource that "
                         f"timing needs; start each node with `ray start ... --resources='{{\"{NODE_RESOURCE}\": 1}}'` "
                         f"(docs/cluster.md)")


def _check_reachable(options: RayOptions) -> None:
    """Refuse at once a HOST:PORT nothing listens on: Ray itself retries such an address for minutes."""
    try:
        socket.create_connection(options.host_port, timeout=5).close()
    except OSError as exc:
        raise UsageError(f"cannot reach the Ray cluster at {options.address} ({exc.strerror or exc}); start its head "
                         f"with "
                         f"`ray start --head --resources='{{\"{NODE_RESOURCE}\": 1}}'` (docs/cluster.md), or use "
                         f"--ray {LOCAL}") from None


# ---- the tasks (plain functions: Ray wraps them in `_remote`) -----------------------------------------------------

def build_task(grid: Grid, model_name: str, runtime: str, precision: str, checkpoint: Path | None,
               *after: Path) -> Path:
    """The cell's file (`after`: builds it needs first, already done)."""
    return grid.artifact(model_name, get_target(runtime), precision, checkpoint)


def score_task(grid: Grid, model_name: str, runtime: str, path: Path, start: int, stop: int) -> ShardScore:
    instance = get_target(runtime).load(path, threads=grid.settings.threads)
    return score_shard(instance, grid.samples[start:stop], get_spec(model_name).preprocess, start=start)


def time_task(grid: Grid, runtime: str, path: Path) -> dict[str, Any]:
    fields = time_alone(path, runtime, grid.latency_settings(), grid.settings.threads, grid.out)
    return {**fields, "machine": machine_info()}


def _remote(ray) -> dict[str, Any]:
    shared = {"max_retries": TASK_RETRIES, "resources": {NODE_RESOURCE: TASK_SHARE}}
    return {"build": ray.remote(num_cpus=1, **shared)(build_task),
            "score": ray.remote(num_cpus=1, **shared)(score_task),
            "time": ray.remote(num_cpus=1, max_retries=TASK_RETRIES, resources={NODE_RESOURCE: 1})(time_task)}


# ---- the driver ---------------------------------------------------------------------------------------------------

@dataclass
class _Cell:
    index: int
    job: CellJob
    path: Path | None = None
    key: str = ""
    artifact_hash: str = ""
    shards: list[ShardScore] = field(default_factory=list)
    shards_left: int = 0
    timing: dict[str, Any] | None = None


class RayGrid:
    """Runs a `Grid`'s cells on Ray; `run()` returns the table `Grid.run()` returns, each cell naming the machine it
    was timed on."""

    def __init__(self, grid: Grid, options: RayOptions) -> None:
        self.grid, self.options = grid, options
        # Every worker reads and writes the same folders: absolute paths, shared storage on a cluster.
        grid.out, grid.artifacts, grid.cache_dir = grid.out.resolve(), grid.artifacts.resolve(), grid.cache_dir.resolve()
        self.stats = RayRunStats()

    def run(self) -> Table4Result:
        ray = import_ray()
        connect(self.options)
        try:
            return self._run(ray)
        finally:
            ray.shutdown()

    def _run(self, ray) -> Table4Result:
        from tqdm import tqdm

        grid = self.grid
        self.ray, self.remote, self.grid_ref = ray, _remote(ray), ray.put(grid)
        self.builds: dict[Path, Any] = {}  # recipe folder -> build task
        self.waiting: dict[Any, tuple[str, Any]] = {}  # task -> what it is for
        self.complexity: dict[str, dict[str, int]] = {}
        self.cells: dict[int, Table4Cell] = {}  # by the cell's place in the grid
        self.bar = tqdm(total=len(grid.cells()), desc="table4", unit="cell")
        self.images_total = self.images_done = 0
        try:
            for index, (model_name, runtime, precision) in enumerate(grid.cells()):
                job = grid.prepare_cell(model_name, runtime, precision)
                if isinstance(job, Table4Cell):
                    self.cells[index] = job
                    self.bar.update()
                    continue
                cell = _Cell(index, job)
                artifact = self._artifact(job.model, job.target, precision, job.checkpoint)
                if isinstance(artifact, Path):
                    self._start(cell, artifact)
                else:
                    self.waiting.setdefault(artifact, ("build", []))[1].append(cell)
            while self.waiting:
                (done,), _ = ray.wait(list(self.waiting), num_returns=1)
                kind, what = self.waiting.pop(done)
                try:
                    value = ray.get(done)
                except Exception as exc:  # a task's own error, or a worker lost more often than retried
                    self._fail(kind, what, _task_error(exc))
                    continue
                if kind == "build":
                    for cell in what:
                        self._start(cell, value)
                elif kind == "score":
                    what.shards.append(value)
                    what.shards_left -= 1
                    self.images_done += len(value.predictions)
                    self._maybe_finish(what)
                else:
                    what.timing = value
                    self._maybe_finish(what)
                self.bar.set_postfix_str(f"images {self.images_done}/{self.images_total}")
        finally:
            self.bar.close()
        ordered = [self.cells[i] for i in sorted(self.cells)]
        # One machine when every cell was timed on one node (the driver's when none was timed), else each cell's own.
        timed_on = {c.machine for c in ordered if c.machine is not None}
        machine = timed_on.pop() if len(timed_on) == 1 else None if timed_on else machine_info()
        table = Table4Result(version=__version__, machine=machine, data=grid.data_info(), cells=ordered)
        return finish(table, same_machine=False)

    def _artifact(self, model_name: str, target, precision: str, checkpoint: Path | None):
        """The built file, or the task building it (one per recipe folder)."""
        folder, _ = self.grid.artifact_folder(model_name, target, precision, checkpoint)
        path = self.grid.built_artifact(folder, target)
        if path is not None:
            return path
        if folder not in self.builds:
            after = []
            before = int8_prerequisite(target, self.grid.build_request(model_name, precision, checkpoint, folder))
            if before is not None:
                reference = self._artifact(model_name, before, precision, checkpoint)
                after = [] if isinstance(reference, Path) else [reference]
            self.builds[folder] = self.remote["build"].remote(self.grid_ref, model_name, target.name, precision,
                                                                checkpoint, *after)
            self.stats.builds += 1
        return self.builds[folder]

    def _start(self, cell: _Cell, path: Path) -> None:
        """The cell's file exists: the cached cell, or its shard and timing tasks."""
        grid, job = self.grid, cell.job
        cell.path = path
        cell.key, cell.artifact_hash = grid.cell_key(job, path)
        cached = grid.cached_cell(cell.key)
        if cached is not None:
            self.cells[cell.index] = cached
            self.bar.update()
            return
        bounds = shard_bounds(len(grid.samples), self.options.shard_images)
        for start, stop in bounds:
            task = self.remote["score"].remote(self.grid_ref, job.model, job.target.name, path, start, stop)
            self.waiting[task] = ("score", cell)
        cell.shards_left = len(bounds)
        self.images_total += len(grid.samples)
        self.stats.shards += len(bounds)
        self.waiting[self.remote["time"].remote(self.grid_ref, job.target.name, path)] = ("time", cell)
        self.stats.timings += 1
        if job.model not in self.complexity:  # in the driver, while the cluster works: it needs torch
            self.complexity[job.model] = grid.complexity(job.model)

    def _maybe_finish(self, cell: _Cell) -> None:
        if cell.shards_left or cell.timing is None or cell.index in self.cells:
            return
        measured = accuracy_fields(cell.shards, len(self.grid.samples)) if self.grid.samples else {}
        # The timing's fields carry the machine it ran on, which the cell (and its cache entry) keeps.
        self.cells[cell.index] = self.grid.finish_cell(cell.job, cell.path, cell.key, cell.artifact_hash,
                                                  {**measured, **cell.timing}, self.complexity[cell.job.model])
        self.bar.update()

    def _fail(self, kind: str, what: Any, error: str) -> None:
        """A failed task fails its cell (a build: every cell of that file), named once; the rest of the grid goes
        on, and the cell's other tasks are dropped."""
        for cell in (what if kind == "build" else [what]):
            if cell.index in self.cells:
                continue
            job = cell.job
            self.cells[cell.index] = Table4Cell(**job.fields, status="failed", reason=f"{kind} failed: {error}")
            name = f"{job.model} {job.target.name} {job.precision}"
            self.stats.failed.append(name)
            self.bar.write(f"{name}: {kind} failed: {error}", file=sys.stderr)
            self.bar.update()
            for task, (other_kind, other) in list(self.waiting.items()):
                if other is cell:
                    self.ray.cancel(task)
                    del self.waiting[task]


def _task_error(exc: Exception) -> str:
    """Our own one-line message where the task raised a T2TEdgeError, else Ray's first line."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, T2TEdgeError):
        return str(cause)
    return first_line(cause or exc)
