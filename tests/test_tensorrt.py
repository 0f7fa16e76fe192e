"""TensorRT engine builder and runtime adapter, for TensorRT 10 and 11.

Everywhere: the modules import and fail clearly without TensorRT; the builder's calls for fp32, fp16 and QDQ files are
checked against the recorded TensorRT 10.13 and 11.4 Python surfaces through a stand-in `tensorrt` module
(tests/tensorrt_standin.py), and the CLI's refusals run through it. Building and running real engines needs TensorRT
and an NVIDIA GPU; those tests skip elsewhere with the reason.
"""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from t2tedge.cli import main
from t2tedge.errors import RuntimeUnavailable, T2TEdgeError, UsageError
from t2tedge.export import OnnxExportOptions, export_onnx
from t2tedge.export.tensorrt_engine import INSTALL_HINT, EngineOptions, build_engine, engine_recipe
from t2tedge.onnx_graph import has_qdq, onnx_precision
from t2tedge.quantize import preset
from t2tedge.quantize.pipeline import QuantizeSettings, quantize_model
from tensorrt_standin import SURFACES, make_tensorrt


def _importable() -> bool:
    """Whether `import tensorrt` works (the bindings alone are found by find_spec but do not import)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


HAS_TENSORRT = _importable()
needs_tensorrt = pytest.mark.skipif(not HAS_TENSORRT, reason=INSTALL_HINT)
VERSIONS = tuple(SURFACES)


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


def test_qdq_detection_picks_explicit_quantization(t2t7_dynbatch, tmp_path):
    assert not has_qdq(t2t7_dynbatch)
    assert has_qdq(_tiny_onnx(tmp_path / "qdq.onnx", qdq=True))


# --- the builder against the recorded TensorRT 10.13 and 11.4 surfaces (stand-in module) ------------------------

def _tiny_onnx(path, *, fp16: bool = False, qdq: bool = False, dynamic: bool = True):
    """A one-Conv image model (batch symbolic when `dynamic`): fp32, fp16 (our converter), or QDQ int8 (symmetric)."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "w")]
    nodes, conv_in, conv_w = [], "image", "w"
    if qdq:
        inits += [numpy_helper.from_array(np.array(0.02, np.float32), "s"),
                  numpy_helper.from_array(np.array(0, np.int8), "z"),
                  numpy_helper.from_array(np.full(4, 0.01, np.float32), "ws"),
                  numpy_helper.from_array(np.zeros(4, np.int8), "wz"),
                  numpy_helper.from_array(np.clip(np.round(weight / 0.01), -127, 127).astype(np.int8), "wq")]
        nodes += [helper.make_node("QuantizeLinear", ["image", "s", "z"], ["image_q"]),
                  helper.make_node("DequantizeLinear", ["image_q", "s", "z"], ["image_dq"]),
                  helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w_dq"], axis=0)]
        conv_in, conv_w = "image_dq", "w_dq"
        inits = inits[1:]
    nodes.append(helper.make_node("Conv", [conv_in, conv_w], ["logits"], name="/conv/Conv", pads=[1, 1, 1, 1]))
    batch = "batch" if dynamic else 1
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 4, 8, 8])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    fp32 = path.with_name(path.stem + "_fp32.onnx") if fp16 else path
    onnx.save(proto, fp32)
    if fp16:
        from t2tedge.export.onnx_fp16 import write_fp16_onnx

        write_fp16_onnx(fp32, path, None)
    return path


