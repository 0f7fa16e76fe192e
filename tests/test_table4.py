"""Table 4 harness on a tiny grid, through the library: typed cells, views that match the data, skips with reasons,
the cache, merging machines. One CLI test checks that `t2tedge table4` calls the same grid."""

from __future__ import annotations

import dataclasses
import json

import pytest

from conftest import assert_matches_schema
from t2tedge.cli import main
from t2tedge.errors import T2TEdgeError
from t2tedge.harness.table4 import Grid, GridSettings, load_table, merge, write_outputs
from t2tedge.harness.table4_views import binomial_half_width, markdown_rows, parse_markdown_rows, pareto_front
from t2tedge.results import MachineInfo, Table4Result

# INT8 and OpenVINO cells are checked in the Imagenette grid (conftest.IMAGENETTE_GRID), with trained weights.
MODELS, RUNTIMES, PRECISIONS = ("t2t_vit_7", "mobilenet_v2_100"), ("torch", "onnxruntime", "coreml"), ("fp32",)


@pytest.fixture(scope="module")
def grid(tmp_path_factory, val_dir):
    """MobileNetV2 with its real weights, T2T-ViT-7 untrained; the reference, ONNX Runtime, and Core ML's skip."""
    out = tmp_path_factory.mktemp("table4")
    settings = GridSettings(data=val_dir, limit=16, runs=5, num_calib=16)
    table = Grid(MODELS, RUNTIMES, PRECISIONS, settings, out).run()
    write_outputs(table, out)
    return out, table


def test_grid_cells(grid):
    table = grid[1]
    cells = {(c.model, c.runtime, c.precision): c for c in table.cells}
    assert len(cells) == 2 * 3
    measured = [k for k, c in cells.items() if c.measured]
    assert sorted(measured) == sorted([(m, r, "fp32") for m in MODELS for r in ("torch", "onnxruntime")])
    assert "Core ML" in cells[("t2t_vit_7", "coreml", "fp32")].reason
    mnv2 = cells[("mobilenet_v2_100", "onnxruntime", "fp32")]
    assert mnv2.weights == "trained" and cells[("t2t_vit_7", "torch", "fp32")].weights == "untrained"
    assert mnv2.images == 16 and mnv2.reference == "torch fp32" and mnv2.top1_agreement >= 0.9
    assert cells[("mobilenet_v2_100", "torch", "fp32")].top1_agreement == 1.0
    lat = mnv2.latency_b1
    assert lat.min_ms <= lat.p50_ms <= lat.p90_ms <= lat.p99_ms and lat.runs == 5
    assert table.machine.cores and mnv2.paper["top1"] == 72.0
    assert mnv2.artifact == "mobilenet_v2_100.onnx"  # the file `t2tedge export onnx` writes


def test_written_json_reads_back_as_the_same_result(grid):
    out, table = grid
    data = json.loads((out / "table4.json").read_text())
    assert data["schema"] == "t2tedge.table4/1"
    assert_matches_schema(data, Table4Result)
    assert load_table(out / "table4.json") == table


def test_markdown_matches_json(grid):
    out, table = grid
    text = (out / "table4.md").read_text()
    rows = parse_markdown_rows(text)
    assert rows == markdown_rows(table) and len(rows) == 2 * 2  # two models x two measured runtimes
    cell = next(c for c in table.cells if c.model == "mobilenet_v2_100" and c.runtime == "onnxruntime")
    row = next(r for r in rows if r[:2] == ["mobilenet_v2_100", "onnxruntime"])
    assert row[-1] == f"{100 * cell.top1:.2f}% / {100 * cell.top1_agreement:.1f}% / {cell.latency_b1.p50_ms:.2f}"
    assert "Untrained (random weights, accuracy not comparable): t2t_vit_7." in text
    assert "Core ML predicts only on macOS" in text  # why a cell is missing is said once, below the table


def test_binomial_interval():
    assert binomial_half_width(0.5, 100) == pytest.approx(9.8, abs=0.01)
    assert binomial_half_width(0.85, 3925) < binomial_half_width(0.85, 100) / 6


