"""Runtime parity torch vs ONNX Runtime on real images, batch 1 and 8 (dynamic batch)."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from t2tedge.cli import main
from t2tedge.harness.comparison import compare
from t2tedge.harness.parity import run_parity

TABLE4 = ["t2t_vit_7", "t2t_vit_12", "mobilenet_v1_100", "mobilenet_v2_100", "mobilenet_v2_140"]


def _checkpoint(name, weights_dir, t2t7_checkpoint):
    if name == "t2t_vit_7":
        return t2t7_checkpoint  # official release format, weights with real spread
    return {"mobilenet_v1_100": weights_dir / "mobilenet_v1_1.0_imagenet_tfsame.pth",
            "mobilenet_v2_100": weights_dir / "mobilenet_v2_1.0_imagenet_tfsame.pth"}.get(name)


# Every model at batch 1; batch 8 (the same chunking path for every model) on one T2T-ViT and one MobileNet.
@pytest.mark.parametrize("name,batch", [(name, 1) for name in TABLE4] + [("t2t_vit_7", 8), ("mobilenet_v2_100", 8)])
def test_torch_vs_onnxruntime_fp32(name, batch, val_dir, weights_dir, t2t7_checkpoint):
    report = run_parity(name, ["torch", "onnxruntime"], val_dir, n=16, batch=batch,
                        checkpoint=_checkpoint(name, weights_dir, t2t7_checkpoint))
    (pair,) = report["pairs"]
    assert report["passed"], pair["failures"]
    assert pair["max_abs"] <= 1e-4 and pair["top1_agreement"] == 1.0
    assert report["runtimes"]["onnxruntime"]["details"]["graph_optimization_level"] == "all"


def _perturbed_copy(src, dst, scale=0.05):
    proto = onnx.load(src)
    rng = np.random.default_rng(0)
    for init in proto.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype == np.float32 and array.ndim >= 2 and array.size > 1000:
            noisy = array + scale * array.std() * rng.standard_normal(array.shape).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(noisy, init.name))
    onnx.save(proto, dst)
    return dst


def test_cli_passes_then_fails_on_corrupted_onnx(val_dir, t2t7_checkpoint, tmp_path, capsys):
    from t2tedge.export import OnnxExportOptions, export_onnx

    good = export_onnx("t2t_vit_7", t2t7_checkpoint, out_dir=tmp_path, options=OnnxExportOptions(dynamic_batch=True))
    base = ["parity", "t2t_vit_7", "--runtimes", "torch,onnxruntime", "--checkpoint", str(t2t7_checkpoint),
            "--data", str(val_dir), "--limit", "8"]
    assert main(base + ["--onnx", str(good), "--json", str(tmp_path / "ok.json")]) == 0
    table = capsys.readouterr().out
    assert "torch vs onnxruntime" in table and "PASS" in table
    assert json.loads((tmp_path / "ok.json").read_text())["passed"] is True

    corrupted = _perturbed_copy(good, tmp_path / "corrupted.onnx")
    assert main(base + ["--onnx", str(corrupted)]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_missing_runtime_is_reported_as_skipped(val_dir, monkeypatch):
    from t2tedge.runtimes.onnxruntime_cpu import OnnxRuntimeCPU

    monkeypatch.setattr(OnnxRuntimeCPU, "unavailable_reason", classmethod(lambda cls: "onnxruntime is not installed"))
    report = run_parity("mobilenet_v2_100", ["torch", "onnxruntime"], val_dir, n=2)
    assert report["skipped"] == {"onnxruntime": "onnxruntime is not installed"}
    assert report["pairs"] == []


@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML runs on macOS, so it is not skipped there")
def test_runtimes_that_cannot_run_here_are_skipped_with_reason_and_typos_fail(val_dir, capsys):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here, so it is not skipped")
    report = run_parity("mobilenet_v2_100", ["torch", "onnxruntime", "coreml", "tensorrt"], val_dir, n=2)
    assert set(report["skipped"]) == {"coreml", "tensorrt"} and report["passed"]
    assert "only on macOS" in report["skipped"]["coreml"]
    assert "TensorRT is not installed" in report["skipped"]["tensorrt"]
    assert main(["parity", "mobilenet_v2_100", "--runtimes", "torch,onnxruntim", "--data", str(val_dir),
                 "--limit", "2"]) == 2
    assert "unknown target 'onnxruntim'" in capsys.readouterr().err


def test_compare_metrics_and_tolerances():
    ref = np.array([[3.0, 1.0, 0.0, -1.0, -2.0, -3.0], [0.0, 2.0, 1.0, 0.5, -1.0, -2.0]])
    same = compare(ref, ref.copy())
    assert same["passed"] and same["max_abs"] == 0 and same["top1_agreement"] == 1.0
    swapped = ref.copy()
    swapped[1, [1, 2]] = swapped[1, [2, 1]]
    result = compare(ref, swapped)
    assert not result["passed"] and result["top1_agreement"] == 0.5 and result["max_abs"] == 1.0
    assert any("top1_agreement" in f for f in result["failures"])
    nan = ref.copy()
    nan[0, 0] = np.nan
    assert not compare(ref, nan, "int8")["passed"]


def test_static_batch_graph_takes_any_batch(tmp_path):
    from t2tedge.export import OnnxExportOptions, export_onnx
    from t2tedge.runtimes import get_runtime

    rt = get_runtime("onnxruntime")
    one = rt.load(export_onnx("mobilenet_v2_100", None, out_dir=tmp_path))
    four = rt.load(export_onnx("mobilenet_v2_100", None, out_dir=tmp_path, options=OnnxExportOptions(batch=4)))
    images = np.random.default_rng(0).standard_normal((6, 3, 224, 224), dtype=np.float32)
    expected = np.concatenate([one.run(images[i:i + 1]) for i in range(6)])
    assert np.allclose(one.run(images), expected, atol=1e-5)
    assert np.allclose(four.run(images), expected, atol=1e-4)  # 4 + 2 padded


def test_onnxruntime_turns_off_matmul_add_fusion_only_on_several_threads(tmp_path):
    from t2tedge.export import export_onnx
    from t2tedge.runtimes import get_runtime

    rt = get_runtime("onnxruntime")
    path = export_onnx("t2t_vit_7", None, out_dir=tmp_path)
    one, two = rt.load(path, threads=1), rt.load(path, threads=2)
    assert one.describe().details["disabled_optimizers"] == "SkipLayerNormFusion"
    assert two.describe().details["disabled_optimizers"] == "SkipLayerNormFusion,MatMulAddFusion"
    images = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    assert np.allclose(one.run(images), two.run(images), atol=1e-4)


def test_onnxruntime_leaves_the_last_residual_add_out_of_skip_layer_norm(tmp_path):
    """ORT ignores optimizer names it does not know, so check that the names we pass really stop the fusion."""
    import onnx
    import onnxruntime as ort

    from t2tedge.export import export_onnx
    from t2tedge.ort_session import disabled_optimizers

    path = export_onnx("t2t_vit_7", None, out_dir=tmp_path)

    def optimized_op_types(disabled: list[str]) -> list[str]:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
        return [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]

    assert "SkipLayerNormalization" in optimized_op_types([])  # what ORT does by default
    for threads in (1, 2):
        assert "SkipLayerNormalization" not in optimized_op_types(disabled_optimizers(threads))


def test_torch_runtime_runs_convolutional_networks_channels_last():
    from t2tedge.models import create_model
    from t2tedge.runtimes.torch_eager import TorchRuntime

    mobilenet = TorchRuntime.load(create_model("mobilenet_v2_100"))
    assert mobilenet.describe().details["memory_format"] == "channels_last"
    assert TorchRuntime.load(create_model("t2t_vit_7")).describe().details["memory_format"] == "contiguous"
    batch = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    contiguous = TorchRuntime.load(mobilenet.model, channels_last=False)
    assert contiguous.describe().details["memory_format"] == "contiguous"
    assert np.abs(mobilenet.run(batch) - contiguous.run(batch)).max() <= 1e-4
