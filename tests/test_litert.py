"""LiteRT: `.tflite` export (NHWC by default, metadata sidecar), parity with torch on real images, every op inside
XNNPACK, quantized files that keep the trained subject's predictions, and the `litert` runtime in profile/bundle.
Fidelity and latency targets are measured by benchmarks/bench_litert.py; these are floors on small subsets."""

from __future__ import annotations

import importlib.util
import json
import tarfile

import numpy as np
import pytest
import torch

from t2tedge.cli import main
from t2tedge.errors import T2TEdgeError
from t2tedge.harness.comparison import compare
from t2tedge.harness.parity import parity_images

pytest.importorskip("ai_edge_litert", reason="the litert extra is not installed (make setup installs it)")
pytest.importorskip("litert_torch", reason="the litert extra is not installed (make setup installs it)")

from t2tedge.models import create_model, get_spec  # noqa: E402
from t2tedge.quantize.calibration import calibration_samples  # noqa: E402
from t2tedge.quantize.calibration import calibration_set, images_of  # noqa: E402
from t2tedge.quantize.litert_ptq import quantize_tflite  # noqa: E402
from t2tedge.targets.litert import LiteRTSettings, file_name, write_tflite  # noqa: E402
from t2tedge.runtimes.litert import LiteRT  # noqa: E402
from t2tedge.sidecar import read_sidecar, sidecar_path  # noqa: E402

M = "mobilenet_v2_100"


@pytest.fixture(scope="module")
def t2t_files(subject, tmp_path_factory):
    """The trained T2T-ViT-7 as fp32 .tflite, and its w8 and (32-image) static int8 variants made from that file."""
    out = tmp_path_factory.mktemp("litert_t2t")
    fp32, _ = write_tflite("t2t_vit_7", subject.checkpoint, out / file_name("t2t_vit_7", "fp32"), LiteRTSettings(),
                           num_classes=subject.num_classes)
    calibration = images_of(calibration_samples(subject.train, 32), get_spec("t2t_vit_7").preprocess, "nhwc")
    reports = {"w8": quantize_tflite(fp32, out / "w8.tflite", "w8", "T2T-ViT").to_dict(),
               "int8": quantize_tflite(fp32, out / "int8.tflite", "int8", "T2T-ViT", calibration).to_dict()}
    return {"fp32": fp32, "w8": out / "w8.tflite", "int8": out / "int8.tflite", "reports": reports}


@pytest.fixture(scope="module")
def subject_images(subject):
    return parity_images("t2t_vit_7", subject.val, 96, num_classes=subject.num_classes)[0]


def test_t2t_fp32_matches_torch_on_real_images_and_runs_whole_in_xnnpack(t2t_files, subject, subject_images):
    runtime = LiteRT.load(t2t_files["fp32"], threads=2)
    images = subject_images[:16]
    with torch.no_grad():
        reference = create_model("t2t_vit_7", checkpoint=subject.checkpoint, num_classes=10)(torch.from_numpy(images))
    result = compare(reference.numpy(), runtime.run(images), "fp32")
    assert result["passed"] and result["max_abs"] <= 1e-4 and result["top1_agreement"] == 1.0, result
    details = runtime.describe().details
    assert details["ops_outside_delegate"] == 0 and details["delegate_partitions"] == 1, details
    assert details["input_layout"] == "NHWC" and runtime.describe().precision == "fp32"


def test_the_delegation_count_sees_ops_that_run_outside_xnnpack(t2t_files):
    """Without the delegate every op runs in LiteRT's own kernels, and the count says so."""
    runtime = LiteRT.load(t2t_files["fp32"], threads=1, xnnpack=False)
    details = runtime.describe().details
    total = len(runtime.interpreter._get_ops_details())
    assert details["delegate_partitions"] == 0 and details["ops_outside_delegate"] == total > 500
    assert "FULLY_CONNECTED x41" in details["ops_outside_delegate_by_type"]


