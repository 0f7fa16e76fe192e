"""Core ML export on any OS: spec checks, weight round-trip accuracy, fp16 safety, atomic writes, clear errors.

Prediction needs macOS; those tests skip elsewhere with the reason.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from t2tedge.cli import main

ct = pytest.importorskip("coremltools", reason="coremltools is not installed (pip install 't2t-edge[coreml]')")

from t2tedge.export.coreml_checks import (  # noqa: E402
    activation_scales,
    inspect_package,
    package_size,
    roundtrip_network,
)
from t2tedge.export.coreml_export import CoreMLExportOptions, image_input_transform  # noqa: E402
from t2tedge.quantize.coreml_ptq import calibrate_w8a8  # noqa: E402
from t2tedge.targets.coreml import write_package  # noqa: E402


@pytest.fixture(scope="module")
def t2t7_packages(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("coreml_t2t")
    return {c: write_package("t2t_vit_7", None, out, options=CoreMLExportOptions(compress=c), progress=False)
            for c in ("none", "w8", "palettize4")}


def test_t2t_vit_package_spec(t2t7_packages):
    report = inspect_package(t2t7_packages["none"])
    assert report.inputs == [{"name": "image", "type": "imageType", "width": 224, "height": 224, "color_space": "RGB"}]
    assert report.classifier and report.outputs[0] == "classLabel" and len(report.outputs) == 2
    assert report.deployment_target == "iOS16" and report.specification_version == 7
    assert report.unsupported_ops == []
    # The export form: convolutions for the soft split, no gather-based im2col, no einsum.
    assert report.op_counts["conv"] >= 2 and not {"gather", "einsum"} & set(report.op_counts)
    meta = report.metadata
    assert meta["t2tedge.model"] == "t2t_vit_7" and meta["t2tedge.weights"].startswith("untrained")
    assert meta["t2tedge.precision"] == "fp16" and len(meta["t2tedge.class_order"].split(",")) == 1000
    spec = ct.models.MLModel(str(t2t7_packages["none"]), skip_model_load=True).get_spec()
    assert spec.description.metadata.license.startswith("BSD-3-Clause-Clear")
    assert spec.description.metadata.shortDescription.startswith("t2t_vit_7 (T2T-ViT)")


def test_imagenet_normalisation_is_a_first_op_only_when_std_differs_per_channel():
    from t2tedge.models import get_spec

    scale, bias, first_op = image_input_transform(get_spec("mobilenet_v2_100").preprocess)
    assert first_op is None and scale == pytest.approx(1 / 127.5) and bias == pytest.approx([-1.0] * 3)
    scale, bias, first_op = image_input_transform(get_spec("t2t_vit_7").preprocess)
    pixels = torch.full((1, 3, 1, 1), 128.0)
    expected = (128 / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(first_op(pixels * scale).flatten(), expected, atol=1e-6) and bias == [0.0] * 3


def test_compressed_sizes_against_fp16(t2t7_packages):
    fp16 = package_size(t2t7_packages["none"])
    assert package_size(t2t7_packages["w8"]) <= 0.55 * fp16
    assert package_size(t2t7_packages["palettize4"]) <= 0.30 * fp16
    assert inspect_package(t2t7_packages["w8"]).op_counts.get("constexpr_affine_dequantize", 0) > 20
    assert inspect_package(t2t7_packages["palettize4"]).op_counts.get("constexpr_lut_to_dense", 0) > 20


def test_logits_output_and_fp32(tmp_path):
    path = write_package("t2t_vit_7", None, tmp_path, progress=False,
                         options=CoreMLExportOptions(output="logits", precision="fp32", target="iOS17"))
    assert path.name == "t2t_vit_7_fp32_logits.mlpackage"
    report = inspect_package(path)
    assert report.outputs == ["logits"] and not report.classifier and report.deployment_target == "iOS17"


def test_t2t_vit_weights_round_trip_exactly_in_fp16(t2t7_packages):
    network, trip = roundtrip_network("t2t_vit_7", t2t7_packages["none"], None)
    # Every parameter that is stored as a tensor is found (the soft-split one-hot kernels are built in forward).
    assert trip.unmatched == [] and trip.loaded > 50 and trip.max_relative_error < 2e-3


@pytest.fixture(scope="module")
def mnv2_eval(val_dir, weights_dir):
    """Every 4th imagenet-val1300 image (325) for MobileNetV2 and the fp32 model's predictions on them, shared by
    the round-trip tests (the export form and the eager model give bit-identical logits on these images)."""
    from t2tedge.data import discover, load_batch
    from t2tedge.export.common import build_model
    from t2tedge.models import get_spec

    images, labels = load_batch(discover(val_dir)[::4], get_spec("mobilenet_v2_100").preprocess)
    images, labels = torch.from_numpy(images), torch.from_numpy(labels)
    checkpoint = weights_dir / "mobilenet_v2_1.0_imagenet_tfsame.pth"
    fp32 = _predict(build_model("mobilenet_v2_100", checkpoint)[0], images)
    return images, labels, checkpoint, fp32


def _predict(network: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Top-1 class per image, through the torch runtime (channels-last for MobileNetV2: these tests evaluate it
    on 1300 images four times)."""
    from t2tedge.runtimes.torch_eager import TorchRuntime

    runtime = TorchRuntime.load(network)
    assert runtime.describe().details["memory_format"] == "channels_last"
    return torch.cat([torch.from_numpy(runtime.run(images[start:start + 100].numpy()).argmax(1))
                      for start in range(0, len(images), 100)])


