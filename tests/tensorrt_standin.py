"""A stand-in `tensorrt` module that offers exactly a recorded TensorRT Python surface and records every call.

TensorRT does not run here (no NVIDIA libraries, no GPU), so our builder and runtime are checked against the API
facts read from the bindings wheels: ../shared/reference/tensorrt-11.4-python-api.txt (TensorRT 11.4) and
tests/data/tensorrt-10.13-python-api.txt (10.13, scripts/record_tensorrt10_surface.py). An attribute the recorded
version lacks raises AttributeError, as the real module would, and is listed in `violations`. Names the records do
not cover (ILogger, Logger, IProfiler, ITensor) are allowed, listed in `unrecorded`, so a test can name them.
"""

from __future__ import annotations

import ast
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from t2tedge.paths import shared_dir

ROOT = Path(__file__).resolve().parents[1]
SURFACES = {"11.4.0": shared_dir() / "reference" / "tensorrt-11.4-python-api.txt",
            "10.13.3": ROOT / "tests" / "data" / "tensorrt-10.13-python-api.txt"}
UNRECORDED = ("ILogger", "Logger", "IProfiler")


@dataclass
class Surface:
    members: dict[str, list[str]]  # enum or class -> its members, in recorded order (an enum's values)
    present: dict[str, bool]  # top-level names recorded as present (True) or absent (False)

    def is_enum(self, name: str) -> bool:
        return all(m == m.upper() for m in self.members[name])


def load_surface(path: Path) -> Surface:
    members: dict[str, list[str]] = {}
    present: dict[str, bool] = {}
    for line in path.read_text().splitlines():
        listed = re.match(r"^(\w+): (\[.*\]|ABSENT)$", line)
        flag = re.match(r"^(\w+) (True|False)$", line)
        if listed:
            present[listed.group(1)] = listed.group(2) != "ABSENT"
            if present[listed.group(1)]:
                members[listed.group(1)] = ast.literal_eval(listed.group(2))
        elif flag:
            present[flag.group(1)] = flag.group(2) == "True"
    return Surface(members, present)


@dataclass
class Recorder:
    version: str
    calls: list[tuple[str, tuple]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    unrecorded: set[str] = field(default_factory=set)
    parsed_precisions: list[str] = field(default_factory=list)  # what the ONNX parser was given
    engine_io_dtypes: tuple[str, str] = ("FLOAT", "FLOAT")  # what a deserialized engine declares

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def args_of(self, name: str) -> list[tuple]:
        return [args for called, args in self.calls if called == name]


class _Member:
    def __init__(self, enum: str, name: str, value: int) -> None:
        self.enum, self.name, self.value = enum, name, value

    def __int__(self) -> int:
        return self.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Member) and (other.enum, other.name) == (self.enum, self.name)

    def __hash__(self) -> int:
        return hash((self.enum, self.name))

    def __repr__(self) -> str:
        return f"{self.enum}.{self.name}"


def _enum(recorder: Recorder, name: str, members: list[str]):
    values = {m: _Member(name, m, i) for i, m in enumerate(members)}

    class Enum:
        def __getattr__(self, attribute: str):
            if attribute in values:
                return values[attribute]
            recorder.violations.append(f"{name}.{attribute}")
            raise AttributeError(f"type object 'tensorrt.{name}' has no attribute '{attribute}' (TensorRT "
                                 f"{recorder.version})")

    return Enum()


class _Strict:
    """An object of recorded class `kind`: only its recorded members exist; calls and settings are recorded."""

    def __init__(self, recorder: Recorder, kind: str, members: set[str], **impl: Any) -> None:
        object.__setattr__(self, "_recorder", recorder)
        object.__setattr__(self, "_kind", kind)
        object.__setattr__(self, "_members", members)
        object.__setattr__(self, "_impl", impl)
        object.__setattr__(self, "_values", {})

    def _check(self, attribute: str) -> None:
        if attribute not in self._members:
            self._recorder.violations.append(f"{self._kind}.{attribute}")
            raise AttributeError(f"'tensorrt.{self._kind}' object has no attribute '{attribute}' (TensorRT "
                                 f"{self._recorder.version})")

    def __getattr__(self, attribute: str):
        self._check(attribute)
        if attribute in self._values:
            return self._values[attribute]
        impl = self._impl.get(attribute)
        if impl is not None and not callable(impl):
            return impl
        name = f"{self._kind}.{attribute}"

        def call(*args: Any, **kwargs: Any):
            self._recorder.calls.append((name, args + tuple(sorted(kwargs.items()))))
            return impl(*args, **kwargs) if impl is not None else None

        return call

    def __setattr__(self, attribute: str, value: Any) -> None:
        self._check(attribute)
        self._recorder.calls.append((f"{self._kind}.{attribute}=", (value,)))
        self._values[attribute] = value