def test_w8_keeps_the_trained_subjects_predictions(t2t_files, subject_images):
    report = t2t_files["reports"]["w8"]
    assert report["int8_dynamic_ops"] == {"CONV_2D": 1, "FULLY_CONNECTED": 41}
    assert report["int8_ops"] == {} and report["float_ops"]["DEPTHWISE_CONV_2D"] == 2  # the unfolds
    fp32 = LiteRT.load(t2t_files["fp32"], threads=2).run(subject_images)
    w8 = LiteRT.load(t2t_files["w8"], threads=2)
    assert w8.describe().details["ops_outside_delegate"] == 0
    result = compare(fp32, w8.run(subject_images), "int8")
    assert result["top1_agreement"] >= 0.98 and result["cosine"] >= 0.99, result  # bench: 100%, 43 dB


def test_static_int8_keeps_transformer_ops_float_and_runs_whole_in_xnnpack(t2t_files, subject_images):
    report = t2t_files["reports"]["int8"]
    assert set(report["int8_ops"]) == {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}
    assert {"SOFTMAX", "GELU", "BATCH_MATMUL", "RSQRT"} <= set(report["float_ops"])
    runtime = LiteRT.load(t2t_files["int8"], threads=2)
    assert runtime.describe().details["ops_outside_delegate"] == 0
    fp32 = LiteRT.load(t2t_files["fp32"], threads=2).run(subject_images)
    result = compare(fp32, runtime.run(subject_images), "int8")
    assert result["top1_agreement"] >= 0.9, result  # bench, 256 calibration images: 97%


@pytest.fixture(scope="module")
def mnv2_int8(tmp_path_factory, weights_dir, sample_dir):
    out = tmp_path_factory.mktemp("litert_mnv2")
    samples, record = calibration_set(sample_dir, 16)
    path, _ = write_tflite(M, weights_dir / "mobilenet_v2_1.0_imagenet_tfsame.pth", out / file_name(M, "int8"),
                           LiteRTSettings(precision="int8", calibration=samples, calibration_record=record))
    assert path == out / f"{M}_int8.tflite"
    return path


def test_export_writes_the_file_and_its_metadata_together(mnv2_int8, weights_dir):
    from t2tedge.fileio import sha256_file

    meta = read_sidecar(mnv2_int8)
    assert sidecar_path(mnv2_int8).name == f"{M}_int8.tflite.json"
    assert meta["t2tedge.model"] == M and meta["t2tedge.precision"] == "int8"
    assert meta["t2tedge.input_layout"] == "NHWC" and meta["t2tedge.input_shape"] == [1, 224, 224, 3]
    assert meta["t2tedge.class_order"][:2] == ["n01440764", "n01443537"] and len(meta["t2tedge.class_order"]) == 1000
    assert meta["t2tedge.preprocess"]["mean"] == [0.5, 0.5, 0.5]
    assert meta["t2tedge.weights"] == f"sha256:{sha256_file(weights_dir / 'mobilenet_v2_1.0_imagenet_tfsame.pth')}"
    report = meta["t2tedge.quantization"]
    assert report["float_ops"] == {} and report["int8_ops"]["CONV_2D"] == 35
    assert report["calibration"]["images"] == 16
    assert sorted(p.name for p in mnv2_int8.parent.iterdir()) == [mnv2_int8.name, sidecar_path(mnv2_int8).name]


def test_full_integer_file_takes_float_batches_and_keeps_predictions(mnv2_int8, weights_dir, val_dir):
    runtime = LiteRT.load(mnv2_int8, threads=2)
    assert runtime.describe().precision == "int8" and runtime.describe().details["input_dtype"] == "int8"
    assert runtime.describe().details["ops_outside_delegate"] == 0
    images, _ = parity_images(M, val_dir, 32)
    with torch.no_grad():
        reference = create_model(M, checkpoint=weights_dir / "mobilenet_v2_1.0_imagenet_tfsame.pth")(
            torch.from_numpy(images)).numpy()
    logits = runtime.run(images)
    assert compare(reference, logits, "int8")["top1_agreement"] >= 0.85  # bench, 256 images: 97%
    # A static batch-1 file takes any batch, one image at a time.
    assert np.abs(logits[:3] - np.concatenate([runtime.run(images[i:i + 1]) for i in range(3)])).max() == 0


