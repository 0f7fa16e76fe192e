"""Empirical bias correction: a layer's int8 output must have its fp32 mean on the calibration images, through
every bias form our exports have (int32 Conv/Gemm bias, the Add after a MatMul, whose output stays float),
and the result is cached per calibration like the ranges."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from conftest import ArrayCalibration
from t2tedge.quantize import QuantConfig, quantize_onnx


def _two_linear_layers(path):
    """image (N, 8, 16) -> MatMul + Add -> Relu -> MatMul + Add -> logits: nn.Linear as torch exports it."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(16, 16)).astype(np.float32) / 4, "w1"),
             numpy_helper.from_array(rng.normal(size=16).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.normal(size=(16, 8)).astype(np.float32) / 4, "w2"),
             numpy_helper.from_array(rng.normal(size=8).astype(np.float32), "b2")]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["image", "w1"], ["m1"], name="fc1/MatMul"),
         helper.make_node("Add", ["m1", "b1"], ["a1"], name="fc1/Add"),
         helper.make_node("Relu", ["a1"], ["r1"], name="relu"),
         helper.make_node("MatMul", ["r1", "w2"], ["m2"], name="fc2/MatMul"),
         helper.make_node("Add", ["m2", "b2"], ["logits"], name="fc2/Add")], "two",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 8, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 8, 8])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _run(path, images):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": images})[0]


def test_bias_correction_restores_the_fp32_output_mean_and_is_cached(tmp_path):
    # Heavy-tailed inputs: MSE ranges clip their tail, which lowers the mean every later layer sees.
    images = np.random.default_rng(1).exponential(size=(64, 8, 16)).astype(np.float32) ** 3
    _two_linear_layers(tmp_path / "fp32.onnx")
    reference = _run(tmp_path / "fp32.onnx", images)
    outputs, reports = {}, {}
    for mode in ("off", "on"):
        config = QuantConfig(weight_rounding="nearest", bias_correction=mode)
        reports[mode] = quantize_onnx(tmp_path / "fp32.onnx", tmp_path / f"{mode}.onnx", ArrayCalibration(images), config,
                                      ranges_cache=tmp_path / "ranges.json")
        outputs[mode] = _run(tmp_path / f"{mode}.onnx", images)
    assert reports["off"]["bias_correction"] == {"mode": "off", "applied": False}
    correction = reports["on"]["bias_correction"]
    assert correction["applied"] and correction["corrected_nodes"] == 2, correction
    mean_error = {k: np.abs((v - reference).mean(axis=(0, 1))).max() for k, v in outputs.items()}
    assert mean_error["off"] > 0.05, mean_error  # the clipping did shift the mean: the test can fail
    assert mean_error["on"] < 0.3 * mean_error["off"], mean_error
    sqnr = correction["calibration_sqnr_db"]
    assert sqnr["with"] > sqnr["without"], sqnr

    # A variant of the same calibration reads the correction back instead of running the model again.
    assert (tmp_path / "ranges.nearest.bias.npz").is_file()
    quantize_onnx(tmp_path / "fp32.onnx", tmp_path / "again.onnx", None,
                  QuantConfig(weight_rounding="nearest", bias_correction="on"), ranges_cache=tmp_path / "ranges.json")
    np.testing.assert_array_equal(_run(tmp_path / "again.onnx", images), outputs["on"])


def test_auto_keeps_the_correction_only_for_a_real_gain(tmp_path):
    """auto adopts the correction when it raises calibration SQNR by AUTO_MIN_GAIN_DB, else leaves the biases."""
    from t2tedge.quantize.bias_correction import AUTO_MIN_GAIN_DB, save_correction

    images = np.random.default_rng(1).exponential(size=(16, 8, 16)).astype(np.float32)
    _two_linear_layers(tmp_path / "fp32.onnx")
    fp32 = onnx.load(tmp_path / "fp32.onnx")
    biases = {"fc1/MatMul": np.full(16, 5.0), "fc2/MatMul": np.full(8, -5.0)}
    results = {}
    for gain in (AUTO_MIN_GAIN_DB / 2, 2 * AUTO_MIN_GAIN_DB):
        work = tmp_path / f"gain{gain}"
        work.mkdir()
        save_correction(work / "ranges.nearest.bias.npz", biases, 20.0, 20.0 + gain)
        report = quantize_onnx(tmp_path / "fp32.onnx", work / "q.onnx", ArrayCalibration(images),
                               QuantConfig(weight_rounding="nearest"), ranges_cache=work / "ranges.json")
        stored = {i.name: numpy_helper.to_array(i) for i in onnx.load(work / "q.onnx").graph.initializer}
        results[gain] = report["bias_correction"]["applied"], stored["b2"]
    (small_applied, small_b2), (large_applied, large_b2) = results.values()
    assert not small_applied and np.array_equal(small_b2, numpy_helper.to_array(fp32.graph.initializer[3]))
    assert large_applied and np.all(large_b2 == -5.0)
