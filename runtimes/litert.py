"""LiteRT (TensorFlow Lite) on the CPU through ai-edge-litert's interpreter, with XNNPACK, the kernel library
Android phones run, applied as LiteRT applies it by default. Runs a `.tflite` as it is on disk.

Takes NCHW float32 batches like every adapter and hands the file what it declares: NHWC or NCHW, float or
int8 (quantized with the input tensor's own scale and zero point). `describe()` reports how many ops ran
outside the XNNPACK delegate, and which.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import Any

import numpy as np

from t2tedge import metadata_keys as keys
from t2tedge.batching import run_in_chunks
from t2tedge.errors import BlocksUnavailable, T2TEdgeError, first_line, missing_package
from t2tedge.native_output import native_output_captured
from t2tedge.runtimes.base import BlockOutputs, Runtime, RuntimeDescription
from t2tedge.sidecar import read_sidecar

INSTALL = "'t2t-edge[litert]'"


def ops_outside_delegate(ops: list[dict[str, Any]], outputs: list[int]) -> collections.Counter[str]:
    """Op type -> count of the ops (`interpreter._get_ops_details()`) the interpreter runs itself, not inside a
    delegate, to compute the tensors `outputs`.

    The Python interpreter does not expose its execution plan, so it is rebuilt: walking back from the outputs, a
    tensor a DELEGATE node produces is computed by that node (whose inputs are walked next); any other tensor by
    the original op that produces it, which therefore runs outside every delegate."""
    by_delegate, by_op = {}, {}
    for op in ops:
        target = by_delegate if op["op_name"] == "DELEGATE" else by_op
        for tensor in op["outputs"]:
            target[tensor] = op
    pending = list(outputs)
    seen: set[int] = set()
    outside: dict[int, str] = {}
    while pending:
        tensor = pending.pop()
        if tensor < 0 or tensor in seen:
            continue
        seen.add(tensor)
        op = by_delegate.get(tensor) or by_op.get(tensor)
        if op is None:  # a graph input or a constant
            continue
        if op["op_name"] != "DELEGATE":
            outside[op["index"]] = op["op_name"]
        pending.extend(op["inputs"])
    return collections.Counter(outside.values())


def _dequantized(values: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    if np.dtype(detail["dtype"]) == np.float32:
        return np.array(values, dtype=np.float32, copy=True)
    scale, zero_point = detail["quantization"]
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)


class LiteRT(Runtime):
    name = "litert"
    consumes = "tflite"
    no_op_timing = ("ai-edge-litert's Python API (Interpreter, CompiledModel, tools/benchmark_litert_model.py) "
                    "reports no per-op times; LiteRT's C++ benchmark_model --enable_op_profiling does, on the device. "
                    "Recorded instead: XNNPACK delegation and the ops left outside it")

    def __init__(self, interpreter, path: str, threads: int | None, xnnpack: bool, metadata: dict[str, Any]) -> None:
        self.interpreter = interpreter
        self.path = path
        self.threads = threads
        self.xnnpack = xnnpack
        self.metadata = metadata
        self.input = interpreter.get_input_details()[0]
        self.output = interpreter.get_output_details()[0]
        shape = [int(d) for d in self.input["shape"]]
        self.channels_last = len(shape) == 4 and shape[3] == 3 and shape[1] != 3
        # A .tflite input has a fixed shape; other batch sizes run in chunks of it.
        self.fixed_batch = shape[0]
        ops = interpreter._get_ops_details()  # the public API lists no ops
        self.outside = ops_outside_delegate(ops, [d["index"] for d in interpreter.get_output_details()])
        self.delegate_partitions = sum(op["op_name"] == "DELEGATE" for op in ops)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return missing_package("ai_edge_litert", INSTALL)

    @classmethod
    def load(cls, artifact: str | os.PathLike, *, threads: int | None = None, xnnpack: bool = True,
             **options: Any) -> "LiteRT":
        """`threads`: the interpreter's and XNNPACK's thread count (None: all cores). `xnnpack=False` runs LiteRT's
        reference kernels, for comparison."""
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        path = Path(artifact)
        if path.suffix != ".tflite":
            raise T2TEdgeError(f"LiteRT runs .tflite files, not {path.name}")
        if not path.is_file():
            raise T2TEdgeError(f"model file not found: {path}")
        resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            with native_output_captured():  # "INFO: Created TensorFlow Lite XNNPACK delegate" on every load
                interpreter = Interpreter(model_path=str(path), num_threads=threads or os.cpu_count(),
                                          experimental_op_resolver_type=resolver)
                interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as exc:
            raise T2TEdgeError(f"LiteRT cannot load {path}: {first_line(exc)}") from None
        return cls(interpreter, str(path), threads, xnnpack, read_sidecar(path))

    def _to_input(self, batch: np.ndarray) -> np.ndarray:
        if self.channels_last:
            batch = batch.transpose(0, 2, 3, 1)
        dtype = np.dtype(self.input["dtype"])
        if dtype != np.float32:
            scale, zero_point = self.input["quantization"]
            info = np.iinfo(dtype)
            batch = np.clip(np.round(batch / scale) + zero_point, info.min, info.max)
        return np.ascontiguousarray(batch, dtype=dtype)

    def _from_output(self, logits: np.ndarray) -> np.ndarray:
        if np.dtype(self.output["dtype"]) != np.float32:
            scale, zero_point = self.output["quantization"]
            return ((logits.astype(np.float32) - zero_point) * scale).astype(np.float32)
        return np.array(logits, dtype=np.float32, copy=True)

    def _infer(self, batch: np.ndarray) -> list[np.ndarray]:
        self.interpreter.set_tensor(self.input["index"], batch)
        self.interpreter.invoke()
        return [self._from_output(self.interpreter.get_tensor(self.output["index"]))]

    def run(self, batch: np.ndarray) -> np.ndarray:
        return run_in_chunks(self._infer, self.fixed_batch, self._to_input(np.asarray(batch, dtype=np.float32)))[0]

    @classmethod
    def probe_blocks(cls, artifact: Any, images: np.ndarray, *, family: str | None, threads: int | None = None,
                     **options: Any) -> BlockOutputs:
        """Every tensor kept (`experimental_preserve_all_tensors`) and each block's output read back, dequantized
        with its own scale and zero point where it is int8. Runs LiteRT's built-in kernels: XNNPACK, the delegate
        the file runs with otherwise, keeps its intermediate tensors to itself."""
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        from t2tedge.op_blocks import probe_tensors, scope_path

        path = Path(artifact)
        try:
            with native_output_captured():
                interpreter = Interpreter(model_path=str(path), num_threads=threads or os.cpu_count(),
                                          experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                                          experimental_preserve_all_tensors=True)
                interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as exc:
            raise T2TEdgeError(f"LiteRT cannot load {path}: {first_line(exc)}") from None
        details = {t["index"]: t for t in interpreter.get_tensor_details()}
        ops = interpreter._get_ops_details()  # the public API lists no ops
        made = {tensor for op in ops for tensor in op["outputs"]}
        nodes = []
        for op in ops:
            inputs = [i for i in op["inputs"] if i >= 0]
            # An op's scope is in its output's name; the last layer's output is named for serving, its weights are not.
            own = next((scope_path(details[t]["name"], family) for t in op["outputs"]
                        if scope_path(details[t]["name"], family) is not None), None)
            if own is None:
                own = next((p for p in (scope_path(details[t]["name"], family) for t in inputs if t not in made) if p), None)
            nodes.append((str(op["index"]), own, [str(i) for i in inputs], [str(o) for o in op["outputs"]]))
        converts = [str(op["index"]) for op in ops if op["op_name"] in ("QUANTIZE", "DEQUANTIZE")]
        outputs_of = [str(d["index"]) for d in interpreter.get_output_details()]
        probes = probe_tensors(nodes, family, outputs_of, converts)
        if not probes:
            raise BlocksUnavailable(f"{path.name}: its tensor names carry no module scopes")
        instance = cls(interpreter, str(path), threads, False, read_sidecar(path))
        runs = []
        for i in range(len(images)):
            interpreter.set_tensor(instance.input["index"], instance._to_input(images[i:i + 1]))
            interpreter.invoke()
            runs.append([_dequantized(interpreter.get_tensor(int(t)), details[int(t)]) for t in probes.values()])
        outputs = {probe: np.concatenate([run[k] for run in runs]) for k, probe in enumerate(probes)}
        return BlockOutputs("preserved intermediate tensors (experimental_preserve_all_tensors), LiteRT's built-in "
                            "kernels: XNNPACK keeps its intermediates to itself", outputs)

    def describe(self) -> RuntimeDescription:
        from ai_edge_litert import __version__ as version  # type: ignore[attr-defined]

        precision = self.metadata.get(keys.PRECISION) or (
            "int8" if np.dtype(self.input["dtype"]) != np.float32 else "fp32")
        return RuntimeDescription(
            runtime=self.name, version=version, precision=precision,
            device="CPU, XNNPACK" if self.xnnpack else "CPU, reference kernels",
            threads=self.threads or os.cpu_count(),
            details={"input_layout": "NHWC" if self.channels_last else "NCHW",
                     "input_dtype": np.dtype(self.input["dtype"]).name,
                     "delegate_partitions": self.delegate_partitions,
                     "ops_outside_delegate": sum(self.outside.values()),
                     "ops_outside_delegate_by_type": ",".join(f"{k} x{n}" for k, n in sorted(self.outside.items())),
                     "artifact": self.path})
