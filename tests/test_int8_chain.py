"""The INT8 chain (`Target.int8_from`, `int8_prerequisite`, `int8_request`): every consumer (Table 4 in one process,
`parity --precision int8`, `export`) makes one quantization plan per model and calibration set, and the other
targets' INT8 files start from it. quantize_model and the downstream builds are replaced by recorders that write
small files: what is checked is who builds from what, not the quantizers (tested on their own)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from t2tedge.quantize import pipeline
from t2tedge.quantize.quantization_plan import plan_path_for
from t2tedge.targets import (APPLIES_PLAN, CALIBRATES, READS_QDQ, BuildRequest, build_artifact, get_target,
                             int8_prerequisite, int8_request, plan_target, register)

M = "mobilenet_v2_100"
DOWNSTREAM = ("openvino", "litert", "executorch")


@pytest.fixture
def recorded(monkeypatch):
    """quantize_model writes a stand-in QDQ file and plan; openvino, litert and executorch record their requests."""
    quantized: list[tuple[str, str, int]] = []
    requests: dict[str, list[BuildRequest]] = {name: [] for name in DOWNSTREAM}

    def quantize_model(model_name, config, out_dir, settings, **kwargs):
        quantized.append((model_name, str(settings.calib), settings.num_calib))
        out = Path(out_dir) / pipeline.output_name(model_name, settings.target)
        out.write_text("qdq")
        plan_path_for(out).write_text("{}")
        return out, None

    monkeypatch.setattr(pipeline, "quantize_model", quantize_model)
    originals = {name: get_target(name) for name in DOWNSTREAM}
    for name in DOWNSTREAM:
        target = get_target(name)

        def build(request, name=name):
            requests[name].append(request)
            request.out_dir.mkdir(parents=True, exist_ok=True)
            path = request.out_dir / f"{request.model}_{request.precision}{get_target(name).suffixes[0]}"
            path.write_text(json.dumps({"source": str(request.source), "plan": request.options.get("plan")}))
            return path

        register(dataclasses.replace(target, build=build, validate=None, companions=lambda path: ()))
    yield quantized, requests
    for target in originals.values():  # the real descriptors back
        register(target)


def test_each_target_says_how_its_int8_is_made():
    assert plan_target().name == "onnxruntime" and get_target("onnxruntime").int8_from == CALIBRATES
    assert get_target("openvino").int8_from == READS_QDQ
    assert get_target("litert").int8_from == get_target("executorch").int8_from == APPLIES_PLAN
    assert get_target("tensorrt").int8_from == CALIBRATES  # TensorRT takes symmetric int8: its own QDQ file
    request = BuildRequest(model=M, precision="int8", out_dir=Path("x"))
    assert int8_prerequisite(get_target("litert"), request) is plan_target()
    assert int8_prerequisite(get_target("coreml"), request) is None
    assert int8_prerequisite(get_target("litert"), dataclasses.replace(request, precision="fp32")) is None
    given = dataclasses.replace(request, options={"plan": "my.plan.json"})
    assert int8_prerequisite(get_target("executorch"), given) is None  # --plan FILE holds its source
    qdq = Path("out/m_int8.onnx")
    assert int8_request(get_target("openvino"), request, qdq).source == qdq
    assert int8_request(get_target("litert"), request, qdq).options["plan"] == str(plan_path_for(qdq))


def test_a_table4_grid_quantizes_once_and_every_int8_cell_starts_from_that_file(recorded, tmp_path, val_dir):
    from t2tedge.harness.table4 import Grid, GridSettings

    quantized, requests = recorded
    runtimes = ["onnxruntime", *DOWNSTREAM]
    grid = Grid([M], runtimes, ["int8"], GridSettings(data=val_dir, limit=2, num_calib=8), tmp_path / "t4")
    files = {name: grid.artifact(M, get_target(name), "int8", None) for name in runtimes}
    assert quantized == [(M, str(grid.suite.calibration_folder()), 8)]
    qdq = files["onnxruntime"]
    (openvino,) = requests["openvino"]
    assert openvino.source == qdq and openvino.checkpoint is None  # the IR is the onnxruntime cell's QDQ file
    for name in ("litert", "executorch"):
        (request,) = requests[name]
        assert request.options["plan"] == str(plan_path_for(qdq)) and request.source is None
    # Built once: a second grid on the same folders rebuilds nothing.
    again = Grid([M], runtimes, ["int8"], GridSettings(data=val_dir, limit=2, num_calib=8), tmp_path / "t4")
    assert {name: again.artifact(M, get_target(name), "int8", None) for name in runtimes} == files
    assert len(quantized) == 1 and all(len(r) == 1 for r in requests.values())


def test_parity_and_export_follow_the_same_chain(recorded, tmp_path, sample_dir):
    from t2tedge.harness.parity import int8_artifacts

    quantized, requests = recorded
    targets = [get_target(name) for name in ("onnxruntime", *DOWNSTREAM)]
    files, how = int8_artifacts(targets, M, None, tmp_path / "parity", sample_dir, 8, (), 1000)
    assert len(quantized) == 1 and requests["openvino"][0].source == files["onnxruntime"]
    assert how == {"onnxruntime": "the plan's own QDQ file", "openvino": "built from the plan's QDQ file",
                   "litert": "applies the plan (--plan)", "executorch": "applies the plan (--plan)"}
    request = BuildRequest(model=M, precision="int8", out_dir=tmp_path / "export", calib=sample_dir, num_calib=8)
    path = build_artifact(get_target("litert"), request)
    assert len(quantized) == 2 and json.loads(path.read_text())["plan"].endswith(".plan.json")
    assert [p.name for p in (tmp_path / "export").iterdir()] == [path.name]  # the QDQ file was staged and removed
