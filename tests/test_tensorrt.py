"""TensorRT engine builder and runtime adapter.

The modules import and fail clearly without TensorRT (tested everywhere); building and running engines
needs TensorRT 10 and an NVIDIA GPU, and those tests skip elsewhere with the reason.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from t2tedge.cli import main
from t2tedge.errors import RuntimeUnavailable, T2TEdgeError
from t2tedge.export import OnnxExportOptions, export_onnx
from t2tedge.export.tensorrt_engine import INSTALL_HINT, EngineOptions, build_engine
from t2tedge.onnx_graph import has_qdq
from t2tedge.quantize import preset
from t2tedge.quantize.pipeline import quantize_model

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
needs_tensorrt = pytest.mark.skipif(not HAS_TENSORRT, reason=INSTALL_HINT)


@pytest.fixture(scope="module")
def t2t7_dynbatch(tmp_path_factory):
    return export_onnx("t2t_vit_7", None, out_dir=tmp_path_factory.mktemp("trt"),
                       options=OnnxExportOptions(dynamic_batch=True))


def test_adapter_and_builder_import_without_tensorrt():
    from t2tedge.runtimes.base import available_runtimes
    from t2tedge.runtimes.tensorrt import TensorRT

    reason = available_runtimes()["tensorrt"]
    if HAS_TENSORRT:  # installed: usable, or unusable for another reason (no GPU), never "not installed"
        assert reason != INSTALL_HINT and TensorRT.unavailable_reason() == reason
    else:
        assert reason == INSTALL_HINT == TensorRT.unavailable_reason()


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_missing_tensorrt_is_one_clear_line_and_exit_2(t2t7_dynbatch, tmp_path, capsys):
    with pytest.raises(RuntimeUnavailable, match="TensorRT is not installed"):
        build_engine(t2t7_dynbatch, tmp_path / "x.engine")
    assert main(["export", "tensorrt", str(t2t7_dynbatch), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"t2tedge: error: {INSTALL_HINT}"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, message", [
    (dict(precision="int4"), "unknown TensorRT precision"),
    (dict(min_batch=4, opt_batch=2), "1 <= min <= opt <= max"),
    (dict(precision="fp16", calibration_cache="x.cache"), "only used with --precision int8"),
])
def test_engine_options_are_validated(kwargs, message):
    with pytest.raises(T2TEdgeError, match=message):
        EngineOptions(**kwargs)


def test_qdq_detection_picks_explicit_quantization(t2t7_dynbatch, weights_dir, sample_dir, tmp_path):
    assert not has_qdq(t2t7_dynbatch)
    qdq, _ = quantize_model("mobilenet_v2_100", preset("tensorrt"), tmp_path, calib=sample_dir, num_calib=8,
                            target="tensorrt", checkpoint=weights_dir / "mobilenet_v2_1.0_imagenet_tfsame.pth")
    assert has_qdq(qdq)


# --- with TensorRT 10 and a GPU ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gpu():
    from t2tedge.runtimes.tensorrt import TensorRT

    reason = TensorRT.unavailable_reason()
    if reason:
        pytest.skip(reason)
    return TensorRT


@needs_tensorrt
@pytest.mark.parametrize("precision, max_abs", [("fp32", 1e-3), ("fp16", 5e-2)])
def test_engine_matches_onnxruntime(gpu, t2t7_dynbatch, tmp_path, precision, max_abs):
    from t2tedge.runtimes.onnxruntime_cpu import OnnxRuntimeCPU

    timing = tmp_path / "timing.cache"
    result = build_engine(t2t7_dynbatch, tmp_path / f"t2t7_{precision}.engine",
                          EngineOptions(precision=precision, max_batch=8, timing_cache=str(timing)))
    assert result.engine_path.is_file() and timing.is_file() and result.log
    batch = np.random.default_rng(0).standard_normal((8, 3, 224, 224)).astype(np.float32)
    reference = OnnxRuntimeCPU.load(t2t7_dynbatch).run(batch)
    runtime = gpu.load(result.engine_path, engine_precision=precision)
    for size in (1, 8):
        out = runtime.run(batch[:size])
        assert np.isfinite(out).all() and np.abs(out - reference[:size]).max() < max_abs
    assert runtime.describe().details["last_gpu_ms"] > 0


@needs_tensorrt
def test_int8_from_qdq_and_from_calibration_cache(gpu, weights_dir, sample_dir, tmp_path):
    qdq, _ = quantize_model("mobilenet_v2_100", preset("tensorrt"), tmp_path, calib=sample_dir, num_calib=32,
                            target="tensorrt", checkpoint=weights_dir / "mobilenet_v2_1.0_imagenet_tfsame.pth")
    explicit = build_engine(qdq, tmp_path / "explicit.engine", EngineOptions(precision="int8"))
    assert explicit.explicit_quantization
    fp32 = export_onnx("mobilenet_v2_100", weights_dir / "mobilenet_v2_1.0_imagenet_tfsame.pth", out_dir=tmp_path,
                       options=OnnxExportOptions(dynamic_batch=True))
    implicit = build_engine(fp32, tmp_path / "implicit.engine",
                            EngineOptions(precision="int8", calibration_cache=str(qdq.with_suffix(".trt.cache"))))
    assert not implicit.explicit_quantization and implicit.engine_path.is_file()
    with pytest.raises(T2TEdgeError, match="int8 needs a QDQ model"):
        build_engine(fp32, tmp_path / "none.engine", EngineOptions(precision="int8"))
