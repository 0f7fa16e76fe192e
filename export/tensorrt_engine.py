"""TensorRT engine builder (TensorRT 10 Python API) from our ONNX exports.

fp32, fp16 (our export form keeps the Performer kernel finite in fp16), and int8 either from a QDQ
model (explicit quantization: the Q/DQ scales decide) or from our calibration cache (implicit mode,
the format `trtexec --int8 --calib=FILE` reads). Dynamic-batch graphs get an optimization profile;
a timing cache is reused across builds; the builder's log is captured and returned.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t2tedge.errors import RuntimeUnavailable, T2TEdgeError
from t2tedge.fileio import atomic_path, atomic_write_bytes
from t2tedge.onnx_graph import has_qdq

PRECISIONS = ("fp32", "fp16", "int8")
INSTALL_HINT = ("TensorRT is not installed: engines are built on an NVIDIA GPU with the tensorrt package (pip install "
                "--extra-index-url https://pypi.nvidia.com tensorrt); see docs/tensorrt.md")


def require_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise RuntimeUnavailable(INSTALL_HINT) from None
    return tensorrt


@dataclass(frozen=True)
class EngineOptions:
    precision: str = "fp16"
    calibration_cache: str | None = None  # implicit INT8 from our cache; None with int8 needs a QDQ model
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 8
    workspace_mib: int = 1024
    timing_cache: str | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise T2TEdgeError(f"unknown TensorRT precision {self.precision!r}; choose {', '.join(PRECISIONS)}")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise T2TEdgeError(f"batch profile needs 1 <= min <= opt <= max, got {self.min_batch}/{self.opt_batch}/"
                               f"{self.max_batch}")
        if self.calibration_cache and self.precision != "int8":
            raise T2TEdgeError("a calibration cache is only used with --precision int8")


@dataclass
class BuildResult:
    engine_path: Path
    log: list[str] = field(default_factory=list)
    explicit_quantization: bool = False


def _logger(trt, lines: list[str]):
    class CapturingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity, msg) -> None:
            lines.append(f"[{severity.name}] {msg}")

    return CapturingLogger()


def _cache_calibrator(trt, cache: bytes):
    """An INT8 calibrator that only hands TensorRT a precomputed cache (it never needs batches)."""

    class CacheCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: Any) -> None:
            return None

        def read_calibration_cache(self) -> bytes:
            return cache

        def write_calibration_cache(self, cache_bytes: Any) -> None:
            return None

    return CacheCalibrator()


def build_engine(onnx_path: str | os.PathLike, destination: str | os.PathLike,
                 options: EngineOptions = EngineOptions()) -> BuildResult:
    """Parse `onnx_path`, build a serialized engine, write it atomically to `destination`."""
    trt = require_tensorrt()
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise T2TEdgeError(f"ONNX file not found: {onnx_path}")
    explicit = has_qdq(onnx_path)
    if options.precision == "int8" and not explicit and not options.calibration_cache:
        raise T2TEdgeError("int8 needs a QDQ model (t2tedge quantize --target tensorrt) or --calib-cache FILE")
    lines: list[str] = []
    logger = _logger(trt, lines)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise T2TEdgeError(f"TensorRT's ONNX parser rejected {onnx_path.name}: {errors[:300]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    if options.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # layers left in float run in fp16 rather than fp32
    if options.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        if not explicit:
            config.int8_calibrator = _cache_calibrator(trt, Path(options.calibration_cache).read_bytes())
    image = network.get_input(0)
    if image.shape[0] == -1:
        profile = builder.create_optimization_profile()
        rest = tuple(image.shape)[1:]
        profile.set_shape(image.name, (options.min_batch, *rest), (options.opt_batch, *rest), (options.max_batch, *rest))
        config.add_optimization_profile(profile)
        if options.precision == "int8" and not explicit:
            config.set_calibration_profile(profile)
    timing_cache_path = Path(options.timing_cache) if options.timing_cache else None
    previous = timing_cache_path.read_bytes() if timing_cache_path and timing_cache_path.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(previous), ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        tail = " | ".join(line for line in lines if line.startswith(("[ERROR]", "[INTERNAL_ERROR]")))[-300:]
        raise T2TEdgeError(f"TensorRT could not build an engine from {onnx_path.name}: {tail or 'see the builder log'}")
    destination = Path(destination)
    with atomic_path(destination, suffix=".engine") as tmp:
        tmp.write_bytes(bytes(serialized))
    if timing_cache_path:
        atomic_write_bytes(timing_cache_path, bytes(config.get_timing_cache().serialize()))
    return BuildResult(engine_path=destination, log=lines, explicit_quantization=explicit)
