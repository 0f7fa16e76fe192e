"""Shared fixtures: the read-only ../shared data (tests skip only when it is absent) and checkpoints."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from t2tedge.models.synthetic import trained_like_state_dict  # noqa: E402,F401 (tests import it from here)
from t2tedge.paths import shared_dir  # noqa: E402


def shared_or_skip(*parts: str) -> Path:
    path = shared_dir().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not found: {path} (set T2TEDGE_SHARED)")
    return path


@pytest.fixture(scope="session")
def val_dir() -> Path:
    return shared_or_skip("data", "imagenet-val1300")


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return shared_or_skip("data", "imagenet-sample")


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    return shared_or_skip("weights")


def real_images(folder: Path, n: int, preprocess) -> torch.Tensor:
    from t2tedge.data import discover, load_batch, split

    chosen, _ = split(discover(folder), n, seed=1)
    images, _ = load_batch(chosen, preprocess)
    return torch.from_numpy(images)


def save_official_checkpoint(state: dict[str, torch.Tensor], path: Path, wrapper: str = "state_dict_ema",
                             prefix: str = "") -> Path:
    """Write `state` the way the official release and timm's training script do (args, epoch, wrapper)."""
    import argparse

    inner = {prefix + k: v for k, v in state.items()}
    if wrapper == "bare":
        torch.save(inner, path)
    else:
        torch.save({"epoch": 309, "arch": "t2t_vit", "args": argparse.Namespace(lr=1e-3, model="t2t_vit"),
                    "version": 2, wrapper: inner}, path)
    return path


@pytest.fixture(scope="session")
def t2t7_checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "t2t_vit_7_release.pth.tar"
    return save_official_checkpoint(trained_like_state_dict("t2t_vit_7"), path, prefix="module.")


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


class ArrayCalibration:
    """The calibration reader protocol (get_next / rewind) over a plain array of images, 8 at a time."""

    def __init__(self, images: np.ndarray, input_name: str = "image") -> None:
        self.images, self.input_name, self._position = images, input_name, 0

    def get_next(self):
        if self._position >= len(self.images):
            return None
        self._position += 8
        return {self.input_name: self.images[self._position - 8:self._position]}

    def rewind(self) -> None:
        self._position = 0


@pytest.fixture(scope="session")
def subject():
    """The project's Imagenette-trained T2T-ViT-7 with its data (`t2t_vit_7.imagenette`), or a skip."""
    from t2tedge.models import trained_subject

    found = trained_subject("t2t_vit_7")
    if found is None:
        pytest.skip("no trained T2T-ViT-7 subject: models/weights/t2t_vit_7_imagenette.pth or ../shared imagenette2 missing")
    return found


# The Table 4 grid on Imagenette that test_table4 checks and test_table4_ray runs again on Ray: the trained T2T-ViT-7
# on ONNX Runtime and OpenVINO in fp32 and int8 on 64 val images; MobileNetV2 has no Imagenette weights (skipped).
IMAGENETTE_GRID = (["t2t_vit_7", "mobilenet_v2_100"], ["onnxruntime", "openvino"], ["fp32", "int8"])


def imagenette_grid_settings():
    from t2tedge.harness.table4 import GridSettings
    from t2tedge.harness.table4_grid import SUITES

    # Timed in the grid's process: the timing process is what the Ray run uses, and test_table4's grid times alone.
    return GridSettings(data=SUITES["imagenette"].data(), limit=64, runs=3, warmup=1, num_calib=8, suite="imagenette",
                        time_alone=False)


@pytest.fixture(scope="session")
def imagenette_grid(subject, tmp_path_factory):
    """(out folder, table) of `IMAGENETTE_GRID` measured in one process, views written."""
    from t2tedge.harness.table4 import Grid, write_outputs

    out = tmp_path_factory.mktemp("table4-imagenette")
    table = Grid(*IMAGENETTE_GRID, imagenette_grid_settings(), out).run()
    write_outputs(table, out)
    return out, table


def assert_matches_schema(data: dict, cls) -> None:
    """`data` is valid against the checked-in JSON Schema file of result class `cls` (docs/schemas/)."""
    import json

    import jsonschema

    from t2tedge.results import schema_file_name

    schema = Path(__file__).resolve().parent.parent / "docs" / "schemas" / schema_file_name(cls)
    jsonschema.validate(data, json.loads(schema.read_text()))


def assert_op_trace(record) -> None:
    """What a per-op record of a runtime with its own profiler holds on any machine, idle or busy (how long ops take,
    and how their sum compares with the wall time, are the benchmarks' numbers: make profile-report): every op
    reported with a finite, non-negative time, the op sum their sum, every op either claimed by a model block or
    listed as unclaimed, blocks claiming nearly every op (by count), and each block row counting its own ops."""
    import collections
    import math

    import pytest

    assert record.op_timing == "measured" and record.ops and record.profiler
    assert all(math.isfinite(op.ms) and op.ms >= 0 for op in record.ops)
    assert record.op_sum_ms == pytest.approx(sum(op.ms for op in record.ops)) and record.op_sum_ms > 0
    assert record.wall_ms > 0
    claimed = [op for op in record.ops if op.block is not None]
    assert len(claimed) >= 0.9 * len(record.ops), (len(claimed), len(record.ops), record.unclaimed[:10])
    assert sorted(record.unclaimed) == sorted(op.name for op in record.ops if op.block is None)
    assert {row.name: row.ops for row in record.blocks} == collections.Counter(op.block for op in claimed)
    assert record.load_ms > 0 and record.first_run_ms > 0 and record.peak_rss_mb >= record.load_peak_rss_mb > 0
