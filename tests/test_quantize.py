"""PTQ: the config shape, ReLU6 folding, MobileNetV2 INT8 accuracy on real images, clear errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import numpy_helper
import pytest
import torch

from conftest import assert_matches_schema
from t2tedge.cli import main
from t2tedge.export.ort_optimize import optimize_for_onnxruntime
from t2tedge.quantize import OpQuantConfig, QuantConfig, nodes_to_quantize, preset
from t2tedge.quantize.pipeline import QuantizeSettings, quantize_model
from t2tedge.quantize.records import QuantizeReport


@pytest.fixture(scope="module")
def mobilenet_int8(tmp_path_factory, weights_dir, sample_dir):
    """The library pipeline behind `t2tedge quantize`, called as a user's script would."""
    out = tmp_path_factory.mktemp("int8")
    path, report = quantize_model("mobilenet_v2_100", preset("onnxruntime"), out, QuantizeSettings(calib=sample_dir, num_calib=32, checkpoint=weights_dir / "mobilenet_v2_1.0_imagenet_tfsame.pth"))
    assert path == out / "mobilenet_v2_100_int8.onnx"
    assert QuantizeReport.read(path.with_suffix(".json")) == report
    assert_matches_schema(json.loads(path.with_suffix(".json").read_text()), QuantizeReport)
    # The TensorRT 10 calibration cache is written for --target tensorrt only.
    assert report.trt_calibration_cache is None and not list(out.glob("*.cache"))
    return path


def test_int8_graph_and_report(mobilenet_int8):
    proto = onnx.load(mobilenet_int8)
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert "Clip" not in ops  # ReLU6 folded into the quantized Conv output range
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["t2tedge.precision"] == "int8" and json.loads(meta["t2tedge.quant_config"])["method"] == "mse"
    report = QuantizeReport.read(mobilenet_int8.with_suffix(".json"))
    assert report.calibration.images == 32 and len(report.quantized_nodes) > 50
    assert report.float_nodes_behind_dequantize == [] and "t2tedge.ort_disabled_optimizers" not in meta


def test_quantized_mobilenet_reads_pixels_exactly_and_pools_in_int8(mobilenet_int8, tmp_path):
    import onnxruntime as ort

    report = json.loads(mobilenet_int8.with_suffix(".json").read_text())
    assert report["pixel_grid_input"]["applied"] and report["pixel_grid_input"]["zero_point"] == 128
    assert report["int8_pooling"] == ["/pool/GlobalAveragePool"]
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(mobilenet_int8), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(tmp_path / "optimized.onnx").graph.node]
    assert "QLinearGlobalAveragePool" in ops and "GlobalAveragePool" not in ops


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


def logits_as_an_app_gets_them(path, images: np.ndarray) -> np.ndarray:
    """`onnxruntime.InferenceSession(file)` configured only as the README's "Using our files in your app" says: the
    two optimizers we measure without on 2 threads, WeightBiasQuantization too for an INT8 file, and uint8 weights
    on an x86 CPU without VNNI."""
    import onnxruntime as ort

    from t2tedge.onnx_graph import has_qdq
    from t2tedge.ort_int8_weights import int8_dot_may_saturate, make_int8_unsigned

    proto = onnx.load(str(path))
    disabled = ["MatMulAddFusion", "SkipLayerNormFusion"] + (["WeightBiasQuantization"] if has_qdq(proto) else [])
    model = str(path)
    if has_qdq(proto) and int8_dot_may_saturate() and make_int8_unsigned(proto):
        model = proto.SerializeToString()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
    name, batch = session.get_inputs()[0].name, session.get_inputs()[0].shape[0]
    step = batch if isinstance(batch, int) else len(images)
    return np.concatenate([session.run(None, {name: images[i:i + step]})[0] for i in range(0, len(images), step)])


