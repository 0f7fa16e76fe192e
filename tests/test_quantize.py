"""PTQ: the config shape, ReLU6 folding, MobileNetV2 INT8 accuracy on real images, clear errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from t2tedge.cli import main
from t2tedge.quantize import OpQuantConfig, QuantConfig, plan


@pytest.fixture(scope="module")
def mobilenet_int8(tmp_path_factory, weights_dir, sample_dir):
    out = tmp_path_factory.mktemp("int8")
    assert main(["quantize", "mobilenet_v2_100", "--checkpoint", str(weights_dir / "mobilenet_v2_1.0_imagenet_tfsame.pth"),
                 "--calib", str(sample_dir), "--num-calib", "64", "--out", str(out)]) == 0
    return out / "mobilenet_v2_100_int8.onnx"


def test_int8_graph_and_report(mobilenet_int8):
    proto = onnx.load(mobilenet_int8)
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert "Clip" not in ops  # ReLU6 folded into the quantized Conv output range
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["t2tedge.precision"] == "int8" and json.loads(meta["t2tedge.quant_config"])["method"] == "minmax"
    report = json.loads(mobilenet_int8.with_suffix(".json").read_text())
    assert report["calibration"]["images"] == 64 and len(report["quantized_nodes"]) > 50


def test_int8_keeps_accuracy_on_real_images(mobilenet_int8, weights_dir, val_dir):
    """Default PTQ must not collapse MobileNetV2 (plain per-tensor ORT falls to ~8%)."""
    from t2tedge.data import discover
    from t2tedge.harness.evaluate import evaluate
    from t2tedge.models import create_model, get_spec
    from t2tedge.runtimes import get_runtime

    samples = discover(val_dir)[::4]
    spec = get_spec("mobilenet_v2_100")
    fp32 = evaluate(get_runtime("torch").load(create_model(
        "mobilenet_v2_100", weights_dir / "mobilenet_v2_1.0_imagenet_tfsame.pth")), samples, spec.preprocess, progress=None)
    int8 = evaluate(get_runtime("onnxruntime").load(mobilenet_int8), samples, spec.preprocess, progress=None)
    assert int8.top1 >= fp32.top1 - 0.015
    assert np.mean(int8.predictions == fp32.predictions) >= 0.96


def test_config_precedence_and_json_round_trip(tmp_path):
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Conv", ["x", "w"], ["y"], name="/stem/Conv"),
         onnx.helper.make_node("Clip", ["y"], ["z"], name="/stem/Clip"),
         onnx.helper.make_node("MatMul", ["z", "w2"], ["a"], name="/head/MatMul"),
         onnx.helper.make_node("MatMul", ["a", "z"], ["b"], name="/attn/MatMul"),
         onnx.helper.make_node("Softmax", ["b"], ["c"], name="/attn/Softmax")],
        "g", [], [], initializer=[onnx.numpy_helper.from_array(np.zeros((1,), np.float32), n) for n in ("w", "w2")])
    assert set(plan(QuantConfig(), graph)) == {"/stem/Conv", "/stem/Clip", "/head/MatMul"}
    assert set(plan(QuantConfig(quantize_activation_matmul=True), graph)) >= {"/attn/MatMul"}
    no_matmul = QuantConfig().with_float(["MatMul"], graph)
    assert set(plan(no_matmul, graph)) == {"/stem/Conv", "/stem/Clip"}
    by_name = QuantConfig(op_type_configs={"MatMul": None}, op_name_configs={"/head/*": OpQuantConfig()})
    assert set(plan(by_name, graph)) == {"/stem/Conv", "/stem/Clip", "/head/MatMul"}
    assert set(plan(QuantConfig().with_float(["/stem/Conv"], graph), graph)) == {"/head/MatMul"}
    by_name.save(tmp_path / "q.json")
    assert QuantConfig.load(tmp_path / "q.json").to_dict() == by_name.to_dict()


@pytest.mark.parametrize("argv,message", [
    (["--calib", "{empty}"], "no images found"),
    (["--method", "mse"], None),
    (["--config", "{bad}"], "cannot read quantization config"),
])
def test_quantize_cli_errors(argv, message, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.json").write_text("{not json")
    argv = [a.format(empty=tmp_path / "empty", bad=tmp_path / "bad.json") for a in argv]
    if message is None:
        with pytest.raises(SystemExit):
            main(["quantize", "mobilenet_v2_100", "--checkpoint", "random"] + argv)
        return
    code = main(["quantize", "mobilenet_v2_100", "--checkpoint", "random", "--out", str(tmp_path / "out")] + argv)
    assert code == 1 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
