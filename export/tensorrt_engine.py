"""TensorRT engine builder from our ONNX files, for TensorRT 10 and TensorRT 11.

TensorRT 11 builds strongly typed engines only: every layer runs in the types the ONNX file holds (an fp32 file
gives an fp32 engine, our FP16 ONNX an fp16 one, a QDQ file int8 where its Q/DQ say), with no precision flags
and no implicit INT8 calibration (`BuilderFlag.FP16/INT8`, the `IInt8*Calibrator`s and calibration profiles are
gone). So the precision is chosen by which ONNX file is built (`t2tedge export tensorrt --precision` makes it).
TensorRT 10 keeps its weakly typed build: FP16/INT8 builder flags, and implicit INT8 from our calibration cache.
Dynamic-batch graphs get an optimization profile; a timing cache is reused across builds; the builder's log is
captured and returned.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t2tedge.errors import RuntimeUnavailable, T2TEdgeError, UsageError
from t2tedge.fileio import atomic_path, atomic_write_bytes
from t2tedge.onnx_graph import onnx_precision

PRECISIONS = ("fp32", "fp16", "int8")
INSTALL_HINT = ("TensorRT is not installed: engines are built on an NVIDIA GPU with the tensorrt package (pip install "
                "--extra-index-url https://pypi.nvidia.com tensorrt); see docs/tensorrt.md")
NO_CALIBRATION_CACHE = ("TensorRT {version} reads no calibration cache (TensorRT 11 removed implicit INT8): build "
                        "the QDQ file instead, t2tedge export tensorrt MODEL --precision int8 (or t2tedge quantize "
                        "--target tensorrt, then export tensorrt FILE_int8_tensorrt.onnx)")
STRONGLY_TYPED_SINCE = 11


def tensorrt_major(trt: Any) -> int:
    """The major version of an imported tensorrt module."""
    try:
        return int(str(trt.__version__).split(".")[0])
    except (AttributeError, ValueError):
        raise T2TEdgeError(f"cannot read the TensorRT version from {getattr(trt, '__version__', None)!r}") from None


def require_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise RuntimeUnavailable(INSTALL_HINT) from None
    return tensorrt


@dataclass(frozen=True)
class EngineOptions:
    """`precision`: the engine's, None for the file's own. TensorRT 11 builds only the file's own; TensorRT 10 may
    also run an fp32 file in fp16 (builder flag) or int8 from `calibration_cache` (implicit INT8)."""

    precision: str | None = None
    calibration_cache: str | None = None  # TensorRT 10 only: implicit INT8 from our cache
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 8
    workspace_mib: int = 1024
    timing_cache: str | None = None

    def __post_init__(self) -> None:
        if self.precision is not None and self.precision not in PRECISIONS:
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
    precision: str = "fp32"
    strongly_typed: bool = False


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


def engine_recipe(major: int, held: str, options: EngineOptions) -> tuple[str, list[str], bool]:
    """(engine precision, builder flags to set, whether the network is strongly typed) for a file of precision
    `held` on TensorRT `major`; refuses what that version cannot build, in one line."""
    precision = options.precision or held
    if major >= STRONGLY_TYPED_SINCE:
        if options.calibration_cache:
            raise UsageError(NO_CALIBRATION_CACHE.format(version=major))
        if precision != held:
            make = {"fp16": "t2tedge export tensorrt FILE.onnx --precision fp16 makes the FP16 ONNX first",
                    "int8": "int8 takes a QDQ file: t2tedge export tensorrt MODEL --precision int8"}.get(
                        precision, "export the fp32 ONNX: t2tedge export onnx MODEL")
            raise UsageError(f"TensorRT {major} builds strongly typed engines: this {held} ONNX file gives an {held} "
                             f"engine, not {precision} ({make})")
        return precision, [], True
    if held == "int8" and precision != "int8":
        raise UsageError(f"a QDQ (int8) ONNX file builds an int8 engine, not {precision}")
    if held == "fp16" and precision == "fp32":
        raise UsageError("an fp16 ONNX file builds an fp16 engine; give the fp32 ONNX for fp32")
    if precision == "int8" and held != "int8" and not options.calibration_cache:
        raise UsageError("int8 needs a QDQ model (t2tedge quantize --target tensorrt) or --calib-cache FILE")
    flags = {"fp32": [], "fp16": ["FP16"], "int8": ["FP16", "INT8"]}[precision]  # float layers of int8 in fp16
    return precision, flags, False


def build_engine(onnx_path: str | os.PathLike, destination: str | os.PathLike,
                 options: EngineOptions = EngineOptions()) -> BuildResult:
    """Parse `onnx_path`, build a serialized engine, write it atomically to `destination`."""
    trt = require_tensorrt()
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise T2TEdgeError(f"ONNX file not found: {onnx_path}")
    held = onnx_precision(onnx_path)
    major = tensorrt_major(trt)
    precision, flags, strongly_typed = engine_recipe(major, held, options)
    lines: list[str] = []
    logger = _logger(trt, lines)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed
                                     else 0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise T2TEdgeError(f"TensorRT's ONNX parser rejected {onnx_path.name}: {errors[:300]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    for flag in flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    implicit = precision == "int8" and held != "int8"
    if implicit:
        config.int8_calibrator = _cache_calibrator(trt, Path(options.calibration_cache).read_bytes())
    image = network.get_input(0)
    if image.shape[0] == -1:
        profile = builder.create_optimization_profile()
        rest = tuple(image.shape)[1:]
        profile.set_shape(image.name, (options.min_batch, *rest), (options.opt_batch, *rest), (options.max_batch, *rest))
        config.add_optimization_profile(profile)
        if implicit:
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
    return BuildResult(engine_path=destination, log=lines, explicit_quantization=held == "int8",
                       precision=precision, strongly_typed=strongly_typed)


def engine_source(onnx_path: Path, precision: str | None, workdir: Path) -> tuple[Path, str | None]:
    """(the ONNX file to build, the engine precision to ask for) when an engine of `precision` is wanted from
    `onnx_path`: an fp32 file asked for fp16 is converted to our FP16 ONNX in `workdir` first (initializers checked;
    `t2tedge export tensorrt` also checks activations on real images), since TensorRT 11 takes precision from the
    file. Everything else is built as it is (and refused by `engine_recipe` where it cannot be)."""
    from t2tedge.export.onnx_fp16 import fp16_name, write_fp16_onnx

    if precision == "fp16" and onnx_precision(onnx_path) == "fp32":
        converted = workdir / fp16_name(onnx_path)
        write_fp16_onnx(onnx_path, converted, None)
        return converted, "fp16"
    return onnx_path, precision
