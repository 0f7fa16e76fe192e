"""The CLI itself: each command parses its flags into one call of a library function and prints what it made.
The library functions are replaced by recorders here; what they compute is tested through the library."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from t2tedge.cli import main


@pytest.fixture
def recorder(monkeypatch):
    """Replace `module.name` with a function that records its call and returns `result(call)`."""
    calls: list[SimpleNamespace] = []

    def replace(module, name: str, result):
        def record(*args, **kwargs):
            call = SimpleNamespace(args=args, kwargs=kwargs)
            calls.append(call)
            return result(call)

        monkeypatch.setattr(module, name, record)
        return calls

    return replace


def test_quantize_passes_its_flags_to_quantize_model(recorder, tmp_path, capsys):
    import t2tedge.quantize.pipeline as pipeline

    def made(call):
        out = Path(call.args[2]) / "mobilenet_v2_100_int8_tensorrt.onnx"
        return out, SimpleNamespace(quantized_nodes=["a", "b", "c"], float_nodes=["d"], trt_calibration_cache=None)

    calls = recorder(pipeline, "quantize_model", made)
    assert main(["quantize", "mobilenet_v2_100", "--target", "tensorrt", "--method", "percentile", "--per-tensor",
                 "--num-calib", "8", "--seed", "3", "--exclude", "Softmax,/head/Gemm", "--target-agreement", "0.99",
                 "--max-float", "4", "--checkpoint", "random", "--out", str(tmp_path)]) == 0
    (call,) = calls
    model, config, _, settings = call.args
    assert (model, call.kwargs["published_in"]) == ("mobilenet_v2_100", tmp_path)
    assert config.method == "percentile" and config.global_config.weight_granularity == "per_tensor"
    assert (settings.num_calib, settings.seed, settings.target, settings.checkpoint) == (8, 3, "tensorrt", None)
    assert list(settings.keep_float) == ["Softmax", "/head/Gemm"] and settings.onnx_path is None
    search = settings.search
    assert search.target_agreement == 0.99 and search.max_float == 4 and search.searching
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'mobilenet_v2_100_int8_tensorrt.onnx'} (3 nodes quantized, 1 kept float)" in out


def test_quantize_takes_a_pretrained_tag_as_weights_and_classes(recorder, tmp_path):
    import t2tedge.quantize.pipeline as pipeline
    from t2tedge.models.pretrained import get_pretrained

    calls = recorder(pipeline, "quantize_model",
                     lambda call: (tmp_path / "x.onnx", SimpleNamespace(quantized_nodes=[], float_nodes=[],
                                                                 trt_calibration_cache=None)))
    assert main(["quantize", "t2t_vit_7.imagenette", "--out", str(tmp_path)]) == 0
    (call,) = calls
    tag = get_pretrained("t2t_vit_7.imagenette")
    assert call.args[0] == "t2t_vit_7" and call.kwargs["num_classes"] == tag.num_classes == 10
    assert Path(call.args[3].checkpoint) == tag.checkpoint()


def test_export_onnx_passes_its_options(recorder, tmp_path, capsys):
    import t2tedge.export as export

    def made(call):
        path = Path(call.kwargs["out_dir"]) / "t2t_vit_7.onnx"
        path.write_bytes(b"x" * 2_000_000)
        return path

    calls = recorder(export, "export_onnx", made)
    assert main(["export", "onnx", "t2t_vit_7", "--checkpoint", "random", "--opset", "17", "--dynamic-batch",
                 "--no-simplify", "--out", str(tmp_path)]) == 0
    (call,) = calls
    options = call.kwargs["options"]
    assert call.args == ("t2t_vit_7", None) and call.kwargs["out_dir"] == tmp_path
    assert options.opset == 17 and options.dynamic_batch and not options.simplify
    assert f"wrote {tmp_path / 't2t_vit_7.onnx'} (2.0 MB, onnxruntime fp32)" in capsys.readouterr().out


def test_table4_passes_its_grid(recorder, monkeypatch, tmp_path, capsys, val_dir):
    import t2tedge.harness.table4 as table4
    from t2tedge.results import Table4Cell, Table4Result

    grids = []

    class FakeGrid:
        def __init__(self, models, runtimes, precisions, settings, out, artifacts=None):
            grids.append(SimpleNamespace(models=models, runtimes=runtimes, precisions=precisions, settings=settings,
                                         out=out, artifacts=artifacts))

        def run(self):
            cell = Table4Cell(model="t2t_vit_7", runtime="coreml", precision="fp32", family="T2T-ViT",
                              weights="untrained", status="skipped", reason="macOS only")
            return Table4Result(version="0", machine=None, data=None, cells=[cell])

    monkeypatch.setattr(table4, "Grid", FakeGrid)
    written = recorder(table4, "write_outputs", lambda call: {"json": tmp_path / "table4.json"})
    assert main(["table4", "--models", "t2t_vit_7", "--runtimes", "coreml", "--precisions", "fp32", "--data",
                 str(val_dir), "--limit", "4", "--runs", "2", "--num-calib", "8", "--out", str(tmp_path),
                 "--artifacts", str(tmp_path / "shared")]) == 0
    (grid,) = grids
    assert (grid.models, grid.runtimes, grid.precisions) == (["t2t_vit_7"], ["coreml"], ["fp32"])
    assert grid.artifacts == tmp_path / "shared"
    assert (grid.settings.limit, grid.settings.runs, grid.settings.num_calib) == (4, 2, 8)
    assert written[0].args[1] == tmp_path
    assert "0 cells measured, 1 skipped" in capsys.readouterr().out
