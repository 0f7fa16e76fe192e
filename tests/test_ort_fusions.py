"""ORT-only in-memory fusions: T2T-ViT's self-attention becomes com.microsoft.Attention with the same outputs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from t2tedge.export import OnnxExportOptions, export_onnx
from t2tedge.runtimes.onnxruntime_cpu import OnnxRuntimeCPU
from t2tedge.runtimes.ort_fusions import fuse_self_attention


@pytest.fixture(scope="module")
def t2t7(tmp_path_factory):
    out = tmp_path_factory.mktemp("fusions")
    return {"static": export_onnx("t2t_vit_7", None, out_dir=out),
            "dynamic": export_onnx("t2t_vit_7", None, out_dir=out, options=OnnxExportOptions(dynamic_batch=True))}


@pytest.mark.parametrize("form, batch", [("static", 1), ("dynamic", 3)])
def test_every_block_fuses_and_the_logits_stay(t2t7, form, batch):
    images = np.random.default_rng(0).standard_normal((batch, 3, 224, 224), dtype=np.float32)
    fused = OnnxRuntimeCPU.load(t2t7[form], threads=2)
    plain = OnnxRuntimeCPU.load(t2t7[form], threads=2, fuse=False)
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
    assert OnnxRuntimeCPU.load(path).describe().details["fusions"] == "none"


def test_int8_graphs_run_as_calibrated(t2t7, tmp_path):
    """A QDQ graph keeps its ops: a fused kernel would move the requantization points it was calibrated with."""
    from onnx import helper, numpy_helper

    proto = onnx.load(t2t7["static"])
    for node in proto.graph.node:
        node.input[:] = ["image_dq" if name == "image" else name for name in node.input]
    proto.graph.initializer.extend([numpy_helper.from_array(np.array(0.05, np.float32), "image_scale"),
                                    numpy_helper.from_array(np.array(128, np.uint8), "image_zero_point")])
    proto.graph.node.insert(0, helper.make_node("DequantizeLinear", ["image_q", "image_scale", "image_zero_point"],
                                                ["image_dq"]))
    proto.graph.node.insert(0, helper.make_node("QuantizeLinear", ["image", "image_scale", "image_zero_point"],
                                                ["image_q"]))
    path = tmp_path / "qdq.onnx"
    onnx.save(proto, path)
    assert fuse_self_attention(onnx.load(path)) == 7  # the pattern is there
    assert OnnxRuntimeCPU.load(path).describe().details["fusions"] == "none"
