"""OpenVINO on the CPU: runs an `.onnx` file (fp32 or our INT8 QDQ) or OpenVINO IR (`.xml` + `.bin`) as it is.

The inference precision is always set explicitly. OpenVINO's CPU plugin otherwise picks bf16 on CPUs that
have it (AVX-512 BF16, AMX), which changes the numbers a user gets without saying so: T2T-ViT-7 logits moved
to 44 dB SQNR and MobileNetV2's to 20 dB against fp32 on an AMD EPYC with AVX-512 BF16 (docs/openvino.md).
"""

from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from t2tedge import metadata_keys as keys
from t2tedge.errors import BlocksUnavailable, T2TEdgeError, missing_package, native_message
from t2tedge.batching import run_in_chunks
from t2tedge.op_blocks import graph_module_paths, module_path
from t2tedge.runtimes.base import BlockOutputs, OpTrace, Runtime, RuntimeDescription, TracedOp, steady_runs, timed_runs

# OpenVINO's INFERENCE_PRECISION_HINT values, as the CLI's --precision-hint takes them.
PRECISION_HINTS = ("f32", "bf16", "f16")
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT")
# What describe() and parity call the arithmetic of a float graph under each hint.
_HINT_PRECISION = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}
SUFFIXES = (".onnx", ".xml")


def read_openvino_metadata(model) -> dict[str, str]:
    """The `t2tedge.*` metadata of an OpenVINO model: IR written by `t2tedge export openvino` keeps it under
    the rt_info section `t2tedge`; an ONNX file read by OpenVINO carries its metadata_props under `framework`."""
    meta: dict[str, str] = {}
    info = model.get_rt_info()
    for section, strip in (("framework", False), ("t2tedge", True)):
        if section not in info.keys():
            continue
        entries = model.get_rt_info([section])
        try:
            items = entries.astype(dict)
        except Exception:  # OVAny holding something other than a map
            continue
        for key, value in items.items():
            name = f"t2tedge.{key}" if strip else str(key)
            if name.startswith(keys.PREFIX):
                meta[name] = value.astype(str) if hasattr(value, "astype") else str(value)
    return meta


# Executed layers that only quantize, dequantize or convert a tensor.
CONVERT_LAYERS = ("Convert", "FakeQuantize")


def _layer_precision(name: str, layer_type: str, exec_type: str) -> str:
    """fp32, fp16, bf16, int8 or convert, from a performance counter's layer type and kernel (`jit_gemm_I8`,
    `brgconv_avx2_f32`)."""
    if layer_type in CONVERT_LAYERS or name.endswith(("QuantizeLinear", "DequantizeLinear")):
        return "convert"
    kernel = exec_type.lower()
    return ("int8" if kernel.endswith(("i8", "u8")) else "bf16" if kernel.endswith("bf16") else
            "fp16" if kernel.endswith("f16") else "fp32")


def _checked_path(artifact: str | os.PathLike) -> Path:
    path = Path(artifact)
    if path.suffix not in SUFFIXES:
        raise T2TEdgeError(f"OpenVINO runs .onnx files or IR (.xml + .bin), not {path.name}")
    if not path.is_file():
        raise T2TEdgeError(f"model file not found: {path}")
    if path.suffix == ".xml" and not path.with_suffix(".bin").is_file():
        raise T2TEdgeError(f"OpenVINO IR {path.name} needs its weights {path.with_suffix('.bin').name} beside it")
    return path


def _config(threads: int | None, precision_hint: str, performance_hint: str, perf_counters: bool) -> dict[str, Any]:
    if precision_hint not in PRECISION_HINTS:
        raise T2TEdgeError(f"unknown precision hint {precision_hint!r}; choose {', '.join(PRECISION_HINTS)}")
    if performance_hint not in PERFORMANCE_HINTS:
        raise T2TEdgeError(f"unknown performance hint {performance_hint!r}; choose {', '.join(PERFORMANCE_HINTS)}")
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision_hint, "PERFORMANCE_HINT": performance_hint}
    if perf_counters:
        config["PERF_COUNT"] = True
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


def _read_and_compile(path: Path, config: dict[str, Any], edit: Callable[[Any], None] | None = None):
    """(the model as read and edited, compiled on the CPU with `config`); `edit` changes the model first."""
    import openvino as ov

    core = ov.Core()
    try:
        model = core.read_model(str(path))
        if edit is not None:
            edit(model)
        return model, core.compile_model(model, "CPU", config)
    except T2TEdgeError:
        raise
    except Exception as exc:  # OpenVINO raises RuntimeError subclasses with multi-line texts
        raise T2TEdgeError(f"OpenVINO cannot load {path}: {native_message(exc)}") from None


