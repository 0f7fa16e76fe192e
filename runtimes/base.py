"""The one small interface every runtime adapter implements, and the registry that finds them.

An adapter is one module in this package that defines a `Runtime` subclass with a `name`. It is
discovered on first use; an adapter whose library is missing reports why instead of failing import.
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np

from t2tedge.errors import RuntimeUnavailable, T2TEdgeError


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


class Runtime(ABC):
    """Load an artifact, run a batch (numpy NCHW float32 in, numpy logits out), describe itself."""

    name: ClassVar[str]
    # What the adapter loads: "torch" (an nn.Module), "onnx" (a .onnx path) or "coreml" (.mlpackage).
    consumes: ClassVar[str]

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
