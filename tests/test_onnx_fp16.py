"""FP16 ONNX (the file strongly typed TensorRT engines are built from): parity with fp32 on real images, on ONNX
Runtime (which computes an fp16 graph through casts, so it checks the weights' rounding) and on `onnx.reference`
(numpy fp16 arithmetic, so it checks fp16 compute, on a few images); what stays fp32 and why; check-trt's report."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from t2tedge import metadata_keys as keys
from t2tedge.cli import main
from t2tedge.data import discover, load_batch, split
from t2tedge.errors import UsageError
from t2tedge.export.onnx_export import read_metadata
from t2tedge.export.onnx_fp16 import write_fp16_onnx
from t2tedge.models import get_spec
from t2tedge.onnx_graph import float_types, onnx_precision
from t2tedge.ort_session import logits

REFERENCE_IMAGES = 1  # onnx.reference takes 5-12 s per image of these models


def _fp16_parity(fp32, fp16, images):
    reference = logits(fp32, images)
    on_ort = logits(fp16, images)
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(onnx.load(str(fp16)))
    in_fp16 = np.concatenate([evaluator.run(None, {"image": images[i:i + 1]})[0] for i in range(REFERENCE_IMAGES)])
    return reference, on_ort, in_fp16


def _agreement(a, b):
    return float(np.mean(a.argmax(1) == b.argmax(1)))


def test_t2t_vit_7_fp16_onnx_agrees_with_fp32_on_real_images(subject, tmp_path, capsys):
    """The trained subject on 200 Imagenette val images: >= 99% top-1 agreement, all finite."""
    out = tmp_path / "out"
    assert main(["export", "onnx", "t2t_vit_7.imagenette", "--out", str(out)]) == 0
    assert main(["export", "onnx", "t2t_vit_7.imagenette", "--precision", "fp16", "--calib", str(subject.train),
                 "--num-calib", "8", "--out", str(out)]) == 0
    fp32, fp16 = out / "t2t_vit_7.onnx", out / "t2t_vit_7_fp16.onnx"
    assert onnx_precision(fp16) == "fp16" and float_types(fp16) == {"float16": float_types(fp32)["float32"]}
    assert fp16.stat().st_size < 0.55 * fp32.stat().st_size
    meta = read_metadata(fp16)
    assert meta[keys.PRECISION] == "fp16" and meta[keys.FP16_CHECKED_IMAGES] == "8"
    kept = json.loads(meta[keys.FP16_KEPT_FP32])
    # The Performer's scaled epsilon is clamped at e^10 = 22026: within 4x of fp16's maximum, so the few nodes that
    # write or read it in the two tokens-to-token attentions stay fp32.
    assert 0 < len(kept) <= 12 and all(node.startswith("/tokens_to_token/attention") for node in kept)
    assert all("within 4x of fp16's maximum" in why for why in kept.values())
    graph = onnx.load(str(fp16)).graph
    assert graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # fed like the fp32 file
    assert graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    samples, _ = split(discover(subject.val, num_classes=subject.num_classes), 200, seed=0)
    images, _ = load_batch(samples, get_spec("t2t_vit_7").preprocess)
    reference, on_ort, in_fp16 = _fp16_parity(fp32, fp16, images)
    assert np.isfinite(on_ort).all() and np.isfinite(in_fp16).all()
    assert _agreement(reference, on_ort) >= 0.99
    assert _agreement(reference[:REFERENCE_IMAGES], in_fp16) == 1.0
    assert 1e-4 < np.abs(in_fp16 - reference[:REFERENCE_IMAGES]).max() < 0.1  # fp16 arithmetic, not fp32


# The fp16 path on real images is in `make test` through T2T-ViT-7 above; this sweep of all 1300 images is opt-in.
@pytest.mark.slow
def test_mobilenet_v2_fp16_onnx_agrees_with_fp32_on_imagenet_val(weights_dir, val_dir, sample_dir, tmp_path):
    """MobileNetV2 1.0 (TF ImageNet weights) on all of imagenet-val1300: >= 99% top-1 agreement (measured 99.23%:
    fp16 rounding of the weights alone flips images whose top two logits lie within 0.03)."""
    checkpoint = weights_dir / "mobilenet_v2_1.0_imagenet_tfsame.pth"
    out = tmp_path / "out"
    assert main(["export", "onnx", "mobilenet_v2_100", "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    assert main(["export", "onnx", "mobilenet_v2_100", "--checkpoint", str(checkpoint), "--precision", "fp16",
                 "--calib", str(sample_dir), "--num-calib", "8", "--out", str(out)]) == 0
    fp32, fp16 = out / "mobilenet_v2_100.onnx", out / "mobilenet_v2_100_fp16.onnx"
    assert json.loads(read_metadata(fp16)[keys.FP16_KEPT_FP32]) == {}
    images, _ = load_batch(discover(val_dir), get_spec("mobilenet_v2_100").preprocess)
    reference, on_ort, in_fp16 = _fp16_parity(fp32, fp16, images)
    assert np.isfinite(on_ort).all() and np.isfinite(in_fp16).all()
    assert _agreement(reference, on_ort) >= 0.99
    assert _agreement(reference[:REFERENCE_IMAGES], in_fp16) == 1.0


def _scaled_graph(path, weight_scale: float, gain: float):
    """image -> Mul(gain) -> MatMul(W * weight_scale) -> logits: big initializers or big activations at will."""
    weight = np.eye(4, dtype=np.float32) * weight_scale
    nodes = [helper.make_node("Mul", ["image", "gain"], ["scaled"], name="/scale/Mul"),
             helper.make_node("MatMul", ["scaled", "w"], ["logits"], name="/head/MatMul")]
    graph = helper.make_graph(nodes, "scaled", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(weight, "w"),
                               numpy_helper.from_array(np.array(gain, np.float32), "gain")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_values_beyond_fp16_keep_their_nodes_fp32_with_the_reason(tmp_path):
    images = np.full((3, 4), 2.0, np.float32)
    big_weight = write_fp16_onnx(_scaled_graph(tmp_path / "w.onnx", 1e5, 1.0), tmp_path / "w16.onnx", images)
    assert set(big_weight.kept_fp32) == {"/head/MatMul"} and "beyond fp16's 65504" in big_weight.kept_fp32["/head/MatMul"]
    big_activation = write_fp16_onnx(_scaled_graph(tmp_path / "a.onnx", 0.1, 1e4), tmp_path / "a16.onnx", images)
    # 2e4 > 65504 / 4: the Mul's output is too close to fp16's maximum, so its writer and its reader stay fp32.
    assert set(big_activation.kept_fp32) == {"/scale/Mul", "/head/MatMul"}
    assert big_activation.kept_fp32["/head/MatMul"] == ("tensor scaled reached 2e+04 on real images, within 4x of "
                                                        "fp16's maximum 65504")
    plain = write_fp16_onnx(_scaled_graph(tmp_path / "p.onnx", 1.0, 1.0), tmp_path / "p16.onnx", images)
    assert plain.kept_fp32 == {} and plain.checked_images == 3
    for fp32, fp16 in (("w.onnx", "w16.onnx"), ("a.onnx", "a16.onnx")):
        a, b = logits(tmp_path / fp32, images[:1]), logits(tmp_path / fp16, images[:1])
        assert np.isfinite(b).all() and np.allclose(a, b, rtol=2e-3)
    # Without images only initializers are checked, and the same graph overflows once its Mul leaves fp16's range.
    unchecked = write_fp16_onnx(_scaled_graph(tmp_path / "u.onnx", 0.1, 1e4), tmp_path / "u16.onnx", None)
    assert unchecked.kept_fp32 == {} and read_metadata(tmp_path / "u16.onnx")[keys.FP16_CHECKED_IMAGES] == "0"
    from onnx.reference import ReferenceEvaluator  # fp16 arithmetic for real (ONNX Runtime folds the Mul away)

    def in_fp16(name):
        return ReferenceEvaluator(onnx.load(str(tmp_path / name))).run(None, {"image": images[:1] * 5})[0]

    assert not np.isfinite(in_fp16("u16.onnx")).any() and np.isfinite(in_fp16("a16.onnx")).all()


def test_a_qdq_file_is_not_converted_to_fp16(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["image", "s", "z"], ["q"]),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["logits"])], "qdq",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "q.onnx")
    with pytest.raises(UsageError, match="Q/DQ scales would become fp16"):
        write_fp16_onnx(tmp_path / "q.onnx", tmp_path / "q16.onnx", None)
    assert not (tmp_path / "q16.onnx").exists()


def test_check_trt_reports_float_types_and_fp16_hazards(tmp_path, capsys):
    risky = _scaled_graph(tmp_path / "risky.onnx", 1e5, 1.0)
    assert main(["check-trt", str(risky)]) == 0
    out = capsys.readouterr().out
    assert "float initializers: 2 float32" in out
    assert "fp16 hazard: initializer w holds 1e+05, beyond fp16's 65504" in out
    assert "fp16 range (initializers only; --data DIR checks activations on real images): 1 hazard(s)" in out