class OpenVINO(Runtime):
    name = "openvino"
    consumes = "onnx"  # an .onnx file, or IR (.xml with its .bin beside it)
    op_profiler = "OpenVINO performance counters (PERF_COUNT), executed layers' real time"
    libraries = ("openvino",)

    def __init__(self, compiled, path: str, threads: int | None, precision_hint: str, performance_hint: str,
                 metadata: dict[str, str]) -> None:
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.path = path
        self.threads = threads
        self.precision_hint = precision_hint
        self.performance_hint = performance_hint
        self.metadata = metadata
        batch_dim = compiled.inputs[0].get_partial_shape()[0]
        self.fixed_batch = batch_dim.get_length() if batch_dim.is_static else None
        self.file_precision = metadata.get(keys.PRECISION, "fp32")
        self.inference_precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return missing_package("openvino", "'t2t-edge[openvino]'")

    @classmethod
    def load(cls, artifact: str | os.PathLike, *, threads: int | None = None, precision_hint: str = "f32",
             performance_hint: str = "LATENCY", perf_counters: bool = False, **options: Any) -> "OpenVINO":
        """`precision_hint`: f32 (default), bf16 or f16, the precision OpenVINO may run float ops in; an INT8
        file's quantized ops run in int8 under any hint. `threads`: INFERENCE_NUM_THREADS (None: all cores).
        `perf_counters`: compile with PERF_COUNT on (`trace_ops`)."""
        path = _checked_path(artifact)
        config = _config(threads, precision_hint, performance_hint, perf_counters)
        model, compiled = _read_and_compile(path, config)
        return cls(compiled, str(path), threads, precision_hint, performance_hint, read_openvino_metadata(model))

    @classmethod
    def probe_blocks(cls, artifact: Any, images: np.ndarray, *, family: str | None, threads: int | None = None,
                     precision_hint: str = "f32", performance_hint: str = "LATENCY", **options: Any) -> BlockOutputs:
        """Each block's output added to the model's results (`Model.add_outputs`) before it is compiled: an INT8
        file yields the float tensor its FakeQuantize reads. A result cannot be fused away, so layers around it may
        run other kernels than the file's own compile."""
        from t2tedge.op_blocks import probe_tensors

        path = _checked_path(artifact)
        config = _config(threads, precision_hint, performance_hint, False)
        found: dict[str, str] = {}

        def port_name(value) -> str:
            return f"{value.get_node().get_friendly_name()}:{value.get_index()}"

        def expose(model) -> None:
            ports = {}
            nodes = []
            for op in model.get_ordered_ops():
                kind = op.get_type_name()
                if kind in ("Constant", "Parameter", "Result"):
                    continue
                outputs = [port_name(value) for value in op.outputs()]
                ports.update(zip(outputs, op.outputs()))
                scoped = next((n for value in op.outputs() for n in sorted(value.get_names()) if n.startswith("/")), None)
                nodes.append([op.get_friendly_name(), module_path(scoped) if scoped else None,
                              [port_name(value) for value in op.input_values()], outputs, kind in CONVERT_LAYERS])
            # Our exports' tensor names keep the module scope. OpenVINO decomposes an op into unnamed layers that feed
            # the one keeping its name (LayerNormalization's MVN, Multiply, Add), or names a part after it
            # (/head/Gemm/WithoutBiases): a layer without a scoped tensor takes the scope of what it feeds, else of
            # its own name; the rest (None) join the block of what they read.
            readers: dict[str, list[int]] = {}
            for index, node in enumerate(nodes):
                for tensor in node[2]:
                    readers.setdefault(tensor, []).append(index)
            for node in reversed(nodes):
                if node[1] is None:
                    fed = [nodes[i][1] for tensor in node[3] for i in readers.get(tensor, ()) if nodes[i][1]]
                    node[1] = fed[0] if fed else module_path(node[0]) if node[0].startswith("/") else None
            results = [port_name(r.input_value(0)) for r in model.get_results()]
            probes = probe_tensors([tuple(n[:4]) for n in nodes], family, results, [n[0] for n in nodes if n[4]])
            found.update(probes)
            model.add_outputs([ports[tensor] for tensor in probes.values() if tensor not in results])

        model, compiled = _read_and_compile(path, config, expose)
        if not found:
            raise BlocksUnavailable(f"{path.name}: its layer names carry no module paths")
        slot = {port_name(r.input_value(0)): i for i, r in enumerate(model.get_results())}
        request = compiled.create_infer_request()
        runs = []
        for i in range(len(images)):
            result = request.infer({0: np.ascontiguousarray(images[i:i + 1], dtype=np.float32)})
            runs.append([np.array(result[slot[tensor]], dtype=np.float32, copy=True) for tensor in found.values()])
        outputs = {probe: np.concatenate([run[k] for run in runs]) for k, probe in enumerate(found)}
        return BlockOutputs("results added to the model before compiling (Model.add_outputs)", outputs)

    def _infer(self, batch: np.ndarray) -> list[np.ndarray]:
        # copy: the request reuses its output buffer on the next call.
        return [np.array(self.request.infer({0: batch})[0], dtype=np.float32, copy=True)]

    def run(self, batch: np.ndarray) -> np.ndarray:
        return run_in_chunks(self._infer, self.fixed_batch, np.ascontiguousarray(batch, dtype=np.float32))[0]

    @classmethod
    def trace_ops(cls, artifact: Any, batch: np.ndarray, *, runs: int, warmup: int, threads: int | None = None,
                  **options: Any) -> OpTrace:
        """Each executed layer's real time from the performance counters, read after every one of `runs` runs
        (the counters hold the last inference); its module path from its own name, else from the original layers
        OpenVINO fused into it."""
        instance = cls.load(artifact, threads=threads, perf_counters=True, **options)
        nodes = []
        for op in instance.compiled.get_runtime_model().get_ops():
            info = op.get_rt_info()
            original = info["originalLayersNames"].astype(str).split(",") if "originalLayersNames" in info.keys() else []
            producers = [value.get_node().get_friendly_name() for value in op.input_values()]
            # A layer OpenVINO made (MVN_523) is named by the original layers fused into it, else by its producers.
            named = module_path(op.get_friendly_name()) or next((p for p in map(module_path, original) if p), "")
            nodes.append((op.get_friendly_name(), named, producers, [op.get_friendly_name()]))
        paths = graph_module_paths(nodes)
        per_run: list[dict[str, float]] = []
        kinds: dict[str, tuple[str, str]] = {}

        def read_counters() -> None:
            layers: dict[str, float] = {}
            for layer in instance.request.get_profiling_info():
                if layer.status == layer.Status.EXECUTED:
                    layers[layer.node_name] = layers.get(layer.node_name, 0.0) + layer.real_time.total_seconds()
                    kinds[layer.node_name] = (layer.node_type, layer.exec_type)
            per_run.append(layers)

        wall = timed_runs(lambda: instance.run(batch), runs, warmup, after=read_counters)
        kept = steady_runs(wall)
        totals: dict[str, float] = collections.defaultdict(float)
        for i in kept:
            for name, seconds in per_run[i].items():
                totals[name] += seconds
        wall = [wall[i] for i in kept]
        ops = [TracedOp(name, kinds[name][0], _layer_precision(name, *kinds[name]), 1e3 * seconds / len(kept),
                        paths.get(name, module_path(name))) for name, seconds in totals.items()]
        return OpTrace(profiler=cls.op_profiler, ops=ops, wall_ms=1e3 * float(np.mean(wall)), runs=runs,
                       outside_ops="infer() overhead: setting the input, waiting for the stream, the output copy; "
                                   "the counters can also sum above the wall time (T2T-ViT-7 fp32, 2 threads: "
                                   "1.1-1.25x over 5-20 runs), which they would not if OpenVINO ran layers one by "
                                   "one and timed exactly the run just made")

    def execution_precisions(self) -> dict[str, int]:
        """How many executed layers of the compiled graph run in each precision (I8, FP32, BF16, ...)."""
        counts: collections.Counter[str] = collections.Counter()
        for op in self.compiled.get_runtime_model().get_ops():
            info = op.get_rt_info()
            if "layerType" not in info.keys() or info["layerType"].astype(str) in ("Input", "Output", "Const"):
                continue
            counts[info["runtimePrecision"].astype(str) if "runtimePrecision" in info.keys() else "?"] += 1
        return dict(sorted(counts.items()))

    def describe(self) -> RuntimeDescription:
        import openvino as ov

        precision = "int8" if self.file_precision == "int8" else _HINT_PRECISION.get(self.inference_precision, "fp32")
        return RuntimeDescription(
            runtime=self.name, version=ov.get_version().split("-")[0], precision=precision,
            device=ov.Core().get_property("CPU", "FULL_DEVICE_NAME"), threads=self.threads or os.cpu_count(),
            details={"format": "ir" if self.path.endswith(".xml") else "onnx",
                     "inference_precision_hint": self.precision_hint,
                     # What the plugin settled on: f32 where a bf16/f16 hint meets a CPU without those units.
                     "inference_precision": self.inference_precision,
                     "performance_hint": self.performance_hint,
                     "layers_by_precision": ",".join(f"{k} x{n}" for k, n in self.execution_precisions().items()),
                     "artifact": self.path})