@pytest.fixture
def standin(monkeypatch):
    """Install the stand-in `tensorrt` of a recorded version; returns its recorder."""
    def install(version: str):
        module, recorder = make_tensorrt(version)
        monkeypatch.setitem(sys.modules, "tensorrt", module)
        return recorder

    return install


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kind", ["fp32", "fp16", "int8"])
def test_builder_calls_only_the_recorded_surface(standin, tmp_path, version, kind):
    recorder = standin(version)
    source = _tiny_onnx(tmp_path / f"tiny_{kind}.onnx", fp16=kind == "fp16", qdq=kind == "int8")
    assert onnx_precision(source) == kind
    result = build_engine(source, tmp_path / "tiny.engine", EngineOptions(timing_cache=str(tmp_path / "timing")))
    assert recorder.violations == [] and recorder.unrecorded <= {"ILogger", "ITensor"}
    assert (tmp_path / "tiny.engine").read_bytes() == b"serialized-engine" and (tmp_path / "timing").is_file()
    assert recorder.parsed_precisions == [kind] and result.precision == kind
    flags = [args[0].name for args in recorder.args_of("IBuilderConfig.set_flag")]
    (network_flags,), = recorder.args_of("Builder.create_network")
    assert recorder.args_of("IOptimizationProfile.set_shape")[0][1:] == ((1, 3, 8, 8), (1, 3, 8, 8), (8, 3, 8, 8))
    if version.startswith("11"):
        # Strongly typed: the file's own types decide; TensorRT 11 has no precision flags to set.
        assert result.strongly_typed and network_flags == 1 << 0 and flags == []
    else:
        assert not result.strongly_typed and network_flags == 0
        assert flags == {"fp32": [], "fp16": ["FP16"], "int8": ["FP16", "INT8"]}[kind]
    assert "IBuilderConfig.int8_calibrator=" not in recorder.names()


def test_tensorrt_10_builds_an_fp32_file_in_fp16_and_implicit_int8_from_a_cache(standin, tmp_path):
    recorder = standin("10.13.3")
    source = _tiny_onnx(tmp_path / "tiny.onnx")
    assert build_engine(source, tmp_path / "a.engine", EngineOptions(precision="fp16")).precision == "fp16"
    cache = tmp_path / "tiny.trt10.cache"
    cache.write_text("TRT-101303-EntropyCalibration2\nimage: 3c23d70a\n")
    result = build_engine(source, tmp_path / "b.engine", EngineOptions(precision="int8", calibration_cache=str(cache)))
    assert result.precision == "int8" and not result.explicit_quantization
    assert "IBuilderConfig.int8_calibrator=" in recorder.names()
    assert "IBuilderConfig.set_calibration_profile" in recorder.names() and recorder.violations == []


def test_tensorrt_11_surface_lacks_what_it_removed_and_the_builder_refuses_it(standin, tmp_path):
    standin("11.4.0")
    import tensorrt as trt

    for removed in ("IInt8EntropyCalibrator2", "IInt8Calibrator"):
        with pytest.raises(AttributeError):
            getattr(trt, removed)
    for flag in ("FP16", "INT8"):
        with pytest.raises(AttributeError):
            getattr(trt.BuilderFlag, flag)
    assert int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) == 0
    with pytest.raises(UsageError, match="TensorRT 11 reads no calibration cache"):
        engine_recipe(11, "fp32", EngineOptions(precision="int8", calibration_cache="x.cache"))
    with pytest.raises(UsageError, match="strongly typed engines: this fp32 ONNX file gives an fp32 engine, not fp16"):
        build_engine(_tiny_onnx(tmp_path / "tiny.onnx"), tmp_path / "x.engine", EngineOptions(precision="fp16"))
    assert engine_recipe(10, "fp32", EngineOptions(precision="fp16")) == ("fp16", ["FP16"], False)


