"""`t2tedge optimize`: T2T-ViT's self-attention becomes com.microsoft.Attention in a file of its own, with the same
outputs; the onnxruntime runtime runs each file as it is."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from t2tedge.export import OnnxExportOptions, export_onnx
from t2tedge.runtimes.onnxruntime_cpu import OnnxRuntimeCPU
from t2tedge.export.ort_fusions import fuse_self_attention
from t2tedge.export.ort_optimize import optimize_for_onnxruntime


@pytest.fixture(scope="module")
def t2t7(tmp_path_factory):
    out = tmp_path_factory.mktemp("fusions")
    return {"static": export_onnx("t2t_vit_7", None, out_dir=out),
            "dynamic": export_onnx("t2t_vit_7", None, out_dir=out, options=OnnxExportOptions(dynamic_batch=True))}


@pytest.mark.parametrize("form, batch", [("static", 1), ("dynamic", 3)])
def test_every_block_fuses_and_the_logits_stay(t2t7, form, batch):
    images = np.random.default_rng(0).standard_normal((batch, 3, 224, 224), dtype=np.float32)
    optimized, report = optimize_for_onnxruntime(t2t7[form])
    assert report["fusions"] == {"Attention": 7} and optimized.name.endswith(".ort-cpu.onnx")
    fused = OnnxRuntimeCPU.load(optimized, threads=2)
    plain = OnnxRuntimeCPU.load(t2t7[form], threads=2)
    assert fused.describe().details["fusions"] == "Attention x7"
    assert plain.describe().details["fusions"] == "none"
    assert np.abs(fused.run(images) - plain.run(images)).max() <= 1e-5


def test_a_block_whose_inner_tensor_is_used_elsewhere_is_left_alone(t2t7):
    proto = onnx.load(t2t7["static"])
    probs = next(n.output[0] for n in proto.graph.node if n.op_type == "Softmax" and "/blocks.3/" in n.name)
    # The attention map is now a model output too: fusing that block would lose it.
    proto.graph.output.append(onnx.helper.make_tensor_value_info(probs, onnx.TensorProto.FLOAT, [1, 4, 197, 197]))
    assert fuse_self_attention(proto) == 6
    assert probs in {o for n in proto.graph.node for o in n.output}
    assert sum(n.op_type == "Attention" for n in proto.graph.node) == 6
    onnx.checker.check_model(proto)


def test_graphs_without_the_pattern_are_untouched(tmp_path):
    path = export_onnx("mobilenet_v2_100", None, out_dir=tmp_path)
    proto = onnx.load(path)
    before = proto.SerializeToString()
    assert fuse_self_attention(proto) == 0 and proto.SerializeToString() == before
    optimized, report = optimize_for_onnxruntime(path)
    assert report["fusions"] == {} and OnnxRuntimeCPU.load(optimized).describe().details["fusions"] == "none"


def _quantize_dequantize(proto, tensor, scale=0.05):
    """Put a uint8 Q/DQ pair on `tensor` (in place): its readers get the rounded value."""
    from onnx import helper, numpy_helper

    rounded = f"{tensor}_dq"
    for node in proto.graph.node:
        node.input[:] = [rounded if name == tensor else name for name in node.input]
    proto.graph.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), f"{tensor}_scale"),
                                    numpy_helper.from_array(np.array(128, np.uint8), f"{tensor}_zero_point")])
    after = next((i + 1 for i, n in enumerate(proto.graph.node) if tensor in n.output), 0)
    proto.graph.node.insert(after, helper.make_node("DequantizeLinear", [f"{tensor}_q", f"{tensor}_scale",
                                                                         f"{tensor}_zero_point"], [rounded]))
    proto.graph.node.insert(after, helper.make_node("QuantizeLinear", [tensor, f"{tensor}_scale",
                                                                       f"{tensor}_zero_point"], [f"{tensor}_q"]))


def test_qdq_graphs_fuse_only_where_no_requantization_moves(t2t7, tmp_path):
    """A QDQ graph runs as calibrated: a block whose qkv output is rounded before attention keeps its ops."""
    proto = onnx.load(t2t7["static"])
    _quantize_dequantize(proto, "image")
    qkv = next(n.output[0] for n in proto.graph.node if n.name == "/blocks.2/attn/qkv/MatMul")
    _quantize_dequantize(proto, qkv, scale=0.5)
    path = tmp_path / "qdq.onnx"
    onnx.save(proto, path)
    fused = OnnxRuntimeCPU.load(optimize_for_onnxruntime(path)[0], threads=2)
    plain = OnnxRuntimeCPU.load(path, threads=2)
    assert fused.describe().details["fusions"] == "Attention x6"  # float blocks fuse; blocks.2 keeps its rounding
    images = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    assert np.abs(fused.run(images) - plain.run(images)).max() <= 1e-5