def test_png_is_written(grid):
    data = (grid[0] / "table4.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_the_cli_reruns_the_grid_from_its_cache(grid, val_dir, capsys):
    out, table = grid
    assert main(["table4", "--models", ",".join(MODELS), "--runtimes", ",".join(RUNTIMES), "--precisions",
                 ",".join(PRECISIONS), "--data", str(val_dir), "--limit", "16", "--runs", "5", "--num-calib", "16",
                 "--out", str(out)]) == 0
    assert "4 cells measured, 2 skipped" in capsys.readouterr().out
    rerun = load_table(out / "table4.json")
    assert all(c.cached for c in rerun.cells if c.measured)
    assert [dataclasses.replace(c, cached=None) for c in rerun.cells] == \
        [dataclasses.replace(c, cached=None) for c in table.cells]


def test_merge_two_machines(grid):
    table = grid[1]
    mac = MachineInfo(cpu="Apple M2", cores=8, system="Darwin 24.1.0", python="3.12.1", hostname_hash="0123456789ab")
    other = Table4Result(version=table.version, machine=mac, data=table.data,
                         cells=[dataclasses.replace(c, machine=mac) for c in table.cells])
    merged = merge([table, other])
    assert merged.machine is None and len(merged.cells) == 2 * len(table.cells)
    assert {c.machine.cpu for c in merged.cells} == {table.machine.cpu, "Apple M2"}
    # Agreement is computed within one machine: the Mac's ONNX Runtime cell compares with the Mac's reference.
    mac_ort = next(c for c in merged.cells if c.machine == mac and c.measured and c.runtime == "onnxruntime")
    assert mac_ort.reference == "torch fp32" and mac_ort.top1_agreement is not None


def test_merge_keeps_each_cells_toolkit_version_and_refuses_another_schema(grid, tmp_path):
    from t2tedge import __version__
    from t2tedge.harness.table4_views import render_markdown

    table = grid[1]
    pi = MachineInfo(cpu="Cortex-A76", cores=4, system="Linux 6.1", python="3.11.2", hostname_hash="fedcba987654")
    older = Table4Result(version="0.0.9", machine=pi, data=table.data,
                         cells=[dataclasses.replace(c, machine=pi, version=None) for c in table.cells])
    merged = merge([older, table])
    assert {c.version for c in merged.cells if c.machine == pi} == {"0.0.9"}
    assert {c.version for c in merged.cells if c.machine == table.machine} == {__version__}
    assert f"Merged from toolkit versions 0.0.9, {__version__}" in render_markdown(merged)
    data = json.loads(table.to_json())
    data["schema"] = "t2tedge.table4/2"
    (tmp_path / "future.json").write_text(json.dumps(data))
    with pytest.raises(T2TEdgeError, match=r"not a Table 4 result or profile record \(schema 't2tedge.table4/2'; "
                                           r"expected t2tedge.table4/1"):
        load_table(tmp_path / "future.json")


def test_merge_refuses_other_files(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"schema": "other"}))
    with pytest.raises(T2TEdgeError, match="not a Table 4 result or profile record"):
        load_table(tmp_path / "bad.json")
    (tmp_path / "typo.json").write_text(json.dumps({"schema": "t2tedge.table4/1", "version": "x", "machine": None,
                                                    "data": None, "cells": [{"model": "m"}]}))
    with pytest.raises(T2TEdgeError, match="missing field 'runtime'"):
        load_table(tmp_path / "typo.json")


def test_pareto_front():
    points = [(1.0, 70.0), (2.0, 75.0), (3.0, 74.0), (0.5, 60.0), (2.0, 72.0)]
    assert pareto_front(points) == [3, 0, 1]


def test_imagenette_suite_measures_trained_models_and_skips_the_rest(imagenette_grid):
    out, table = imagenette_grid
    assert table.data.suite == "imagenette" and table.data.images == 64
    assert table.data.folder.endswith("imagenette2/val")
    cells = {(c.model, c.runtime, c.precision): c for c in table.cells}
    t2t = cells[("t2t_vit_7", "onnxruntime", "fp32")]
    # 64 images spread over the 10 classes; the trained subject scores 85% on all 3925.
    assert t2t.weights == "trained" and t2t.top1 >= 0.6 and t2t.measured
    assert t2t.reference == "onnxruntime fp32" and cells[("t2t_vit_7", "openvino", "fp32")].top1_agreement >= 0.95
    for runtime in ("onnxruntime", "openvino"):
        assert cells[("t2t_vit_7", runtime, "int8")].top1_agreement >= 0.8
    ort_int8, ov_int8 = cells[("t2t_vit_7", "onnxruntime", "int8")], cells[("t2t_vit_7", "openvino", "int8")]
    # Each cell runs the file `t2tedge export TARGET --precision P` writes: the QDQ ONNX file for ONNX Runtime, the
    # IR of the file quantized with OpenVINO's choices for OpenVINO, each in int8 kernels.
    assert ort_int8.artifact == "t2t_vit_7_int8.onnx" and ov_int8.artifact == "t2t_vit_7_int8.xml"
    assert ov_int8.artifact_sha256 != ort_int8.artifact_sha256
    assert ov_int8.artifact_bytes > ort_int8.artifact_bytes / 2  # the IR's .bin counts too
    assert ort_int8.artifact_bytes < cells[("t2t_vit_7", "onnxruntime", "fp32")].artifact_bytes / 2
    assert "u8 x" in ov_int8.runtime_info["details"]["layers_by_precision"]
    skipped = cells[("mobilenet_v2_100", "onnxruntime", "fp32")]
    assert skipped.status == "skipped" and "no Imagenette-trained mobilenet_v2_100" in skipped.reason
    assert (out / "table4.png").is_file() and "Untrained" not in (out / "table4.md").read_text()


def test_the_cli_and_profile_need_no_torch(tmp_path, weights_dir):
    """A device with only onnxruntime and numpy runs the bundled profiler: the CLI must import without torch."""
    import subprocess
    import sys

    from t2tedge.export import export_onnx

    path = export_onnx("mobilenet_v2_100", weights_dir / "mobilenet_v2_1.0_imagenet_tfsame.pth", out_dir=tmp_path)
    code = ("import sys; sys.modules['torch'] = None; from t2tedge.cli import main; "
            f"sys.exit(main(['profile', {str(path)!r}, '--runs', '2', '--warmup', '1', '--out', "
            f"{str(tmp_path / 'cell.json')!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    cell = json.loads((tmp_path / "cell.json").read_text())["cell"]
    assert cell["model"] == "mobilenet_v2_100" and "params" not in cell  # complexity needs torch: left to the host
