"""The quantization plan: read out of our QDQ file in module names, saved and reloaded, and applied by ExecuTorch
with the same int8 weights and activation grids; INT8 parity between runtimes on real images."""

from __future__ import annotations

import copy
import io
import json

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import numpy_helper

from t2tedge.cli import main
from t2tedge.errors import DataError
from t2tedge.quantize.config import QuantConfig
from t2tedge.quantize.records import CalibrationInfo
from t2tedge.quantize.quantization_plan import (apply_plan_weights, arrays_path, load_plan, module_path, plan_from_qdq,
                                   plan_path_for)
from t2tedge.quantize.ptq import quantize_onnx
from conftest import ArrayCalibration

M = "mobilenet_v2_100"


class Net(nn.Module):
    """Conv + BN + ReLU6, a projection conv, a residual add and a classifier: the shapes a plan has to name."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6())
        self.project = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.project(x)
        return self.head(x.mean((2, 3)))


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        net.stem[1].running_mean.uniform_(-0.5, 0.5)
        net.stem[1].running_var.uniform_(0.5, 2.0)
    out = tmp_path_factory.mktemp("plan")
    fp32 = _onnx_of(net, (1, 3, 16, 16), out / "net.onnx")
    images = np.random.default_rng(0).uniform(-1, 1, (16, 3, 16, 16)).astype(np.float32)
    qdq = out / "net_int8.onnx"
    quantize_onnx(fp32, qdq, ArrayCalibration(images), QuantConfig(method="minmax", bias_correction="off",
                                                              pixel_grid_input=False))
    plan = plan_from_qdq(qdq, net, model_name="net", weights="w", calibration=CalibrationInfo(folder="random", images=16, seed=0),
                         recipe=QuantConfig())
    return net, qdq, plan, images, out


def test_module_paths_come_from_the_traced_scopes():
    assert module_path("/features/features.1/conv/conv.0/conv.0.0/Conv") == "features.1.conv.0.0"
    assert module_path("/blocks.0/mlp/fc1/MatMul") == "blocks.0.mlp.fc1"
    assert module_path("/head/Gemm") == "head"


def test_the_plan_names_modules_and_holds_the_files_int8_weights(planned):
    net, qdq, plan, _, _ = planned
    assert sorted(plan.layers) == ["head", "project", "stem.0"]
    graph = onnx.load(str(qdq)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    int8 = [v for v in inits.values() if v.dtype == np.int8]
    for name in ("stem.0", "project"):  # conv weights: output channel first in both
        assert any(np.array_equal(plan.arrays[f"{name}.weight"], w) for w in int8), name
    head = plan.arrays["head.weight"]
    assert head.shape == (5, 8) and any(np.array_equal(head, w) or np.array_equal(head, w.T) for w in int8)
    stem, project = plan.layers["stem.0"], plan.layers["project"]
    assert stem.input_range[0] < 0 < stem.input_range[1] and stem.output_range[0] == 0.0  # ReLU6 folded: [0, 6]
    assert project.input_range == stem.output_range  # one tensor, one range
    assert plan.layers["head"].output_range is None  # logits stay float


def test_the_plan_round_trips_and_refuses_what_is_not_one(planned, tmp_path):
    _, _, plan, _, _ = planned
    path = tmp_path / "net_int8.plan.json"
    plan.save(path)
    again = load_plan(path)
    assert again.layers == plan.layers and sorted(again.arrays) == sorted(plan.arrays)
    assert all(np.array_equal(again.arrays[k], plan.arrays[k]) for k in plan.arrays)
    assert plan_path_for(tmp_path / "m_int8.onnx").name == "m_int8.plan.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "schema": "t2tedge.quant-plan/99"}))
    with pytest.raises(DataError, match="quant-plan/99"):
        load_plan(path)
    path.write_text(json.dumps(data))
    arrays_path(path).write_bytes(b"not an npz")
    with pytest.raises(DataError, match="cannot read the plan's arrays"):
        load_plan(path)
    with pytest.raises(DataError, match="not found"):
        load_plan(tmp_path / "absent.plan.json")


def test_executorch_applies_the_plan_with_the_files_weights_and_grids(planned):
    """One plan, two targets: the QDQ file's int8 weights and activation grids are what the ExecuTorch program
    holds (its ranges give back ORT's uint8 grid as XNNPACK's int8: same scale, zero point - 128)."""
    from t2tedge.quantize.executorch_ptq import activation_qparams, program_qparams, quantize_with_plan

    net, qdq, plan, images, _ = planned
    module = copy.deepcopy(net)
    assert sorted(apply_plan_weights(module, plan)) == sorted(plan.layers)
    assert isinstance(module.stem[1], nn.Identity)  # BatchNorm folded, as in the reference file
    program, honoured = quantize_with_plan(module, plan, torch.from_numpy(images[:1]))
    assert [d["layer"] for d in honoured["deviations"]] == ["head"]  # XNNPACK needs an output range for logits
    read = program_qparams(program)
    assert len(read) == 2
    graph = onnx.load(str(qdq)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    q_nodes = {n.input[0]: n for n in graph.node if n.op_type == "QuantizeLinear"}
    ort_grids = {(float(inits[q.input[1]]), int(inits[q.input[2]])) for q in q_nodes.values()}
    for layer, got in zip(("stem.0", "project"), read):
        assert np.array_equal(got["weight"], plan.arrays[f"{layer}.weight"])
        np.testing.assert_allclose(got["weight_scale"], plan.arrays[f"{layer}.scale"], rtol=1e-6)
        scale, zero = activation_qparams(*plan.layers[layer].input_range)
        assert (got["input_scale"], got["input_zero_point"]) == (pytest.approx(scale, rel=1e-6), zero)
        assert any(abs(s - scale) <= 1e-6 * scale and z - 128 == zero for s, z in ort_grids)


@pytest.mark.slow  # the CLI path; the plan's application is checked fast on a synthetic net (above) and
# on MobileNetV2 by the parity test below
def test_executorch_int8_export_applies_the_onnx_plan(tmp_path, sample_dir, weights_dir):
    """`export executorch --precision int8` applies the plan of `export onnxruntime --precision int8`, given with
    --plan (no second calibration), and says what it did not honour."""
    from t2tedge.sidecar import read_sidecar

    onnx_dir, et_dir = tmp_path / "onnx", tmp_path / "et"
    assert main(["export", "onnxruntime", M, "--precision", "int8", "--calib", str(sample_dir), "--num-calib", "8",
                 "--out", str(onnx_dir)]) == 0
    plan = onnx_dir / f"{M}_int8.plan.json"
    assert plan.is_file() and arrays_path(plan).is_file()
    assert main(["export", "executorch", M, "--precision", "int8", "--plan", str(plan), "--calib", str(sample_dir),
                 "--out", str(et_dir)]) == 2  # the plan holds its calibration
    assert not et_dir.exists()
    assert main(["export", "executorch", M, "--precision", "int8", "--plan", str(plan), "--out", str(et_dir)]) == 0
    report = read_sidecar(et_dir / f"{M}_int8.pte")["t2tedge.quantization"]
    assert report["plan"]["layers"] == 53 and report["plan"]["layers_applied"] == 52
    assert [d["layer"] for d in report["plan"]["deviations"]] == ["classifier.1"]
    assert report["int8_ops"]["conv2d"] == 52 and "calibration" not in report
    assert main(["export", "executorch", M, "--precision", "w8", "--plan", str(plan), "--out", str(et_dir)]) == 2
    lite_dir = tmp_path / "litert"
    assert main(["export", "litert", M, "--precision", "int8", "--plan", str(plan), "--out", str(lite_dir)]) == 0
    report = read_sidecar(lite_dir / f"{M}_int8.tflite")["t2tedge.quantization"]
    assert report["plan"]["layers_applied"] == 52 and report["int8_ops"] == {"CONV_2D": 35, "DEPTHWISE_CONV_2D": 17}
    assert [d["layer"] for d in report["plan"]["deviations"]] == ["classifier.1"]


def test_int8_parity_between_runtimes_on_real_images(tmp_path, sample_dir, val_dir, capsys):
    out = tmp_path / "parity.json"
    code = main(["parity", M, "--precision", "int8", "--runtimes", "onnxruntime,executorch,litert", "--calib",
                 str(sample_dir), "--num-calib", "8", "--data", str(val_dir), "--limit", "16", "--json", str(out)])
    report = json.loads(out.read_text())
    pairs = {(p["first"], p["second"]): p for p in report["pairs"]}
    assert sorted(pairs) == [("executorch", "litert"), ("onnxruntime", "executorch"), ("onnxruntime", "litert")]
    assert report["int8_made"] == {"onnxruntime": "the plan's own QDQ file", "executorch": "applies the plan (--plan)",
                                   "litert": "applies the plan (--plan)"}
    for pair in pairs.values():  # bench, 300 images: 99.7-100%, cosine >= 0.99
        assert pair["tolerance_key"] == "int8_vs_int8" and pair["top1_agreement"] >= 0.98 and pair["cosine"] >= 0.99, pair
    assert code == 0 and "int8 executorch: applies the plan" in capsys.readouterr().out
    assert main(["parity", M, "--precision", "int8", "--runtimes", "torch,onnxruntime"]) == 2


def test_litert_applies_the_plan_with_the_files_weights_and_grids(planned, tmp_path):
    """The same plan through ai-edge-quantizer: the .tflite file holds the QDQ file's int8 weights (in its own
    layout), the plan's scales and the same activation grid, read back from both files."""
    pytest.importorskip("ai_edge_quantizer", reason="the litert extra is not installed")
    from t2tedge.export.litert_export import ChannelsLast, convert_module
    from t2tedge.quantize.litert_ptq import file_qparams, quantize_tflite_with_plan

    net, qdq, plan, images, _ = planned
    module = copy.deepcopy(net)
    apply_plan_weights(module, plan)
    fp32, int8 = tmp_path / "net.tflite", tmp_path / "net_int8.tflite"
    convert_module(ChannelsLast(module).eval(), torch.zeros(1, 16, 16, 3), fp32)
    report = quantize_tflite_with_plan(fp32, int8, plan).to_dict()
    assert report["plan"]["layers_applied"] == 2 and [d["layer"] for d in report["plan"]["deviations"]] == ["head"]
    read = file_qparams(int8)
    assert [r["op"] for r in read] == ["CONV_2D", "CONV_2D"]
    graph = onnx.load(str(qdq)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for layer, got in zip(("stem.0", "project"), read):
        planned_q = plan.arrays[f"{layer}.weight"]  # OIHW; the file holds OHWI
        assert np.array_equal(got["weight"], planned_q.transpose(0, 2, 3, 1))
        assert any(np.array_equal(planned_q, w) for w in inits.values() if w.dtype == np.int8)
        np.testing.assert_allclose(got["weight_scale"], plan.arrays[f"{layer}.scale"], rtol=1e-6)
        q = next(n for n in graph.node if n.op_type == "QuantizeLinear"
                 and plan.layers[layer].input_range == _range(n, inits))
        assert got["input_scale"] == pytest.approx(float(inits[q.input[1]]), rel=1e-6)
        assert got["input_zero_point"] == int(inits[q.input[2]]) - 128  # ORT's uint8 grid as int8


def _range(q_node, inits) -> tuple[float, float]:
    scale, zero = float(inits[q_node.input[1]]), int(inits[q_node.input[2]])
    return ((0 - zero) * scale, (255 - zero) * scale)


def _onnx_of(net: nn.Module, shape: tuple[int, ...], path):
    """`net` traced to ONNX at `path`: input `image` with a free batch, output `logits`."""
    buffer = io.BytesIO()
    torch.onnx.export(net, (torch.zeros(shape),), buffer, dynamo=False, opset_version=17, input_names=["image"],
                      output_names=["logits"], dynamic_axes={"image": {0: "n"}})
    path.write_bytes(buffer.getvalue())
    return path


class Attention(nn.Module):
    """A bias-free projection whose output feeds exp (as T2T-ViT's qkv feeds the Performer), and one with a bias."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 8, bias=False)
        self.proj = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.qkv(x) * 0.1).sum(-1, keepdim=True) + torch.nn.functional.gelu(self.proj(x))


def test_requantization_ranges_take_min_max_for_outputs_without_a_bias(tmp_path):
    """XNNPACK requantizes the outputs the QDQ file keeps float: after a bias, on the calibrated range; a bias-free
    output (T2T-ViT's qkv) on its min-max range, since a clipped one cuts the values exp amplifies."""
    from t2tedge.export.onnx_export import read_metadata
    from t2tedge.quantize.pipeline import requantization_ranges

    torch.manual_seed(0)
    net = Attention().eval()
    fp32 = _onnx_of(net, (1, 4, 8), tmp_path / "attn.onnx")
    images = np.random.default_rng(0).standard_normal((32, 4, 8)).astype(np.float32) * 3
    qdq = tmp_path / "attn_int8.onnx"
    config = QuantConfig(method="mse", bias_correction="off", pixel_grid_input=False, weight_rounding="nearest")
    quantize_onnx(fp32, qdq, ArrayCalibration(images), config)
    kept = json.loads(read_metadata(str(qdq))["t2tedge.float_output_ranges"])
    graph = onnx.load(str(fp32)).graph
    qkv_out = next(n.output[0] for n in graph.node if n.op_type == "MatMul" and "qkv" in n.name)
    proj_out = next(n.output[0] for n in graph.node if n.op_type == "MatMul" and "proj" in n.name)
    assert {qkv_out, proj_out} <= set(kept)
    ranges = requantization_ranges(fp32, qdq, ArrayCalibration(images), config, tmp_path)
    with torch.no_grad():
        qkv = net.qkv(torch.from_numpy(images)).numpy()
    assert ranges[qkv_out] == pytest.approx((float(qkv.min()), float(qkv.max())), rel=1e-5)
    with torch.no_grad():
        proj = net.proj(torch.from_numpy(images)).numpy()
    low, high = ranges[proj_out]  # after its bias Add, by the recipe's method (MSE): never beyond min-max
    assert proj.min() - 1e-5 <= low < 0 < high <= proj.max() + 1e-5


class SoftmaxAttention(nn.Module):
    """One head of a block's attention (q.k^T, softmax, attention.v) and a Performer-style kernel product (exp
    features, no softmax): the two kinds of products of two activations T2T-ViT has."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.proj = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).split(8, dim=-1)
        attention = ((q @ k.transpose(-2, -1)) * 8 ** -0.5).softmax(-1)
        features = torch.exp(q * 0.1)
        kernel = features @ (features.transpose(-2, -1) @ v)
        return self.proj(attention @ v + kernel * 0.01)


def _products_with_both_inputs_dequantized(path) -> set[str]:
    from t2tedge.onnx_graph import producers as producers_of

    graph = onnx.load(str(path)).graph
    producers, inits = producers_of(graph), {i.name for i in graph.initializer}

    def dequantized_activation(name: str) -> bool:
        node = producers.get(name)
        return node is not None and node.op_type == "DequantizeLinear" and node.input[0] not in inits

    return {n.name for n in graph.node if n.op_type == "MatMul" and all(map(dequantized_activation, n.input[:2]))}


def test_int8_products_quantize_the_attention_products_the_recipe_names_and_the_plan_lists_them(tmp_path):
    """--int8-products: none keeps every product of two activations float, attention quantizes both operands of
    q.k^T and attention.v (next to the softmax) and leaves the Performer-style products float, all takes those too;
    the plan lists the quantized products as reference-only, so the targets that apply it name them as deviations."""
    from t2tedge.quantize.config import activation_products, attention_products, with_int8_products
    from t2tedge.quantize.quantization_plan import unhonoured

    torch.manual_seed(0)
    net = SoftmaxAttention().eval()
    fp32 = _onnx_of(net, (1, 6, 8), tmp_path / "attn.onnx")
    graph = onnx.load(str(fp32)).graph
    products = activation_products(graph)
    attention = attention_products(graph)
    assert len(products) == 4 and len(attention) == 2, (products, attention)
    softmax_out = next(n.output[0] for n in graph.node if n.op_type == "Softmax")
    assert any(softmax_out in n.input for n in graph.node if n.name in attention)

    images = np.random.default_rng(0).standard_normal((16, 6, 8)).astype(np.float32)
    base = QuantConfig(method="minmax", bias_correction="off", pixel_grid_input=False, weight_rounding="nearest")
    expected = {"none": set(), "attention": set(attention), "all": set(products)}
    for mode, quantized in expected.items():
        config = with_int8_products(base, mode, graph)
        qdq = tmp_path / f"{mode}.onnx"
        quantize_onnx(fp32, qdq, ArrayCalibration(images), config, ranges_cache=tmp_path / f"{mode}.ranges.json")
        assert _products_with_both_inputs_dequantized(qdq) == quantized, mode
        plan = plan_from_qdq(qdq, net, model_name="attn", weights="w", recipe=config,
                             calibration=CalibrationInfo(folder="random", images=16, seed=0))
        listed = {entry.split("activation product ")[1].rstrip(")") for entry in plan.reference_only
                  if "activation product" in entry}
        assert listed == quantized, mode
        deviations = {d["layer"] for d in unhonoured(plan, list(plan.layers), [])}
        assert set(plan.reference_only) <= deviations
        assert sorted(plan.layers) == ["proj", "qkv"]