@pytest.mark.slow  # a second layout of the same conversion; NHWC, the default, stays fast
def test_nchw_layout_matches_torch(tmp_path, weights_dir, val_dir):
    checkpoint = weights_dir / "mobilenet_v2_1.0_imagenet_tfsame.pth"
    path, meta = write_tflite(M, checkpoint, tmp_path / file_name(M, "fp32"), LiteRTSettings(layout="nchw"))
    runtime = LiteRT.load(path, threads=2)
    assert meta["t2tedge.input_shape"] == [1, 3, 224, 224] and runtime.describe().details["input_layout"] == "NCHW"
    images, _ = parity_images(M, val_dir, 8)
    with torch.no_grad():
        reference = create_model(M, checkpoint=checkpoint)(torch.from_numpy(images)).numpy()
    assert compare(reference, runtime.run(images), "fp32")["passed"]


def test_profile_and_bundle_take_tflite(mnv2_int8, tmp_path, val_dir, capsys):
    out = tmp_path / "cell.json"
    assert main(["profile", str(mnv2_int8), "--runs", "3", "--warmup", "1", "--data", str(val_dir), "--limit", "8",
                 "--out", str(out)]) == 0
    cell = json.loads(out.read_text())["cell"]
    assert cell["runtime"] == "litert" and cell["model"] == M and cell["precision"] == "int8"
    assert cell["runtime_info"]["details"]["ops_outside_delegate"] == 0
    bundle = tmp_path / "b.tar.gz"
    assert main(["export", "bundle", str(mnv2_int8), "--out", str(bundle)]) == 0
    with tarfile.open(bundle) as tar:
        names = tar.getnames()
    assert f"artifacts/{mnv2_int8.name}" in names and f"artifacts/{mnv2_int8.name}.json" in names


def test_missing_extra_is_one_line_before_any_work(monkeypatch, tmp_path, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "litert_torch" else real(name, *a))
    assert main(["export", "litert", M, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "t2tedge: error: litert_torch is not installed (pip install 't2t-edge[litert]')"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_conversion_failure_names_the_op(tmp_path):
    from t2tedge.export.litert_export import _failure_line

    log = tmp_path / "native.log"
    log.write_text("loc(fused[...]): error: failed to legalize operation 'tfl.custom_thing' that was explicitly "
                   "marked illegal\n")
    assert _failure_line(RuntimeError("Conversion failed"), log).startswith("op tfl.custom_thing cannot be converted")


def test_runtime_refuses_other_files(tmp_path):
    with pytest.raises(T2TEdgeError, match="LiteRT runs .tflite files"):
        LiteRT.load(tmp_path / "model.onnx")
    with pytest.raises(T2TEdgeError, match="model file not found"):
        LiteRT.load(tmp_path / "missing.tflite")


def test_ops_profile_says_litert_reports_no_op_times(mnv2_int8, tmp_path, capsys):
    from t2tedge.results import OpProfileRecord

    out = tmp_path / "ops.json"
    assert main(["profile", str(mnv2_int8), "--ops", "--runs", "3", "--warmup", "1", "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert len(line.splitlines()) == 1 and "no per-op times" in line
    record = OpProfileRecord.read(out)
    assert record.ops == [] and "benchmark_model" in record.op_timing and record.op_sum_ms is None
    assert record.runtime_info["delegate_partitions"] >= 1 and record.peak_rss_mb > 0  # what LiteRT does report
    assert not out.with_suffix(".png").exists()