def test_shipped_files_give_a_bare_session_the_harness_logits(mobilenet_int8, weights_dir, val_dir):
    """fp32 export, INT8 from `quantize` and its `optimize` form: what the harness reports is what an app computes."""
    from t2tedge.data import discover, load_batch
    from t2tedge.export import export_onnx
    from t2tedge.models import get_spec
    from t2tedge.runtimes import get_runtime

    images, _ = load_batch(discover(val_dir)[::100], get_spec("mobilenet_v2_100").preprocess)
    fp32 = export_onnx("mobilenet_v2_100", weights_dir / "mobilenet_v2_1.0_imagenet_tfsame.pth",
                       out_dir=mobilenet_int8.parent / "fp32")
    optimized = optimize_for_onnxruntime(mobilenet_int8, mobilenet_int8.parent / "optimized" / "int8.ort-cpu.onnx")[0]
    for path in (fp32, mobilenet_int8, optimized):
        harness = get_runtime("onnxruntime").load(path, threads=2).run(images)
        app = logits_as_an_app_gets_them(path, images)
        assert np.abs(harness - app).max() <= 1e-4, path.name
        assert np.array_equal(harness.argmax(1), app.argmax(1))


@pytest.mark.slow  # a second INT8 build with a deliberately bad config
def test_layer_sqnr_flags_a_collapsing_config_and_not_the_default(mobilenet_int8, weights_dir, sample_dir, tmp_path):
    report = json.loads(mobilenet_int8.with_suffix(".json").read_text())["layer_sqnr"]
    assert len(report["layers"]) > 50 and report["flagged"] == []
    assert min(row["sqnr_db"] for row in report["layers"]) > report["threshold_db"]
    # Per-tensor weights are what collapses MobileNetV2 under plain ORT PTQ: the report must point at it.
    warnings = []
    _, collapsed = quantize_model("mobilenet_v2_100", preset("onnxruntime", per_channel=False, bias_correction="off"), tmp_path, QuantizeSettings(calib=sample_dir, num_calib=32, checkpoint=weights_dir / "mobilenet_v2_1.0_imagenet_tfsame.pth"), warn=warnings.append)
    assert any("below 10 dB SQNR" in line for line in warnings)
    layers = collapsed.layer_sqnr
    assert len(layers.flagged) > 20 and layers.layers[0]["sqnr_db"] > 10  # the first conv is still fine


@pytest.mark.slow  # T2T-ViT-7 INT8 from the static export stays fast in the Imagenette grid (ONNX Runtime and OpenVINO)
def test_t2t_vit_7_int8_keeps_sqnr_on_real_images_from_a_static_batch_export(t2t7_checkpoint, sample_dir, val_dir,
                                                                              tmp_path):
    """Trained-like T2T-ViT-7 (plain ORT per-channel MinMax: 6.6 dB, 46% agreement in bench-ptq): ours keeps
    >= 25 dB. The static-batch export also exercises the per-layer report, which must feed it one image a time."""
    from t2tedge.data import discover, load_batch
    from t2tedge.export import export_onnx
    from t2tedge.models import get_spec
    from t2tedge.metrics import sqnr_db
    from t2tedge.runtimes import get_runtime

    fp32 = export_onnx("t2t_vit_7", t2t7_checkpoint, out_dir=tmp_path)
    int8, report = quantize_model("t2t_vit_7", preset("onnxruntime"), tmp_path / "int8", QuantizeSettings(calib=sample_dir, num_calib=32, onnx_path=fp32))
    soft_splits = [n for n in report.float_nodes if "/soft_split" in n]
    assert len(soft_splits) == 2 and not any("/soft_split" in n for n in report.quantized_nodes)
    assert report.layer_sqnr.images == 8 and report.layer_sqnr.flagged == []
    # The int8 MatMuls whose outputs only float ops read keep them float; TensorRT 10's cache still has their ranges.
    from t2tedge.quantize.tensorrt_checks import read_calibration_cache, write_calibration_cache

    write_calibration_cache(int8, tmp_path / "t2t7.trt10.cache")
    _, cached = read_calibration_cache(tmp_path / "t2t7.trt10.cache")
    assert len(report.int8_outputs_kept_float) >= 4 * 7 and set(report.int8_outputs_kept_float) <= set(cached)
    images, _ = load_batch(discover(val_dir)[::40], get_spec("t2t_vit_7").preprocess)
    reference = get_runtime("onnxruntime").load(fp32).run(images)
    logits = get_runtime("onnxruntime").load(int8).run(images)
    # `t2tedge optimize`: each block's int8 qkv projection and float attention run as one QAttention kernel, and
    # int8 MatMuls take their bias Add in, with the same logits.
    optimized = get_runtime("onnxruntime").load(optimize_for_onnxruntime(int8)[0])
    fusions = optimized.describe().details["fusions"].split(",")
    assert "QAttention x7" in fusions and any(f.startswith("MatMulIntegerToFloat x") for f in fusions), fusions
    assert np.abs(optimized.run(images) - logits).max() <= 1e-4
    for path in (fp32, int8):  # as ONNX Runtime in an app computes them
        harness = get_runtime("onnxruntime").load(path, threads=2).run(images)
        assert np.abs(logits_as_an_app_gets_them(path, images) - harness).max() <= 1e-4
    assert sqnr_db(reference, logits) >= 25
    assert np.mean(reference.argmax(1) == logits.argmax(1)) >= 0.85