def test_calib_cache_on_tensorrt_11_is_one_line_and_exit_2(standin, t2t7_dynbatch, tmp_path, capsys):
    standin("11.4.0")
    cache = tmp_path / "c.trt10.cache"
    cache.write_text("TRT-101303-EntropyCalibration2\n")
    out = tmp_path / "out"
    assert main(["export", "tensorrt", str(t2t7_dynbatch), "--precision", "int8", "--calib-cache", str(cache),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TensorRT 11 reads no calibration cache" in err[0] and "--precision int8" in err[0]
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("version", VERSIONS)
def test_export_tensorrt_fp16_makes_the_fp16_onnx_first_and_keeps_it(standin, t2t7_dynbatch, sample_dir, tmp_path,
                                                                     capsys, version):
    recorder = standin(version)
    out = tmp_path / "out"
    assert main(["export", "tensorrt", str(t2t7_dynbatch), "--precision", "fp16", "--calib", str(sample_dir),
                 "--num-calib", "2", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["t2t_vit_7_dynbatch_fp16.engine", "t2t_vit_7_dynbatch_fp16.onnx"]
    assert onnx_precision(out / "t2t_vit_7_dynbatch_fp16.onnx") == "fp16"
    assert recorder.parsed_precisions == ["fp16"] and recorder.violations == []
    assert "built from t2t_vit_7_dynbatch_fp16.onnx, kept beside it" in capsys.readouterr().out


def test_runtime_reads_io_names_and_dtypes_from_the_engine(standin):
    import torch

    from t2tedge.runtimes.tensorrt import io_tensor_names, torch_dtype

    recorder = standin("11.4.0")
    recorder.engine_io_dtypes = ("HALF", "FLOAT")
    import tensorrt as trt

    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(b"serialized-engine")
    image, logits = io_tensor_names(engine)
    assert (image, logits) == ("image", "logits")
    assert torch_dtype(engine.get_tensor_dtype(image)) is torch.float16
    assert torch_dtype(engine.get_tensor_dtype(logits)) is torch.float32
    assert recorder.violations == []


# --- with TensorRT and a GPU ---------------------------------------------------------------------------------

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
    from t2tedge.export.tensorrt_engine import engine_source
    from t2tedge.runtimes.onnxruntime_cpu import OnnxRuntimeCPU

    timing = tmp_path / "timing.cache"
    source, wanted = engine_source(t2t7_dynbatch, precision, tmp_path)
    result = build_engine(source, tmp_path / f"t2t7_{precision}.engine",
                          EngineOptions(precision=wanted, max_batch=8, timing_cache=str(timing)))
    assert result.engine_path.is_file() and timing.is_file() and result.log and result.precision == precision
    batch = np.random.default_rng(0).standard_normal((8, 3, 224, 224)).astype(np.float32)
    reference = OnnxRuntimeCPU.load(t2t7_dynbatch).run(batch)
    runtime = gpu.load(result.engine_path)
    for size in (1, 8):
        out = runtime.run(batch[:size])
        assert np.isfinite(out).all() and np.abs(out - reference[:size]).max() < max_abs
    assert runtime.describe().details["last_gpu_ms"] > 0


@needs_tensorrt
def test_int8_from_qdq_and_on_tensorrt_10_from_calibration_cache(gpu, weights_dir, sample_dir, tmp_path):
    import tensorrt as trt

    from t2tedge.export.tensorrt_engine import tensorrt_major

    qdq, _ = quantize_model("mobilenet_v2_100", preset("tensorrt"), tmp_path, QuantizeSettings(calib=sample_dir, num_calib=32, target="tensorrt", checkpoint=weights_dir / "mobilenet_v2_1.0_imagenet_tfsame.pth"))
    explicit = build_engine(qdq, tmp_path / "explicit.engine")
    assert explicit.explicit_quantization and explicit.precision == "int8"
    fp32 = export_onnx("mobilenet_v2_100", weights_dir / "mobilenet_v2_1.0_imagenet_tfsame.pth", out_dir=tmp_path,
                       options=OnnxExportOptions(dynamic_batch=True))
    options = EngineOptions(precision="int8", calibration_cache=str(qdq.with_suffix(".trt10.cache")))
    if tensorrt_major(trt) >= 11:
        with pytest.raises(UsageError, match="reads no calibration cache"):
            build_engine(fp32, tmp_path / "implicit.engine", options)
    else:
        implicit = build_engine(fp32, tmp_path / "implicit.engine", options)
        assert not implicit.explicit_quantization and implicit.engine_path.is_file()
    with pytest.raises(T2TEdgeError, match="int8"):
        build_engine(fp32, tmp_path / "none.engine", EngineOptions(precision="int8"))
