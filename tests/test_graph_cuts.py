"""Graph cuts: running a graph from a cached tensor that separates it gives the same tensors as running it from
the image, and bias correction's layer-by-layer passes use that."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from conftest import ArrayCalibration
from t2tedge.quantize import QuantConfig, quantize_onnx
from t2tedge.quantize.graph_cuts import CutRunner, cut_tensors


def _residual_net(path):
    """image -> conv a -> relu r -> conv b -> r + b -> conv c (stride 2) -> pool -> flatten -> gemm -> logits."""
    rng = np.random.default_rng(0)

    def weight(name, *shape):
        return numpy_helper.from_array((rng.normal(size=shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32), name)

    biases = {"ba": np.zeros(8), "bb": np.ones(8), "bc": np.zeros(8), "bg": np.zeros(10)}
    inits = [weight("wa", 8, 3, 3, 3), weight("wb", 8, 8, 3, 3), weight("wc", 8, 8, 3, 3), weight("wg", 10, 8)] + [
        numpy_helper.from_array(value.astype(np.float32), name) for name, value in biases.items()]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "wa", "ba"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["a"], ["r"], name="relu"),
         helper.make_node("Conv", ["r", "wb", "bb"], ["b"], name="conv_b", pads=[1, 1, 1, 1]),
         helper.make_node("Add", ["r", "b"], ["s"], name="residual"),
         helper.make_node("Conv", ["s", "wc", "bc"], ["c"], name="conv_c", pads=[1, 1, 1, 1], strides=[2, 2]),
         helper.make_node("GlobalAveragePool", ["c"], ["pool"], name="pool"),
         helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"),
         helper.make_node("Gemm", ["flat", "wg", "bg"], ["logits"], name="head", transB=1)], "residual",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_cuts_are_the_tensors_that_alone_carry_the_input_forward(tmp_path):
    _residual_net(tmp_path / "fp32.onnx")
    cuts = cut_tensors(onnx.load(tmp_path / "fp32.onnx"))
    # b is read beside r by the residual Add; logits is read by nothing.
    assert set(cuts) == {"a", "r", "s", "c", "pool", "flat"}, cuts


def test_running_from_cuts_gives_the_full_graphs_tensors_bit_for_bit(tmp_path):
    from t2tedge.ort_session import run_in_fixed_batches, session_exposing

    images = np.random.default_rng(1).normal(size=(24, 3, 16, 16)).astype(np.float32)
    _residual_net(tmp_path / "fp32.onnx")
    quantize_onnx(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", ArrayCalibration(images),
                  QuantConfig(weight_rounding="nearest", bias_correction="off"), ranges_cache=tmp_path / "ranges.json")
    qdq = onnx.load(tmp_path / "int8.onnx")
    cuts = cut_tensors(qdq)
    producers = {o: n for n in qdq.graph.node for o in n.output}
    types = {i.name: i.type.tensor_type.elem_type for i in onnx.shape_inference.infer_shapes(qdq).graph.value_info}
    assert any(types[c] == TensorProto.UINT8 for c in cuts), cuts
    assert not any(producers[c].op_type == "DequantizeLinear" for c in cuts), cuts

    layer_inputs = [n.input[0] for n in qdq.graph.node if n.op_type in ("Conv", "Gemm")]
    full, _ = session_exposing(qdq, layer_inputs, only=True)
    expected = dict(zip(layer_inputs, run_in_fixed_batches(full, "image", None, images, layer_inputs)))
    runner = CutRunner(qdq, images, lambda model, outputs: session_exposing(model, outputs, only=True))
    started_from = []
    for tensor in layer_inputs:
        got = np.concatenate([values[tensor] for values in runner.run([tensor])])
        started_from.append(runner.cached_name)
        np.testing.assert_array_equal(got, expected[tensor])
    assert "image" not in started_from and len(set(started_from)) >= 3, started_from


def test_unfolded_sum_equals_the_sum_of_the_unfolded_input():
    from t2tedge.quantize.weight_rounding import WeightGeometry

    rng = np.random.default_rng(0)
    # (in, out, group, kernel, strides, dilation, pads, height)
    shapes = [(8, 16, 1, (3, 3), (1, 1), 1, [1, 1, 1, 1], 9), (8, 8, 8, (3, 3), (2, 2), 1, [1, 1, 1, 1], 10),
              (6, 4, 2, (3, 3), (2, 2), 2, [0, 1, 1, 0], 11), (3, 8, 1, (3, 3), (2, 2), 1, [0, 0, 1, 1], 12),
              (4, 6, 1, (2, 3), (1, 2), 1, [1, 0, 0, 2], 8)]
    for cin, cout, groups, (kh, kw), strides, dilation, pads, height in shapes:
        node = helper.make_node("Conv", ["x", "w"], ["y"], group=groups, strides=list(strides),
                                dilations=[dilation, dilation], pads=pads)
        geometry = WeightGeometry(node, rng.normal(size=(cout, cin // groups, kh, kw)).astype(np.float32))
        x = rng.normal(size=(3, cin, height, height + 1)).astype(np.float32)
        columns = geometry.unfold(x)
        total, count = geometry.unfolded_sum(x)
        assert count == columns.shape[1]
        np.testing.assert_allclose(total, columns.sum(axis=1, dtype=np.float64), rtol=1e-12, atol=1e-12)
    matmul = WeightGeometry(helper.make_node("MatMul", ["x", "w"], ["y"]), rng.normal(size=(5, 7)).astype(np.float32))
    x = rng.normal(size=(2, 4, 5)).astype(np.float32)
    total, count = matmul.unfolded_sum(x)
    assert count == 8
    np.testing.assert_allclose(total, matmul.unfold(x).sum(axis=1, dtype=np.float64), rtol=1e-12)


def test_bias_correction_from_cuts_equals_it_from_the_image(tmp_path, monkeypatch):
    """Each layer's pass starts from a cut cached after the biases before it were corrected: the corrections are
    those of running every pass from the image."""
    import t2tedge.quantize.graph_cuts as graph_cuts
    from t2tedge.quantize.bias_correction import correct_biases

    images = np.random.default_rng(2).exponential(size=(24, 3, 16, 16)).astype(np.float32) ** 2
    _residual_net(tmp_path / "fp32.onnx")
    quantize_onnx(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", ArrayCalibration(images),
                  QuantConfig(weight_rounding="nearest", bias_correction="off"), ranges_cache=tmp_path / "ranges.json")
    fp32 = onnx.load(tmp_path / "fp32.onnx")
    from_cuts = correct_biases(onnx.load(tmp_path / "int8.onnx"), fp32, images)
    monkeypatch.setattr(graph_cuts, "cut_tensors", lambda model, infos=None: {})
    from_image = correct_biases(onnx.load(tmp_path / "int8.onnx"), fp32, images)
    assert sorted(from_cuts) == sorted(from_image) and len(from_cuts) == 4
    assert not np.allclose(from_image["head"], 0, atol=1e-3)  # the later layers did move: the test can fail
    for name in from_image:
        np.testing.assert_array_equal(from_cuts[name], from_image[name])