def test_a_failure_after_quantizing_leaves_no_int8_model(weights_dir, sample_dir, tmp_path, monkeypatch):
    from t2tedge.errors import T2TEdgeError
    from t2tedge.quantize import layer_sqnr
    from t2tedge.targets.onnx_fed import publish_quantized

    def fail(*args, **kwargs):
        raise T2TEdgeError("per-layer report failed")

    monkeypatch.setattr(layer_sqnr, "layer_sqnr", fail)
    with pytest.raises(T2TEdgeError, match="per-layer report failed"):
        publish_quantized("mobilenet_v2_100", preset("onnxruntime"), tmp_path / "int8", QuantizeSettings(calib=sample_dir, num_calib=8, checkpoint=weights_dir / "mobilenet_v2_1.0_imagenet_tfsame.pth"))
    assert not (tmp_path / "int8").exists() or list((tmp_path / "int8").iterdir()) == []


def test_config_precedence_and_json_round_trip(tmp_path):
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Conv", ["x", "w"], ["y"], name="/stem/Conv"),
         onnx.helper.make_node("Clip", ["y"], ["z"], name="/stem/Clip"),
         onnx.helper.make_node("MatMul", ["z", "w2"], ["a"], name="/head/MatMul"),
         onnx.helper.make_node("MatMul", ["a", "z"], ["b"], name="/attn/MatMul"),
         onnx.helper.make_node("Softmax", ["b"], ["c"], name="/attn/Softmax")],
        "g", [], [], initializer=[onnx.numpy_helper.from_array(np.zeros((1,), np.float32), n) for n in ("w", "w2")])
    assert set(nodes_to_quantize(QuantConfig(), graph)) == {"/stem/Conv", "/stem/Clip", "/head/MatMul"}
    assert set(nodes_to_quantize(QuantConfig(quantize_activation_matmul=True), graph)) >= {"/attn/MatMul"}
    no_matmul = QuantConfig().with_float(["MatMul"], graph)
    assert set(nodes_to_quantize(no_matmul, graph)) == {"/stem/Conv", "/stem/Clip"}
    by_name = QuantConfig(op_type_configs={"MatMul": None}, op_name_configs={"/head/*": OpQuantConfig()})
    assert set(nodes_to_quantize(by_name, graph)) == {"/stem/Conv", "/stem/Clip", "/head/MatMul"}
    assert set(nodes_to_quantize(QuantConfig().with_float(["/stem/Conv"], graph), graph)) == {"/head/MatMul"}
    by_name.save(tmp_path / "q.json")
    assert QuantConfig.load(tmp_path / "q.json").to_dict() == by_name.to_dict()


def _sample_mse(values: np.ndarray, low: float, high: float, levels: int = 255) -> float:
    """Quantize-dequantize `values` on [low, high] the way ORT's uint8 QDQ does and return the MSE."""
    step = (high - low) / levels
    zero = np.round(-low / step)
    q = np.clip(np.round(values / step) + zero, 0, levels)
    return float(np.mean(((q - zero) * step - values) ** 2))


