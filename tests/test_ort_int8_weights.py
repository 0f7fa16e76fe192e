"""INT8 graphs reach ONNX Runtime as uint8 where its int8 kernels can saturate (core/ort_int8_weights.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from t2tedge import ort_int8_weights
from t2tedge.ort_int8_weights import int8_dot_may_saturate, make_int8_unsigned
from t2tedge.runtimes.onnxruntime_cpu import OnnxRuntimeCPU

CHANNELS, OUT = 64, 8
X_SCALE, W_SCALE, Y_SCALE = 1 / 255, 0.01, 0.5


def _qdq_conv(path, activation_dtype=np.uint8) -> str:
    """image -> Q/DQ -> 1x1 Conv with int8 weights of 127 (per channel) -> Q/DQ -> logits: the worst case of
    vpmaddubsw, every pair of products 255 x 127."""
    zero = 0 if activation_dtype == np.uint8 else -128  # the same codes, as int8
    inits = [
        numpy_helper.from_array(np.array(X_SCALE, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(zero, activation_dtype), "x_zero"),
        numpy_helper.from_array(np.full((OUT, CHANNELS, 1, 1), 127, np.int8), "w_q"),
        numpy_helper.from_array(np.full(OUT, W_SCALE, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(OUT, np.int8), "w_zero"),
        numpy_helper.from_array(np.array(Y_SCALE, np.float32), "y_scale"),
        numpy_helper.from_array(np.array(zero, activation_dtype), "y_zero"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["image", "x_scale", "x_zero"], ["x_q"], name="x_Q"),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"], name="x_DQ"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w_dq"], name="w_DQ", axis=0),
        helper.make_node("Conv", ["x_dq", "w_dq"], ["y"], name="conv"),
        helper.make_node("QuantizeLinear", ["y", "y_scale", "y_zero"], ["y_q"], name="y_Q"),
        helper.make_node("DequantizeLinear", ["y_q", "y_scale", "y_zero"], ["logits"], name="y_DQ"),
    ]
    graph = helper.make_graph(nodes, "qdq_conv", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                                [1, CHANNELS, 4, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, OUT, 4, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return str(path)


EXACT = round(CHANNELS * 1.0 * 127 * W_SCALE / Y_SCALE) * Y_SCALE  # 81.5: every code 255 times weight 127


@pytest.mark.parametrize("activation_dtype", [np.uint8, np.int8])
def test_the_session_computes_the_exact_int8_result_on_this_cpu(tmp_path, activation_dtype):
    path = _qdq_conv(tmp_path / "conv.onnx", activation_dtype)
    image = np.ones((1, CHANNELS, 4, 4), np.float32)
    reference = OnnxRuntimeCPU.load(path, optimization="disable").run(image)
    assert np.all(reference == EXACT)
    runtime = OnnxRuntimeCPU.load(path, threads=1)
    assert np.all(runtime.run(image) == EXACT)
    forced = OnnxRuntimeCPU.load(path, threads=1, unsigned_weights=True)
    assert forced.describe().details["int8_weights"].startswith("uint8 in memory (1 tensors")
    assert np.all(forced.run(image) == EXACT)


def test_where_the_cpu_may_saturate_the_file_as_written_does(tmp_path):
    """The reason for the rewrite, shown on this machine: without it ORT's fused kernel clips the pair sums."""
    if not int8_dot_may_saturate():
        pytest.skip("this CPU has VNNI (or is not x86): ORT's int8 dot product accumulates in int32 here")
    path = _qdq_conv(tmp_path / "conv.onnx")
    image = np.ones((1, CHANNELS, 4, 4), np.float32)
    as_written = OnnxRuntimeCPU.load(path, threads=1, unsigned_weights=False)
    assert as_written.describe().details["int8_weights"] == "as in the file"
    saturated = as_written.run(image)
    assert np.all(saturated < 0.6 * EXACT)  # 32767 instead of 64770 per pair
    assert OnnxRuntimeCPU.load(path, threads=1).describe().details["int8_weights"].startswith("uint8 in memory")


