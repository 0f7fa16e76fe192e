"""`export --precision auto`: the fastest candidate that meets the agreement target is the file written, with its
record beside it; an unreachable target is one line naming the best candidate, and nothing is written. Builds,
timings and logits are given (real builds and timings: `make bench-speed`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from t2tedge.errors import DataError
from t2tedge.harness import auto_precision
from t2tedge.harness.auto_precision import AutoPrecisionSettings, choose_fastest, search
from t2tedge.results import AutoCandidate, AutoPrecisionRecord
from t2tedge.targets import BuildRequest, get_target

from conftest import assert_matches_schema


def _candidate(precision: str, p50: float, agreement: float) -> AutoCandidate:
    return AutoCandidate(precision=precision, file=f"m_{precision}.onnx", bytes=1, p50_ms=p50, agreement=agreement)


def test_the_fastest_candidate_meeting_the_target_wins():
    rows = [_candidate("fp32", 10.0, 1.0), _candidate("fp16", 7.0, 0.999), _candidate("int8", 5.0, 0.98)]
    assert choose_fastest(rows, 0.99).precision == "fp16"  # int8 is faster but short of the target
    assert choose_fastest(rows, 0.97).precision == "int8"
    assert choose_fastest(rows[:1] + [_candidate("int8", 12.0, 1.0)], 0.99).precision == "fp32"  # slower int8 loses


def test_an_unreachable_target_names_the_best_candidate():
    rows = [_candidate("int8", 5.0, 0.95), _candidate("w8", 8.0, 0.97)]
    with pytest.raises(DataError) as caught:
        choose_fastest(rows, 0.99)
    message = str(caught.value)
    assert "\n" not in message and "w8 at 0.9700 (p50 8.00 ms)" in message, message


@pytest.fixture
def faked(tmp_path, monkeypatch):
    """ONNX Runtime's target with builds that write a placeholder file, timings and top-1 predictions given."""
    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(12):
        Image.fromarray(np.full((40, 40, 3), 20 * i, np.uint8)).save(calib / f"photo{i}.jpg")
    times = {"t2t_vit_7.onnx": 10.0, "t2t_vit_7_int8.onnx": 4.0}
    wrong = {"t2t_vit_7.onnx": 0, "t2t_vit_7_int8.onnx": 1}  # images whose top-1 the file gets wrong
    built = []

    def build(target, request):
        request.out_dir.mkdir(parents=True, exist_ok=True)
        path = request.out_dir / ("t2t_vit_7.onnx" if request.precision == "fp32" else "t2t_vit_7_int8.onnx")
        path.write_bytes(request.precision.encode())
        built.append((request.precision, tuple(s.path.name for s in request.exclude)))
        return path

    def logits(target, path, images, threads):
        out = np.zeros((len(images), 3), np.float32)
        out[:, 0] = 1
        out[: wrong[path.name], 1] = 2
        return out

    monkeypatch.setattr(auto_precision, "build_artifact", build)
    monkeypatch.setattr(auto_precision, "_logits", logits)
    monkeypatch.setattr(auto_precision, "time_alone", lambda path, *a: {
        "latency_b1": type("Stats", (), {"p50_ms": times[path.name]})()})
    from t2tedge.models import get_spec

    request = BuildRequest(model="t2t_vit_7", precision="fp32", out_dir=tmp_path / "out", calib=calib, num_calib=4)
    return request, get_spec("t2t_vit_7").preprocess, built


def test_search_writes_the_chosen_file_and_its_record(faked):
    request, preprocess, built = faked
    settings = AutoPrecisionSettings(target_agreement=0.8, num_heldout=6, runs=3)
    path, record = search(get_target("onnxruntime"), request, settings, preprocess, say=lambda text: None)
    assert path == request.out_dir / "t2t_vit_7_int8.onnx" and path.read_bytes() == b"int8"
    assert record.chosen == "int8" and [(c.precision, c.ratio_to_fp32) for c in record.candidates] == [
        ("fp32", 1.0), ("int8", 0.4)]
    assert record.candidates[1].agreement == pytest.approx(5 / 6) and record.images == 6
    # Every build leaves the scored images out of its calibration.
    assert {precision for precision, _ in built} == {"fp32", "int8"} and all(len(held) == 6 for _, held in built)
    assert sorted(p.name for p in request.out_dir.iterdir()) == [
        "t2t_vit_7_int8.auto.json", "t2t_vit_7_int8.auto.md", "t2t_vit_7_int8.auto.png", "t2t_vit_7_int8.onnx"]
    data = json.loads((request.out_dir / "t2t_vit_7_int8.auto.json").read_text())
    assert_matches_schema(data, AutoPrecisionRecord)
    assert "| int8 **chosen** |" in (request.out_dir / "t2t_vit_7_int8.auto.md").read_text()


def test_search_short_of_the_target_writes_nothing(faked):
    request, preprocess, _ = faked
    settings = AutoPrecisionSettings(target_agreement=0.9, candidates=("int8",), num_heldout=6, runs=3)
    with pytest.raises(DataError, match=r"the best is int8 at 0\.8333 \(p50 4\.00 ms\)"):
        search(get_target("onnxruntime"), request, settings, preprocess, say=lambda text: None)
    assert list(request.out_dir.iterdir()) == []  # the staging folder is gone too