def test_mse_range_is_the_best_clipping_on_samples():
    from t2tedge.quantize.mse_calibration import mse_range

    values = np.random.default_rng(0).laplace(0.3, 1.0, 50_000)  # heavy tails, as activations have
    threshold = np.abs(values).max()
    counts, edges = np.histogram(values, 2048, range=(-threshold, threshold))
    low, high = mse_range(counts, edges, values.min(), values.max(), symmetric=False)
    brute_force = min(_sample_mse(values, a * values.min(), b * values.max())
                      for a in np.linspace(0.3, 1, 36) for b in np.linspace(0.3, 1, 36))
    assert values.min() < low < 0 < high < values.max()
    assert _sample_mse(values, low, high) <= 1.02 * brute_force
    assert _sample_mse(values, low, high) < 0.95 * _sample_mse(values, values.min(), values.max())

    relu = np.maximum(values, 0)
    counts, edges = np.histogram(relu, 2048, range=(-relu.max(), relu.max()))
    low, high = mse_range(counts, edges, 0.0, relu.max(), symmetric=False)
    assert low == 0.0 and 0 < high < relu.max()

    low, high = mse_range(*np.histogram(values, 2048, range=(-threshold, threshold)), values.min(), values.max(),
                          symmetric=True)
    assert low == -high and 0 < high < threshold


class _ArrayReader:
    """ImageCalibrationReader's windowing protocol over plain arrays, recording how many images each pass read."""

    def __init__(self, images, windowed=True):
        self.images, self.passes, self._position, self._end = images, [], 0, len(images)
        if windowed:
            self.set_range = self._set_range

    def __len__(self):
        return len(self.images)

    def _set_range(self, start, end):
        self._position, self._end = start, min(end, len(self.images))
        self.passes.append(0)

    def get_next(self):
        if self._position >= self._end:
            return None
        self._position += 1
        if self.passes:
            self.passes[-1] += 1
        return {"image": self.images[self._position - 1:self._position]}

    def rewind(self):
        self._position, self._end = 0, len(self.images)