@pytest.mark.parametrize("activation_dtype", [np.uint8, np.int8])
def test_the_rewrite_keeps_every_dequantized_value(tmp_path, activation_dtype):
    import onnxruntime as ort

    path = _qdq_conv(tmp_path / "conv.onnx", activation_dtype)
    model = onnx.load(path)
    assert make_int8_unsigned(model) == 1
    initializers = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert {initializers[n].dtype for n in ("w_q", "w_zero", "x_zero", "y_zero")} == {np.dtype(np.uint8)}
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    image = np.random.default_rng(0).uniform(-0.2, 1.2, (1, CHANNELS, 4, 4)).astype(np.float32)
    before = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"]).run(None, {"image": image})
    after = ort.InferenceSession(model.SerializeToString(), options,
                                 providers=["CPUExecutionProvider"]).run(None, {"image": image})
    np.testing.assert_array_equal(before[0], after[0])


def test_a_fused_int8_matmul_sharing_the_activation_zero_point_gets_uint8_weights(tmp_path):
    """export.ort_fusions writes MatMulIntegerToFloat (and QAttention) reading the same activation scale and zero
    point as the Q before them; their weights must move too (T2T-ViT-7 INT8 on Zen 3: 24.7 dB fused, 33.2 dB)."""
    inits = [numpy_helper.from_array(np.array(X_SCALE, np.float32), "x_scale"),
             numpy_helper.from_array(np.array(0, np.uint8), "x_zero"),
             numpy_helper.from_array(np.full((CHANNELS, OUT), 127, np.int8), "w_q"),
             numpy_helper.from_array(np.full(OUT, W_SCALE, np.float32), "w_scale"),
             numpy_helper.from_array(np.zeros(OUT, np.int8), "w_zero")]
    nodes = [helper.make_node("QuantizeLinear", ["image", "x_scale", "x_zero"], ["x_q"]),
             helper.make_node("MatMulIntegerToFloat", ["x_q", "w_q", "x_scale", "w_scale", "x_zero", "w_zero"],
                              ["logits"], domain="com.microsoft")]
    graph = helper.make_graph(nodes, "fused", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [2, CHANNELS])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, OUT])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    path = tmp_path / "fused.onnx"
    onnx.save(model, path)
    assert make_int8_unsigned(onnx.load(path)) == 1
    runtime = OnnxRuntimeCPU.load(path, threads=1, unsigned_weights=True)
    assert runtime.describe().details["int8_weights"].startswith("uint8 in memory (1 tensors")
    np.testing.assert_allclose(runtime.run(np.ones((2, CHANNELS), np.float32)), CHANNELS * 127 * W_SCALE, rtol=1e-5)


def test_an_initializer_read_as_more_than_a_weight_stays(tmp_path):
    model = onnx.load(_qdq_conv(tmp_path / "conv.onnx"))
    # The weight zero point is now also an ordinary input of another node: moving it would change that node.
    model.graph.node.append(helper.make_node("Cast", ["w_zero"], ["w_zero_float"], to=TensorProto.FLOAT))
    assert make_int8_unsigned(model) == 0
    assert numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w_q")).dtype == np.int8


@pytest.mark.parametrize("machine, flags, expected", [
    ("aarch64", None, False),
    ("x86_64", {"avx2", "avx512f", "avx512_vnni"}, False),
    ("AMD64", {"avx2", "avx_vnni"}, False),
    ("x86_64", {"avx2", "fma"}, True),
    ("x86_64", {"avx2", "avx512f", "avx512bw"}, True),
    ("x86_64", None, True),  # flags unknown on this OS: assume the worst, the rewrite is exact anyway
])
def test_which_cpus_get_the_rewrite(monkeypatch, machine, flags, expected):
    monkeypatch.setattr(ort_int8_weights.platform, "machine", lambda: machine)
    monkeypatch.setattr(ort_int8_weights, "_x86_cpu_flags", lambda: flags)
    int8_dot_may_saturate.cache_clear()
    try:
        assert int8_dot_may_saturate() is expected
    finally:
        int8_dot_may_saturate.cache_clear()