def _top1(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * float((predictions == labels).float().mean())


def _round_trip_top1(compress: str, mnv2_eval, tmp_path) -> tuple[float, float, float]:
    """(fp32 top-1, top-1 with the weights read back from a `compress` package, their prediction agreement) on the
    `mnv2_eval` images."""
    images, labels, checkpoint, fp32_predictions = mnv2_eval
    package = write_package("mobilenet_v2_100", checkpoint, tmp_path, progress=False,
                            options=CoreMLExportOptions(compress=compress))
    network, trip = roundtrip_network("mobilenet_v2_100", package, checkpoint)
    assert trip.unmatched == [] and trip.compressed > 30
    predictions = _predict(network, images)
    agreement = float((predictions == fp32_predictions).float().mean())
    return _top1(fp32_predictions, labels), _top1(predictions, labels), agreement


@pytest.mark.slow  # 325 val images through torch; w8 compression itself is checked on T2T-ViT-7's packages
def test_mobilenet_v2_w8_round_trip_accuracy(mnv2_eval, tmp_path):
    """Real weights on 325 imagenet-val1300 images: w8 read back from the package keeps fp32's top-1 within 2 images
    (measured: the same 80.31%) and 98% of its predictions (measured: 98.77%)."""
    fp32, w8, agreement = _round_trip_top1("w8", mnv2_eval, tmp_path)
    assert abs(w8 - fp32) <= 0.62 and agreement >= 0.98, (fp32, w8, agreement)


@pytest.mark.slow
def test_mobilenet_v2_palettize6_round_trip_does_not_collapse(mnv2_eval, tmp_path):
    fp32, palettized, _ = _round_trip_top1("palettize6", mnv2_eval, tmp_path)
    assert palettized > fp32 - 5.0, (fp32, palettized)  # reported in bench-coreml


@pytest.mark.slow  # w8a8 export, calibration and fidelity stay in the fast suite through T2T-ViT-7 below
def test_mobilenet_v2_w8a8_round_trip_within_half_a_point(mnv2_eval, sample_dir, tmp_path):
    """W8A8: torch runs the calibrated activation quantization with the package's int8 weights; the scales it
    uses are the ones stored in the package."""
    from t2tedge.export.common import build_model
    from t2tedge.models import get_spec

    images, labels, checkpoint, fp32_predictions = mnv2_eval
    package = write_package("mobilenet_v2_100", checkpoint, tmp_path, progress=False,
                            options=CoreMLExportOptions(compress="w8a8", target="iOS17", calib=str(sample_dir)))
    report = inspect_package(package)
    assert report.op_counts["quantize"] > 50 and report.op_counts["constexpr_affine_dequantize"] > 30
    assert report.unsupported_ops == [] and report.deployment_target == "iOS17"
    calibrated = calibrate_w8a8(build_model("mobilenet_v2_100", checkpoint)[0], get_spec("mobilenet_v2_100").preprocess,
                                sample_dir, 128, progress=False)
    ours = [float(v) for k, v in calibrated.state_dict().items() if k.endswith("_scale_0") and v.numel() == 1]
    stored = np.array(activation_scales(package), np.float32)
    assert len(ours) > 50 and all(np.isclose(stored, s, rtol=2e-3).any() for s in ours)
    network, trip = roundtrip_network("mobilenet_v2_100", package, checkpoint, network=calibrated)
    assert trip.unmatched == [] and trip.compressed > 30
    assert abs(_top1(_predict(network, images), labels) - _top1(fp32_predictions, labels)) <= 0.5


def _w8a8_subject_package(tmp_path, num_calib: int):
    from t2tedge.models import trained_subject

    subject = trained_subject("t2t_vit_7")
    if subject is None:
        pytest.skip("no trained T2T-ViT-7 subject (models/weights or ../shared imagenette2 missing)")
    options = CoreMLExportOptions(compress="w8a8", target="iOS17", calib=str(subject.train), num_calib=num_calib)
    package = write_package("t2t_vit_7", subject.checkpoint, tmp_path, options=options, progress=False,
                            num_classes=subject.num_classes)
    return subject, package


def test_t2t_vit_w8a8_keeps_the_performer_attention_float(tmp_path):
    """coremltools' activation quantizer turned the Performer's normaliser into inf (every later scale NaN) on
    the trained subject; with its attention kept float every activation scale of the package is finite."""
    _, package = _w8a8_subject_package(tmp_path, num_calib=16)
    report = inspect_package(package)
    assert report.op_counts["quantize"] > 20 and report.unsupported_ops == []
    assert np.isfinite(activation_scales(package)).all()


@pytest.mark.slow
def test_t2t_vit_w8a8_keeps_the_trained_subjects_predictions(tmp_path):
    """The w8a8 network, calibrated as the export calibrates it, agrees with fp32 on 200 Imagenette val images."""
    from t2tedge.data import discover, evenly_spread, load_batch
    from t2tedge.export.common import build_model
    from t2tedge.models import get_spec

    subject, package = _w8a8_subject_package(tmp_path, num_calib=64)
    assert np.isfinite(activation_scales(package)).all()
    pre = get_spec("t2t_vit_7").preprocess
    calibrated = calibrate_w8a8(build_model("t2t_vit_7", subject.checkpoint, num_classes=10)[0], pre, subject.train,
                                64, progress=False)
    fp32 = build_model("t2t_vit_7", subject.checkpoint, num_classes=10)[0].eval()
    images, _ = load_batch(evenly_spread(discover(subject.val, num_classes=10), 200), pre)
    with torch.no_grad():
        x = torch.from_numpy(images)
        agreement = float((calibrated(x).argmax(1) == fp32(x).argmax(1)).float().mean())
    assert agreement >= 0.95, agreement


def test_every_op_of_the_t2t_vit_export_form_stays_finite_in_fp16(val_dir):
    """Core ML computes in fp16: simulate that in torch and check every module's output on real images."""
    from conftest import real_images, trained_like_state_dict

    from t2tedge.models import create_model, get_spec

    model = create_model("t2t_vit_7", export_form=True)
    model.load_state_dict(trained_like_state_dict("t2t_vit_7"))
    images = real_images(val_dir, 8, get_spec("t2t_vit_7").preprocess)
    overflowed = []

    def check(module, _inputs, output):
        if isinstance(output, torch.Tensor) and not torch.isfinite(output).all():
            overflowed.append(type(module).__name__)

    half = model.half()
    hooks = [m.register_forward_hook(check) for m in half.modules()]
    with torch.no_grad():
        half(images.half())
    for hook in hooks:
        hook.remove()
    assert overflowed == []


def test_failed_export_leaves_nothing_and_keeps_the_previous_package(tmp_path, monkeypatch):
    first = write_package("t2t_vit_7", None, tmp_path, progress=False)
    before = sorted(p.relative_to(first) for p in first.rglob("*"))

    def broken_save(self, path):
        Path(path).mkdir()
        (Path(path) / "partial").write_text("half-written")
        raise OSError("disk full")

    monkeypatch.setattr(ct.models.MLModel, "save", broken_save)
    with pytest.raises(OSError):
        write_package("t2t_vit_7", None, tmp_path, progress=False)
    assert sorted(p.relative_to(first) for p in first.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == [first.name]
    with pytest.raises(OSError):
        write_package("t2t_vit_7", None, tmp_path, progress=False,
                      options=CoreMLExportOptions(compress="w8"))
    assert not (tmp_path / "t2t_vit_7_w8.mlpackage").exists()


@pytest.mark.parametrize("argv, code, message", [
    (["--deployment-target", "iOS9"], 2, "invalid choice: 'iOS9'"),
    (["--palettize", "3"], 2, "invalid choice: '3'"),
    (["--precision", "int8", "--deployment-target", "iOS16"], 2, "w8a8 needs activation quantization"),
    (["--precision", "int8", "--calib", "/nonexistent/calib"], 1, "calibration folder not found"),
])
def test_cli_errors_are_one_line(argv, code, message, tmp_path, capsys):
    try:
        returned = main(["export", "coreml", "t2t_vit_7", "--checkpoint", "random", "--out", str(tmp_path)] + argv)
    except SystemExit as exc:  # argparse's usage errors
        returned = exc.code
    assert returned == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert list(tmp_path.iterdir()) == []


def test_cli_empty_calibration_folder(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = ["export", "coreml", "mobilenet_v2_100", "--out", str(tmp_path / "out"), "--precision", "int8",
            "--calib", str(empty)]
    assert main(argv) == 1
    assert "no images (" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_official_tag_offline_names_the_url_and_checkpoint(tmp_path, monkeypatch, capsys):
    """`make export-coreml` exports T2T-ViT-7.official: offline, the one line says where and what else to pass."""
    import urllib.error
    import urllib.request

    monkeypatch.setenv("T2TEDGE_CACHE", str(tmp_path / "cache"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert main(["export", "coreml", "t2t_vit_7.official", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "71.7_T2T_ViT_7.pth.tar" in err and "CHECKPOINT=" in err and "WEIGHTS=random" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(sys.platform != "darwin", reason="Core ML predicts only on macOS")
def test_coreml_parity_with_torch_on_macos(val_dir):
    from t2tedge.harness.parity import run_parity

    report = run_parity("mobilenet_v2_100", ["torch", "coreml"], val_dir, n=16)
    assert report["passed"], report
