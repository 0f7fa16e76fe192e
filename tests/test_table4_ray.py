"""Table 4 on a local Ray instance of 2 CPUs (the cluster extra): the same cells as one process (accuracy fields,
predictions, artifact hashes of files built independently), a worker killed mid-run retried, and a rerun that
submits no task at all."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="Ray, the cluster extra, is not installed: pip install -e '.[cluster]'")

from conftest import IMAGENETTE_GRID, imagenette_grid_settings  # noqa: E402
from t2tedge.harness.table4 import Grid, load_table  # noqa: E402
from t2tedge.harness.table4_ray import RayGrid, RayOptions  # noqa: E402

ACCURACY = ("status", "reason", "top1", "top5", "images", "predictions", "artifact", "artifact_sha256",
            "artifact_bytes", "delta_top1", "top1_agreement", "reference", "params", "macs", "weights")


class WorkerKiller(threading.Thread):
    """Kills, once, the first Ray worker it sees running `task` (Ray titles a busy worker `ray::TASK`)."""

    def __init__(self, task: str) -> None:
        super().__init__(daemon=True)
        self.title = f"ray::{task}".encode()
        self.killed: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    cmdline = (entry / "cmdline").read_bytes()
                except OSError:
                    continue
                if cmdline.startswith(self.title):
                    os.kill(int(entry.name), signal.SIGKILL)
                    self.killed.append(int(entry.name))
                    return


def _ray_grid(out: Path) -> RayGrid:
    return RayGrid(Grid(*IMAGENETTE_GRID, imagenette_grid_settings(), out), RayOptions(shard_images=32, cpus=2))


@pytest.fixture(scope="module")
def runs(imagenette_grid, tmp_path_factory):
    """The Imagenette grid on a local Ray instance, its files built apart from the single-process run's, a scoring
    worker killed on the way; then the same grid again."""
    root = tmp_path_factory.mktemp("table4-ray")
    killer = WorkerKiller("score_task")
    killer.start()
    first = _ray_grid(root)
    try:
        clustered = first.run()
    finally:
        killer.done.set()
    second = _ray_grid(root)
    return imagenette_grid[1], clustered, first, killer, second.run(), second


def test_ray_cells_are_the_cells_one_process_measures(runs):
    alone, clustered, first, *_ = runs
    assert [(c.model, c.status) for c in clustered.cells] == [("t2t_vit_7", "measured")] * 4 + \
        [("mobilenet_v2_100", "skipped")] * 4
    assert first.stats.builds == 4 and first.stats.shards == 4 * 2 and first.stats.timings == 4
    for single, sharded in zip(alone.cells, clustered.cells):
        assert (single.model, single.runtime, single.precision) == (sharded.model, sharded.runtime, sharded.precision)
        # Built apart, in other processes: the same bytes (OpenVINO's IR names no longer depend on what ran before).
        assert {k: getattr(sharded, k) for k in ACCURACY} == {k: getattr(single, k) for k in ACCURACY}
        if sharded.measured:
            assert sharded.machine is not None and sharded.machine.cpu and sharded.latency_b1.runs == 3


def test_a_killed_worker_is_retried_and_the_table_completes(runs):
    _, clustered, first, killer, *_ = runs
    assert killer.killed, "no worker ran a scoring task while the killer watched"
    assert not first.stats.failed and all(c.images == 64 for c in clustered.cells if c.measured)


def test_a_rerun_reuses_every_artifact_and_cell(runs):
    _, clustered, _, _, again, second = runs
    assert (second.stats.builds, second.stats.shards, second.stats.timings) == (0, 0, 0)
    assert all(c.cached for c in again.cells if c.measured) and sum(c.measured for c in again.cells) == 4
    assert [dataclasses.replace(c, cached=None) for c in again.cells] == \
        [dataclasses.replace(c, cached=None) for c in clustered.cells]


def test_a_failing_cell_is_named_and_the_grid_goes_on(tmp_path, val_dir, capsys):
    from t2tedge.cli import main

    from t2tedge.data import discover

    data = tmp_path / "val"
    images = [sample.path for sample in discover(val_dir)[:3]]
    for i, image in enumerate(images):  # the third one truncated
        copy = data / image.parent.name / image.name
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(image.read_bytes()[:300] if i == 2 else image.read_bytes())
    out = tmp_path / "out"
    assert main(["table4", "--models", "mobilenet_v2_100", "--runtimes", "onnxruntime,coreml", "--precisions", "fp32",
                 "--data", str(data), "--runs", "2", "--ray", "auto", "--ray-cpus", "2", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert "mobilenet_v2_100 onnxruntime fp32: score failed: cannot read image" in captured.err
    assert "0 cells measured, 1 skipped, 1 failed" in captured.out
    failed = next(c for c in load_table(out / "table4.json").cells if c.runtime == "onnxruntime")
    assert failed.status == "failed" and images[2].name in failed.reason