def make_tensorrt(version: str) -> tuple[types.ModuleType, Recorder]:
    """(the stand-in module for TensorRT `version`, its recorder). `version`: a key of SURFACES."""
    surface = load_surface(SURFACES[version])
    recorder = Recorder(version)
    module = types.ModuleType("tensorrt")
    module.__version__ = version
    # An enum's values are its members' recorded positions (STRONGLY_TYPED is NetworkDefinitionCreationFlag's 0).
    enums = {name: _enum(recorder, name, members) for name, members in surface.members.items()
             if surface.is_enum(name)}
    for name, enum in enums.items():
        setattr(module, name, enum)

    def strict(kind: str, **impl: Any) -> _Strict:
        return _Strict(recorder, kind, set(surface.members.get(kind, ())), **impl)

    for name, exists in surface.present.items():
        if exists and name not in surface.members:  # a class recorded only as present: a base to subclass
            setattr(module, name, type(name, (), {"__init__": lambda self: None}))

    def missing(name: str):
        if not name.startswith("__"):  # importers probe dunders such as __file__
            recorder.violations.append(name)
        raise AttributeError(f"module 'tensorrt' has no attribute '{name}' (TensorRT {version})")

    module.__getattr__ = missing

    class ILogger:
        def __init__(self) -> None:
            recorder.unrecorded.add("ILogger")

    class Logger:
        WARNING, INFO, ERROR = "WARNING", "INFO", "ERROR"

        def __init__(self, severity: str = "WARNING") -> None:
            recorder.unrecorded.add("Logger")

    class IProfiler:
        def __init__(self) -> None:
            recorder.unrecorded.add("IProfiler")

    module.ILogger, module.Logger, module.IProfiler = ILogger, Logger, IProfiler

    def tensor(name: str, shape: tuple) -> types.SimpleNamespace:
        recorder.unrecorded.add("ITensor")
        return types.SimpleNamespace(name=name, shape=shape)

    def network_for(flags: int) -> _Strict:
        box: dict[str, Any] = {}

        def get_input(index: int):
            return box["input"]

        network = strict("INetworkDefinition", get_input=get_input, num_inputs=1, num_outputs=1)
        object.__setattr__(network, "_box", box)
        return network

    def parser(network: _Strict, logger: Any) -> _Strict:
        def parse(data: bytes) -> bool:
            from t2tedge.onnx_graph import onnx_precision

            proto = onnx.load_from_string(bytes(data))
            recorder.parsed_precisions.append(onnx_precision(proto))
            dims = proto.graph.input[0].type.tensor_type.shape.dim
            network._box["input"] = tensor(proto.graph.input[0].name,
                                           tuple(d.dim_value if d.dim_value else -1 for d in dims))
            return True

        return strict("OnnxParser", parse=parse, num_errors=0, get_error=lambda i: "")

    module.OnnxParser = lambda network, logger: parser(network, logger)

    def builder(logger: Any) -> _Strict:
        def config() -> _Strict:
            def timing_cache(data: bytes = b"") -> _Strict:
                return strict("ITimingCache", serialize=lambda: b"timing-cache")

            cache: dict[str, Any] = {}

            def set_timing_cache(value, ignore_mismatch=False):
                cache["value"] = value
                return True

            return strict("IBuilderConfig", create_timing_cache=timing_cache, set_timing_cache=set_timing_cache,
                          get_timing_cache=lambda: cache.get("value"))

        return strict("Builder", create_network=network_for, create_builder_config=config,
                      create_optimization_profile=lambda: strict("IOptimizationProfile"),
                      build_serialized_network=lambda network, config: b"serialized-engine")

    module.Builder = builder

    def engine(data: bytes) -> _Strict:
        names = ("image", "logits")
        modes = {"image": enums["TensorIOMode"].INPUT, "logits": enums["TensorIOMode"].OUTPUT}
        dtypes = dict(zip(names, recorder.engine_io_dtypes))
        return strict("ICudaEngine", num_io_tensors=2, get_tensor_name=lambda i: names[i],
                      get_tensor_mode=lambda name: modes[name],
                      get_tensor_dtype=lambda name: getattr(enums["DataType"], dtypes[name]),
                      create_execution_context=lambda: strict("IExecutionContext"))

    module.Runtime = lambda logger: strict("Runtime", deserialize_cuda_engine=engine)
    return module, recorder
