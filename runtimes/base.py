"""The one small interface every runtime adapter implements, and the registry that finds them.

An adapter is one module in this package that defines a `Runtime` subclass with a `name`. It is
discovered on first use; an adapter whose library is missing reports why instead of failing import.
"""

from __future__ import annotations

import importlib
import pkgutil
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np

from t2tedge.errors import BlocksUnavailable, OpTimingUnavailable, RuntimeUnavailable, T2TEdgeError


@dataclass
class RuntimeDescription:
    runtime: str
    version: str
    precision: str
    device: str
    threads: int | None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TracedOp:
    """One op of a run as the runtime's own profiler reports it: `ms` is its mean time per run, `module_path` the
    model module it came from ("" when nothing names one), `precision` fp32, fp16, int8 or convert (a quantize,
    dequantize or type conversion)."""

    name: str
    op_type: str
    precision: str
    ms: float
    module_path: str = ""


@dataclass
class OpTrace:
    """What `Runtime.trace_ops` measured: every op, the mean wall time of the same runs, the runtime's own memory
    figure where it reports one, and what the time outside the ops is."""

    profiler: str
    ops: list[TracedOp]
    wall_ms: float
    runs: int
    arena_mb: float | None = None
    outside_ops: str = ""


@dataclass
class BlockOutputs:
    """What `Runtime.probe_blocks` read from one file: each block's output for every image (probe path, as
    `t2tedge.op_blocks.probe_of` names it -> array with the images first), in the order the model runs them;
    `hidden`: blocks in the file the runtime does not expose, and why; `means`: how the outputs were read."""

    means: str
    outputs: dict[str, np.ndarray]
    hidden: dict[str, str] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # every block, exposed or hidden, as the model runs them

    def blocks(self) -> list[str]:
        return self.order or list(self.outputs)


def timed_runs(run: Callable[[], Any], runs: int, warmup: int,
               after: Callable[[], None] | None = None) -> list[float]:
    """Seconds of each of `runs` calls of `run` after `warmup` untimed ones, for an op trace (harness.latency
    times the steady state); `after` runs after each timed call, outside its time (reading per-run counters)."""
    for _ in range(warmup):
        run()
    wall = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        wall.append(time.perf_counter() - start)
        if after is not None:
            after()
    return wall


def steady_runs(wall: list[float], keep: float = 0.9) -> list[int]:
    """The runs an op trace averages over: all but the slowest tenth by wall time. A thread descheduled between two
    ops (a virtual machine's neighbour) lengthens the run's wall time and no op's, which would read as time
    outside the ops."""
    order = sorted(range(len(wall)), key=wall.__getitem__)
    return sorted(order[:max(1, round(len(wall) * keep))])


class Runtime(ABC):
    """Load an artifact, run a batch (numpy NCHW float32 in, numpy logits out), describe itself."""

    name: ClassVar[str]
    # What the adapter loads: "torch" (an nn.Module), "onnx" (a .onnx path) or "coreml" (.mlpackage).
    consumes: ClassVar[str]
    # The runtime's own per-op profiler that `trace_ops` reads, or None; then `no_op_timing` says what it lacks.
    op_profiler: ClassVar[str | None] = None
    no_op_timing: ClassVar[str] = "this runtime reports no per-op times"
    # The modules its load imports: `t2tedge profile --ops` times their import apart from the file's load.
    libraries: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None when usable here; otherwise one line saying why not."""
        return None

    @classmethod
    @abstractmethod
    def load(cls, artifact: Any, *, threads: int | None = None, **options: Any) -> "Runtime": ...

    @abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def describe(self) -> RuntimeDescription: ...

    @classmethod
    def trace_ops(cls, artifact: Any, batch: np.ndarray, *, runs: int, warmup: int, threads: int | None = None,
                  **options: Any) -> OpTrace:
        """Load `artifact` with the runtime's profiler on, run `batch` `warmup` + `runs` times, and read every op's
        time over the `runs`. Adapters with an `op_profiler` override it."""
        raise OpTimingUnavailable(f"{cls.name}: {cls.no_op_timing}")

    @classmethod
    def probe_blocks(cls, artifact: Any, images: np.ndarray, *, family: str | None, threads: int | None = None,
                     **options: Any) -> BlockOutputs:
        """Run `images` (NCHW float32, one at a time) through `artifact` with the output of every model block
        exposed by the runtime's own means. Adapters that can override it."""
        raise BlocksUnavailable(f"{cls.name} exposes no block outputs")


_ADAPTERS: dict[str, type[Runtime]] = {}
# Adapter modules that failed to import here (module name -> why), reported instead of crashing discovery.
_BROKEN: dict[str, str] = {}


def _discover() -> None:
    if _ADAPTERS:
        return
    import t2tedge.runtimes as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name == "base":
            continue
        try:
            module = importlib.import_module(f"{package.__name__}.{info.name}")
        except ImportError as exc:  # e.g. torch absent on a device that only profiles ONNX / Core ML artifacts
            _BROKEN[info.name] = f"adapter {info.name} cannot be imported here: {exc}"
            continue
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, Runtime) and value is not Runtime and getattr(value, "name", None):
                _ADAPTERS[value.name] = value


def available_runtimes() -> dict[str, str | None]:
    """Every known adapter name -> None if usable, else the reason it is not."""
    _discover()
    reasons = {name: cls.unavailable_reason() for name, cls in _ADAPTERS.items()}
    return dict(sorted({**_BROKEN, **reasons}.items()))


def get_runtime(name: str) -> type[Runtime]:
    _discover()
    if name not in _ADAPTERS:
        broken = f"; not importable here: {'; '.join(_BROKEN.values())}" if _BROKEN else ""
        raise T2TEdgeError(f"unknown runtime {name!r}; known: {', '.join(sorted(_ADAPTERS))}{broken}")
    cls = _ADAPTERS[name]
    reason = cls.unavailable_reason()
    if reason:
        raise RuntimeUnavailable(reason)
    return cls