def _tiny_conv_model(path, batch=None):
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["conv"], name="conv"),
         helper.make_node("Relu", ["conv"], ["logits"], name="relu")], "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 4, 6, 6])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_static_batch_graph_runs_any_batch_for_every_requested_output(tmp_path):
    """The per-layer report and the onnxruntime adapter share one chunk-and-pad rule for static-batch exports."""
    import onnxruntime as ort

    from t2tedge.ort_session import run_in_fixed_batches

    _tiny_conv_model(tmp_path / "static.onnx", batch=3)
    _tiny_conv_model(tmp_path / "dynamic.onnx")
    proto = onnx.load(tmp_path / "static.onnx")
    proto.graph.output.add(name="conv")
    static = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    dynamic = ort.InferenceSession(str(tmp_path / "dynamic.onnx"), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(2).normal(size=(8, 3, 8, 8)).astype(np.float32)
    conv, logits = run_in_fixed_batches(static, "image", 3, images, ["conv", "logits"])
    assert conv.shape == (8, 4, 6, 6) and logits.shape == (8, 4, 6, 6)
    np.testing.assert_allclose(logits, dynamic.run(None, {"image": images})[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.maximum(conv, 0), logits, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", ["minmax", "mse"])
def test_calibration_reads_bounded_windows_and_matches_one_pass(method, tmp_path, monkeypatch):
    """ORT keeps every output of a calibration pass in memory (256 T2T-ViT-7 images exhaust 24 GiB), so ours
    reads windows of images; the ranges must not depend on it."""
    from onnxruntime.quantization.calibrate import load_tensors_data

    from t2tedge.quantize import ranges

    monkeypatch.setattr(ranges, "WINDOW_IMAGES", 4)
    model = tmp_path / "tiny.onnx"
    _tiny_conv_model(model)
    images = np.random.default_rng(1).normal(size=(10, 3, 8, 8)).astype(np.float32)
    windowed, whole = _ArrayReader(images), _ArrayReader(images, windowed=False)
    ranges.write_ranges(model, windowed, ["Conv", "Relu"], tmp_path / "a.json", method, symmetric=False)
    ranges.write_ranges(model, whole, ["Conv", "Relu"], tmp_path / "b.json", method, symmetric=False)
    assert windowed.passes == [4, 4, 2]
    a, b = load_tensors_data(tmp_path / "a.json"), load_tensors_data(tmp_path / "b.json")
    assert set(a.data) == set(b.data) and "conv" in a.data
    for tensor in a.data:
        tolerance = 0 if method == "minmax" else 0.05 * float(b[tensor].range_value[1] - b[tensor].range_value[0])
        np.testing.assert_allclose(a[tensor].range_value, b[tensor].range_value, atol=tolerance)


def test_quantize_cli_offers_every_calibration_method():
    from t2tedge.cli import build_parser
    from t2tedge.quantize.config import CALIBRATION_METHODS

    quantize = next(a for a in build_parser()._subparsers._group_actions[0].choices["quantize"]._actions
                    if "--method" in a.option_strings)
    assert set(quantize.choices) == set(CALIBRATION_METHODS) and quantize.default == QuantConfig().method


@pytest.mark.parametrize("argv,message", [
    (["--calib", "{empty}"], "no images"),
    (["--method", "kl"], None),
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


@pytest.mark.slow  # TensorRT's preset on MobileNetV2; TensorRT's QDQ builds are checked on synthetic graphs in test_tensorrt
def test_tensorrt_target_passes_check_and_writes_cache(weights_dir, sample_dir, tmp_path, capsys):
    from t2tedge.quantize.tensorrt_checks import read_calibration_cache

    qdq, report = quantize_model("mobilenet_v2_100", preset("tensorrt"), tmp_path, QuantizeSettings(calib=sample_dir, num_calib=16, target="tensorrt", checkpoint=weights_dir / "mobilenet_v2_1.0_imagenet_tfsame.pth"))
    assert qdq.name == "mobilenet_v2_100_int8_tensorrt.onnx"
    assert main(["check-trt", str(qdq)]) == 0
    assert "OK for TensorRT" in capsys.readouterr().out
    assert report.trt_calibration_cache.path == str(qdq.with_suffix(".trt10.cache"))
    assert "TensorRT 10" in report.trt_calibration_cache.reader and "TensorRT 11 reads no cache" in \
        report.trt_calibration_cache.reader
    header, scales = read_calibration_cache(qdq.with_suffix(".trt10.cache"))
    assert header == "TRT-100300-EntropyCalibration2"
    # The cache holds amax/127 of each calibrated tensor, under the fp32 graph's tensor names.
    proto = onnx.load(qdq)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    q_image = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "image_on_pixel_grid")
    assert scales["image"] == pytest.approx(float(inits[q_image.input[1]]) * 128 / 127, rel=1e-6)
    assert all(s > 0 for s in scales.values()) and len(scales) > 50


def test_check_trt_flags_ort_int8_and_einsum(mobilenet_int8, tmp_path, capsys):
    assert main(["check-trt", str(mobilenet_int8)]) == 1
    assert "uint8 Q/DQ; TensorRT takes INT8 only" in capsys.readouterr().out
    einsum = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Einsum", ["a", "b"], ["c"], equation="bti,mi->btm", name="performer")], "g",
        [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in "ab"],
        [onnx.helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, None)]),
        opset_imports=[onnx.helper.make_opsetid("", 17)])
    onnx.save(einsum, tmp_path / "einsum.onnx")
    assert main(["check-trt", str(tmp_path / "einsum.onnx")]) == 1
    assert "Einsum runs in FP32/FP16 only" in capsys.readouterr().out


def test_check_trt_passes_fp32_exports(tmp_path, capsys):
    from t2tedge.export import export_onnx

    for name in ["t2t_vit_7", "mobilenet_v2_100"]:
        assert main(["check-trt", str(export_onnx(name, None, out_dir=tmp_path))]) == 0


def test_calibration_cache_rejects_foreign_file(tmp_path):
    from t2tedge.errors import T2TEdgeError
    from t2tedge.quantize.tensorrt_checks import read_calibration_cache

    (tmp_path / "x.cache").write_text("hello\n")
    with pytest.raises(T2TEdgeError, match="not a TensorRT calibration cache"):
        read_calibration_cache(tmp_path / "x.cache")


def test_agreement_reports_its_standard_error_and_whether_it_resolves_a_target():
    from t2tedge.quantize.sensitivity import Agreement

    reference = np.eye(10, dtype=np.float32)[np.arange(400) % 10]
    candidate = reference.copy()
    candidate[:4] = np.roll(candidate[:4], 1, axis=1)  # 4 of 400 flip: 99.0%
    agreement = Agreement.of(reference, candidate)
    assert agreement.images == 400 and agreement.top1_agreement == pytest.approx(0.99)
    assert agreement.standard_error == pytest.approx(0.00554, abs=1e-5)  # rate 397/402 with one of each added
    assert agreement.resolves(0.98) and agreement.resolves(0.999)
    assert not agreement.resolves(0.994) and not agreement.resolves(0.99)
    assert "99.0% ± 0.6% (1 s.e., 400 images)" in agreement.describe()
    assert agreement.to_dict()["top1_agreement_standard_error"] == agreement.standard_error
    fewer = Agreement.of(reference[:100], candidate[:100])  # same 4 flips in 100 images: 96% ± 2.1%
    assert fewer.standard_error > 3 * agreement.standard_error and not fewer.resolves(0.975)
    perfect = Agreement.of(reference[:48], reference[:48])  # 48 of 48 cannot show 99%
    assert perfect.top1_agreement == 1.0 and perfect.standard_error > 0.015 and not perfect.resolves(0.99)


@pytest.mark.slow  # a sensitivity sweep over every node
def test_sensitivity_ranking_and_fallback_mechanics(weights_dir, sample_dir, tmp_path):
    """Ranking is sorted by what leaving a node float buys; the fallback keeps a prefix of it, in order."""
    from t2tedge.data import discover, load_batch, split
    from t2tedge.export import OnnxExportOptions, export_onnx
    from t2tedge.models import get_spec
    from t2tedge.quantize import ImageCalibrationReader, quantize_onnx
    from t2tedge.quantize.sensitivity import PTQSession, analyse, mixed_precision

    spec = get_spec("mobilenet_v2_100")
    fp32 = export_onnx("mobilenet_v2_100", weights_dir / "mobilenet_v2_1.0_imagenet_tfsame.pth", out_dir=tmp_path,
                       options=OnnxExportOptions(dynamic_batch=True))
    calib, rest = split(discover(sample_dir), 16, seed=0)
    held_out, _ = split(rest, 16, seed=1)
    images, _ = load_batch(held_out, spec.preprocess)
    session = PTQSession(fp32, ImageCalibrationReader(calib, spec.preprocess, batch=16, progress=None), QuantConfig(),
                         images, workdir=tmp_path / "work")
    assert session.ranges.is_file()  # one calibration, reused by every variant
    assert session.full.images == 16
    session.candidates = ["/classifier/classifier.1/Gemm"] + session.candidates[10:22:5]  # 3 between int8 layers
    ranking = analyse(session, progress=False)
    gains = [r["sqnr_gain_db"] for r in ranking]
    assert gains == sorted(gains, reverse=True) and len(ranking) == 4
    chosen, kept, achieved = mixed_precision(session, ranking, target_agreement=1.01)  # unreachable: keeps all
    assert kept == [r["node"] for r in ranking]
    assert all(chosen.op_name_configs[name] is None for name in kept)
    assert "/classifier/classifier.1/Gemm" not in plan(chosen, session.graph)
    report = quantize_onnx(fp32, tmp_path / "mixed.onnx", None, chosen, ranges_cache=session.ranges)
    behind = set(report["float_nodes_behind_dequantize"])  # the Gemm reads the float average pool
    assert behind and behind <= set(kept) - {"/classifier/classifier.1/Gemm"}
    meta = {p.key: p.value for p in onnx.load(tmp_path / "mixed.onnx").metadata_props}
    assert meta["t2tedge.ort_disabled_optimizers"] == "WeightBiasQuantization"
    _, none_kept, same = mixed_precision(session, ranking, target_agreement=0.0)  # already met: keeps none
    assert none_kept == [] and same == session.full


@pytest.mark.slow
def test_mixed_precision_reaches_target_on_mobilenet_v2(weights_dir, sample_dir, tmp_path):
    from t2tedge.quantize.pipeline import SearchSettings

    _, report = quantize_model("mobilenet_v2_100", preset("onnxruntime"), tmp_path, QuantizeSettings(calib=sample_dir, num_calib=256, search=SearchSettings(target_agreement=0.99), checkpoint=weights_dir / "mobilenet_v2_1.0_imagenet_tfsame.pth"), say=lambda line: None)
    searched = report.mixed_precision
    assert searched["reached"] and report.sensitivity
    assert set(searched["kept_float"]) <= set(report.float_nodes)
    agreement, images = searched["top1_agreement"], report.held_out_images
    assert searched["images"] == images == 200
    rate = (round(agreement * images) + 1) / (images + 2)
    assert searched["top1_agreement_standard_error"] == pytest.approx(np.sqrt(rate * (1 - rate) / images))
    assert searched["resolved_by_held_out"] == (abs(agreement - 0.99) > searched["top1_agreement_standard_error"])


def _conv_after_dequantize(path):
    """image -> Q/DQ -> Conv with float weights -> Q/DQ: a node the quantization config keeps in float between
    quantized tensors. One weight, on an input channel that is always zero, is 1000: harmless in float, but
    per-tensor int8 weights then have a step of about 8 and every other weight rounds to zero."""
    from onnx import TensorProto, helper

    weight = np.random.default_rng(0).normal(0, 0.3, (4, 3, 3, 3))
    weight[0, 2, 1, 1] = 1000.0
    initializers = [numpy_helper.from_array(weight.astype(np.float32), "w"),
                    numpy_helper.from_array(np.zeros(4, np.float32), "b"),
                    numpy_helper.from_array(np.array(0.02, np.float32), "s"),
                    numpy_helper.from_array(np.array(128, np.uint8), "z"),
                    numpy_helper.from_array(np.array(0.1, np.float32), "ys"),
                    numpy_helper.from_array(np.array(0, np.int8), "yz")]
    nodes = [helper.make_node("QuantizeLinear", ["image", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"]),
             helper.make_node("Conv", ["dq", "w", "b"], ["y"], pads=[1, 1, 1, 1]),
             helper.make_node("QuantizeLinear", ["y", "ys", "yz"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["logits"])]
    graph = helper.make_graph(nodes, "float_conv_between_qdq",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, 8, 8])], initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return weight


def test_onnxruntime_runtime_keeps_float_nodes_of_a_qdq_graph_in_float(tmp_path):
    import onnxruntime as ort

    from t2tedge.runtimes import get_runtime

    path = tmp_path / "qdq.onnx"
    weight = _conv_after_dequantize(path)
    x = np.random.default_rng(1).uniform(-2, 2, (1, 3, 8, 8)).astype(np.float32)
    x[:, 2] = 0.0
    xq = (np.clip(np.round(x / 0.02) + 128, 0, 255) - 128) * 0.02  # what the DequantizeLinear hands the Conv
    y = torch.nn.functional.conv2d(torch.from_numpy(xq.astype(np.float32)),
                                   torch.from_numpy(weight.astype(np.float32)), padding=1).numpy()
    expected = np.clip(np.round(y / 0.1), -128, 127) * 0.1

    runtime = get_runtime("onnxruntime").load(path, threads=1)
    assert "WeightBiasQuantization" in runtime.describe().details["disabled_optimizers"]
    assert np.abs(runtime.run(x) - expected).max() <= 0.1 + 1e-6  # at most one output step (rounding ties)
    plain = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    if np.abs(plain - expected).max() <= 0.1 + 1e-6:
        pytest.skip(f"onnxruntime {ort.__version__} no longer quantizes float Convs between Q/DQ")
    assert np.abs(plain - expected).max() > 1.0  # what ORT's own per-tensor int8 weights make of it


def test_float_graphs_keep_every_onnxruntime_optimizer(tmp_path):
    from t2tedge.export import export_onnx
    from t2tedge.runtimes import get_runtime

    path = export_onnx("mobilenet_v2_100", None, out_dir=tmp_path)
    disabled = get_runtime("onnxruntime").load(path, threads=1).describe().details["disabled_optimizers"]
    assert "WeightBiasQuantization" not in disabled


def _qdq_chain(path):
    """x -> Q/DQ -> MatMul A -> Q/DQ -> MatMul B -> Q/DQ -> Add(bias) -> y, int8 weights, uint8 activations:
    B reads A's output in int8, only a float Add reads B's."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    weights = {k: rng.integers(-127, 128, (8, 8)).astype(np.int8) for k in "ab"}
    inits = [numpy_helper.from_array(w, f"w_{k}") for k, w in weights.items()]
    inits += [numpy_helper.from_array(np.array(s, np.float32), f"s_{k}") for k, s in
              (("x", 0.02), ("a", 0.5), ("b", 4.0), ("wa", 0.01), ("wb", 0.01))]
    inits += [numpy_helper.from_array(np.array(z, np.uint8), f"z_{k}") for k, z in (("x", 128), ("a", 128), ("b", 128))]
    inits += [numpy_helper.from_array(np.array(0, np.int8), "z_w"),
              numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "bias")]
    node = helper.make_node
    nodes = [node("QuantizeLinear", ["x", "s_x", "z_x"], ["x_q"]), node("DequantizeLinear", ["x_q", "s_x", "z_x"], ["x_dq"]),
             node("DequantizeLinear", ["w_a", "s_wa", "z_w"], ["wa"]), node("DequantizeLinear", ["w_b", "s_wb", "z_w"], ["wb"]),
             node("MatMul", ["x_dq", "wa"], ["a"], name="A"),
             node("QuantizeLinear", ["a", "s_a", "z_a"], ["a_q"]), node("DequantizeLinear", ["a_q", "s_a", "z_a"], ["a_dq"]),
             node("MatMul", ["a_dq", "wb"], ["b"], name="B"),
             node("QuantizeLinear", ["b", "s_b", "z_b"], ["b_q"]), node("DequantizeLinear", ["b_q", "s_b", "z_b"], ["b_dq"]),
             node("Add", ["b_dq", "bias"], ["y"])]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return model, weights


def test_int8_matmul_read_only_by_float_ops_keeps_its_output_float(tmp_path):
    """ORT's quantizer requantizes every int8 output; where only float ops read it, that is rounding noise alone."""
    from t2tedge.quantize.requantization import skip_requantization_before_float
    from t2tedge.runtimes import get_runtime

    model, weights = _qdq_chain(tmp_path / "chain.onnx")
    dropped = skip_requantization_before_float(model, ["MatMul"])
    assert dropped == {"b": pytest.approx(4.0 * 128)}  # B's pair, with the range TensorRT's cache needs
    kept = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert [n.input[0] for n in kept] == ["x", "a"]  # A's output still feeds int8 B
    assert not {"s_b", "z_b"} & {i.name for i in model.graph.initializer}
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, tmp_path / "float_output.onnx")

    x = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    quantize = lambda v, s: np.clip(np.round(v / s) + 128, 0, 255) - 128  # noqa: E731
    a = (quantize(x, 0.02) * 0.02) @ (weights["a"] * 0.01)
    b = (quantize(a, 0.5) * 0.5) @ (weights["b"] * 0.01)
    bias = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "bias"))
    expected = b + bias
    runtime = get_runtime("onnxruntime")
    fused = runtime.load(optimize_for_onnxruntime(tmp_path / "float_output.onnx")[0])
    assert fused.describe().details["fusions"] == "MatMulIntegerToFloat x1"  # B with its bias Add
    assert np.abs(fused.run(x) - expected).max() < 1e-3
    assert np.abs(runtime.load(tmp_path / "float_output.onnx").run(x) - expected).max() < 1e-3
    assert np.abs(runtime.load(tmp_path / "chain.onnx").run(x) - expected).max() > 0.1  # B's output rounded to 4.0


def test_quantize_and_eval_name_a_missing_or_misrouted_onnx(sample_dir, val_dir, tmp_path, capsys):
    from t2tedge.export import export_onnx

    assert main(["quantize", "mobilenet_v2_100", "--onnx", str(tmp_path / "none.onnx"), "--calib", str(sample_dir),
                 "--out", str(tmp_path / "out")]) == 1
    assert "ONNX file not found" in capsys.readouterr().err and not (tmp_path / "out").exists()
    path = export_onnx("mobilenet_v2_100", None, out_dir=tmp_path)
    # An ONNX file is evaluated on ONNX Runtime unless told otherwise, never silently swapped for the torch model.
    assert main(["eval", "mobilenet_v2_100", "--onnx", str(path), "--runtime", "torch"]) == 2
    assert "--onnx needs a runtime that runs ONNX files" in capsys.readouterr().err
    assert main(["eval", "mobilenet_v2_100", "--onnx", str(path), "--data", str(val_dir), "--limit", "2", "--json", "-"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["runtime"]["runtime"] == "onnxruntime" and report["onnx"] == str(path) and "checkpoint" not in report
