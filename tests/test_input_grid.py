"""The input image quantized on its own pixel grid (quantize/input_grid.py)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from t2tedge.quantize.input_grid import align_input_quantization

STEP = 1 / 127.5  # MobileNet preprocessing: mean = std = 0.5, x = p / 127.5 - 1


def _first_conv_qdq(path, pads, mean=0.5, std=0.5, zero_point=np.uint8(128)) -> onnx.ModelProto:
    """image -> Q -> DQ -> Conv(int8 per-channel weights, int32 bias) -> logits, as ORT's quantizer writes it,
    with the input scale ORT calibrates for [-1, 1]: 2/255 and zero point 128."""
    rng = np.random.default_rng(0)
    weights = rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    weight_scale = rng.uniform(0.002, 0.004, 4).astype(np.float32)
    input_scale = np.float32(2 / 255)
    bias_scale = (input_scale * weight_scale).astype(np.float32)
    inits = [numpy_helper.from_array(v, n) for n, v in [
        ("image_scale", np.array(input_scale)), ("image_zero_point", np.array(zero_point)),
        ("w_q", weights), ("w_scale", weight_scale), ("w_zero", np.zeros(4, np.int8)),
        ("b_q", rng.integers(-5000, 5000, 4).astype(np.int32)), ("b_scale", bias_scale),
        ("b_zero", np.zeros(4, np.int32))]]
    nodes = [
        helper.make_node("QuantizeLinear", ["image", "image_scale", "image_zero_point"], ["image_q"], name="q"),
        helper.make_node("DequantizeLinear", ["image_q", "image_scale", "image_zero_point"], ["image_dq"], name="dq"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], name="w_dq", axis=0),
        helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zero"], ["b"], name="b_dq", axis=0),
        helper.make_node("Conv", ["image_dq", "w", "b"], ["logits"], name="conv", pads=pads)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, list("nchw"))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.metadata_props.add(key="t2tedge.preprocess", value=json.dumps(
        {"mean": [mean] * 3 if np.isscalar(mean) else mean, "std": [std] * 3}))
    onnx.save(model, path)
    return model


def _float_conv(model: onnx.ModelProto, x: np.ndarray, pads) -> np.ndarray:
    """The Conv on the float input with the model's dequantized weights and bias (what int8 should compute)."""
    import torch

    inits = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}
    weight = inits["w_q"] * inits["w_scale"].reshape(-1, 1, 1, 1)
    bias = inits["b_q"] * inits["b_scale"]
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    return torch.nn.functional.conv2d(torch.from_numpy(padded), torch.from_numpy(weight),
                                      torch.from_numpy(bias)).numpy()


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"image": x})[0]


@pytest.mark.parametrize("zero_point", [np.uint8(128), np.int8(0)], ids=["uint8", "int8-tensorrt"])
def test_pixels_are_quantized_exactly_and_the_bias_absorbs_the_offset(tmp_path, zero_point):
    pixels = np.random.default_rng(1).integers(0, 256, (1, 3, 8, 8))
    pixels.flat[:2] = [0, 255]  # both ends of the grid
    x = (pixels / 255 - 0.5) / 0.5
    x = x.astype(np.float32)
    model = _first_conv_qdq(tmp_path / "m.onnx", [0, 0, 0, 0], zero_point=zero_point)
    expected = _float_conv(model, x, [0, 0, 0, 0])
    before = np.abs(_run(model, x) - expected).max()

    report = align_input_quantization(model)
    assert report["applied"] and report["step"] == pytest.approx(STEP)
    assert report["offset"] == pytest.approx(-STEP / 2) and report["convs"] == ["conv"]
    assert report["zero_point"] == (128 if zero_point.dtype == np.uint8 else 0)
    onnx.checker.check_model(model, full_check=True)
    after = np.abs(_run(model, x) - expected).max()
    assert after < 1e-4 < 5e-3 < before  # before: pixel pairs shared a code; after: only the int32 bias rounds


def test_padding_is_the_only_place_the_offset_shows(tmp_path):
    x = ((np.random.default_rng(2).integers(0, 256, (1, 3, 8, 8)) / 255 - 0.5) / 0.5).astype(np.float32)
    pads = [1, 1, 1, 1]
    model = _first_conv_qdq(tmp_path / "m.onnx", pads)
    expected = _float_conv(model, x, pads)
    align_input_quantization(model)
    error = np.abs(_run(model, x) - expected)
    assert error[..., 1:-1, 1:-1].max() < 1e-4
    assert error.max() > 1e-3  # the border reads padding as -offset, not 0
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    weight = np.abs(inits["w_q"] * inits["w_scale"].reshape(-1, 1, 1, 1)).reshape(4, -1).sum(1)
    assert (error.max(axis=(0, 2, 3)) <= STEP / 2 * weight + 1e-4).all()  # a padded tap is off by the offset at most


def test_inputs_normalised_per_channel_are_left_alone(tmp_path):
    model = _first_conv_qdq(tmp_path / "m.onnx", [0, 0, 0, 0], mean=[0.485, 0.456, 0.406])
    before = model.SerializeToString()
    report = align_input_quantization(model)
    assert not report["applied"] and "not normalised alike" in report["reason"]
    assert model.SerializeToString() == before
    del model.metadata_props[:]
    assert "no t2tedge.preprocess metadata" in align_input_quantization(model)["reason"]
