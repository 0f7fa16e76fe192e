"""ONNX Runtime on the CPU execution provider."""

from __future__ import annotations

import bisect
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from t2tedge import metadata_keys as keys
from t2tedge.errors import BlocksUnavailable, RuntimeUnavailable, T2TEdgeError, first_line, missing_package
from t2tedge.ort_session import disabled_optimizers, run_in_fixed_batches
from t2tedge.op_blocks import module_path
from t2tedge.runtimes.base import BlockOutputs, OpTrace, Runtime, RuntimeDescription, TracedOp, steady_runs, timed_runs

OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
# ONNX Runtime's CPU-side execution providers: the default kernels, or XNNPACK (mobile builds ship it).
EXECUTION_PROVIDERS = {"cpu": "CPUExecutionProvider", "xnnpack": "XnnpackExecutionProvider"}
def _session_graph(artifact: str | os.PathLike,
                   unsigned_weights: bool) -> tuple[str | bytes, dict[str, int], bool, int]:
    """What the session loads (the artifact's path, or, for an INT8 graph on a CPU whose int8 dot products saturate,
    its graph with uint8 weights: exact, see t2tedge.ort_int8_weights), the contrib ops the file holds (what
    `t2tedge optimize` fused), whether the graph may be quantized (QDQ), and how many int8 weight tensors were moved.
    An .ort file is taken as it is, and counted as possibly quantized: onnx cannot read it, and the QDQ-only
    optimizers this turns off do nothing to a float graph."""
    if not str(artifact).endswith(".onnx"):
        return str(artifact), {}, True, 0
    import onnx

    from t2tedge.onnx_graph import contrib_op_counts, has_qdq
    from t2tedge.ort_int8_weights import make_int8_unsigned

    try:
        proto = onnx.load(str(artifact))
    except Exception:  # unreadable: let ORT name the problem when it loads the file itself
        return str(artifact), {}, False, 0
    quantized = has_qdq(proto)
    contrib = contrib_op_counts(proto)
    moved = make_int8_unsigned(proto) if quantized and unsigned_weights else 0
    return (proto.SerializeToString() if moved else str(artifact)), contrib, quantized, moved


# Ops that only move a tensor between precisions.
CONVERT_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Cast")


def _op_precision(op_type: str, input_types: list[dict[str, Any]]) -> str:
    """fp32, fp16, int8 or convert, from an ORT profile event's op and input element types."""
    if op_type in CONVERT_OPS:
        return "convert"
    types = {kind for entry in input_types for kind in entry}
    return "int8" if types & {"int8", "uint8"} else "fp16" if "float16" in types else "fp32"


class OnnxRuntimeCPU(Runtime):
    name = "onnxruntime"
    consumes = "onnx"
    op_profiler = "ONNX Runtime session profiling (SessionOptions.enable_profiling), node kernel times"
    libraries = ("onnxruntime",)

    def __init__(self, session, path: str, threads: int | None, optimization: str, provider: str = "cpu",
                 disabled: list[str] | None = None, fusions: dict[str, int] | None = None,
                 unsigned_weights: int = 0) -> None:
        self.session = session
        self.unsigned_weights = unsigned_weights
        self.disabled_optimizers = disabled or []
        self.fusions = fusions or {}
        self.provider = provider
        self.path = path
        self.threads = threads
        self.optimization = optimization
        self.input_name = session.get_inputs()[0].name
        batch_dim = session.get_inputs()[0].shape[0]
        self.fixed_batch = batch_dim if isinstance(batch_dim, int) else None
        meta = session.get_modelmeta().custom_metadata_map
        self.precision = meta.get(keys.PRECISION, "fp32")

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return missing_package("onnxruntime", "onnxruntime")

    @classmethod
    def load(cls, artifact: str | os.PathLike, *, threads: int | None = None, optimization: str = "all",
             provider: str = "cpu", unsigned_weights: bool | None = None, profile_dir: Path | None = None,
             **options: Any) -> "OnnxRuntimeCPU":
        """`artifact` is a .onnx or an ORT-format .ort file, run as it is on disk (ORT-only fusions are a file of their
        own: `t2tedge optimize`, export/ort_optimize.py); `provider` is cpu or xnnpack. `unsigned_weights`: give an
        INT8 graph's int8 weights to the session as uint8 (exact; t2tedge.ort_int8_weights); None: only on an x86 CPU
        without VNNI, where ORT's u8 x s8 kernels saturate (what the README tells users to do there too).
        `profile_dir`: turn ORT's profiler on, writing its trace and the optimized graph it runs there (`trace_ops`)."""
        import onnxruntime as ort

        from t2tedge.ort_int8_weights import int8_dot_may_saturate

        if provider not in EXECUTION_PROVIDERS:
            raise T2TEdgeError(f"unknown execution provider {provider!r}; choose {', '.join(EXECUTION_PROVIDERS)}")
        if EXECUTION_PROVIDERS[provider] not in ort.get_available_providers():
            raise RuntimeUnavailable(f"this onnxruntime build has no {EXECUTION_PROVIDERS[provider]} (the Android/iOS "
                                     f"packages have it); available: {', '.join(ort.get_available_providers())}")
        if optimization not in OPTIMIZATION_LEVELS:
            raise T2TEdgeError(f"unknown graph optimization level {optimization!r}; choose {', '.join(OPTIMIZATION_LEVELS)}")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[optimization]
        if threads:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        if profile_dir is not None:
            opts.enable_profiling = True
            opts.profile_file_prefix = str(profile_dir / "ort_profile")
            opts.optimized_model_filepath = str(profile_dir / "optimized.onnx")
        providers: list[Any] = ["CPUExecutionProvider"]
        if provider == "xnnpack":
            # XNNPACK keeps its own thread pool; ORT's intra-op pool then stays at one thread to avoid contention.
            providers.insert(0, ("XnnpackExecutionProvider", {"intra_op_num_threads": threads or os.cpu_count()}))
            opts.intra_op_num_threads = 1
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if unsigned_weights is None:
            unsigned_weights = provider == "cpu" and optimization != "disable" and int8_dot_may_saturate()
        model, fusions, quantized, moved = _session_graph(artifact, unsigned_weights)
        disabled = disabled_optimizers(threads, optimization, provider, quantized)
        try:
            session = ort.InferenceSession(model, opts, providers=providers, disabled_optimizers=disabled)
        except Exception as exc:  # ORT raises its own exception types for unreadable or invalid graphs
            raise T2TEdgeError(f"onnxruntime cannot load {artifact}: {first_line(exc)}") from None
        return cls(session, str(artifact), threads, optimization, provider, disabled, fusions, moved)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return run_in_fixed_batches(self.session, self.input_name, self.fixed_batch, batch)[0]

    @classmethod
    def trace_ops(cls, artifact: Any, batch: np.ndarray, *, runs: int, warmup: int, threads: int | None = None,
                  **options: Any) -> OpTrace:
        """Node kernel times from ORT's profiler over `runs` runs after `warmup` (each event placed in its run by
        the run's start; `steady_runs`); each node's module path from the optimized graph the session ran (fused
        nodes keep a scope in their outputs or inputs)."""
        import onnx

        from t2tedge.op_blocks import graph_module_paths

        with tempfile.TemporaryDirectory(prefix="t2tedge-ort-profile-") as tmp:
            instance = cls.load(artifact, threads=threads, profile_dir=Path(tmp), **options)
            wall = timed_runs(lambda: instance.run(batch), runs, warmup)
            events = json.loads(Path(instance.session.end_profiling()).read_text())
            optimized = Path(tmp) / "optimized.onnx"
            graph = onnx.load(str(optimized), load_external_data=False).graph if optimized.is_file() else None
        paths = graph_module_paths([(n.name, module_path(n.name), n.input, n.output) for n in graph.node]) if graph is not None else {}
        starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
        kept = steady_runs(wall)
        kept_starts = {starts[warmup + i] for i in kept} if len(starts) == warmup + runs else set()
        totals: dict[str, list[Any]] = {}
        for event in events:
            if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
                continue
            run_start = starts[bisect.bisect_right(starts, event["ts"]) - 1] if starts else None
            if kept_starts and run_start not in kept_starts:
                continue
            name, args = event["name"][:-len("_kernel_time")], event.get("args", {})
            entry = totals.setdefault(name, [args.get("op_name", "?"), _op_precision(args.get("op_name", ""),
                                                                                   args.get("input_type_shape", [])), 0])
            entry[2] += event["dur"]
        counted = len(kept) if kept_starts else warmup + runs
        ops = [TracedOp(name, op_type, precision, micros / counted / 1e3, paths.get(name, module_path(name)))
               for name, (op_type, precision, micros) in totals.items()]
        wall = [wall[i] for i in kept] if kept_starts else wall
        return OpTrace(profiler=cls.op_profiler, ops=ops, wall_ms=1e3 * float(np.mean(wall)), runs=runs,
                       outside_ops="session.run overhead: feeding inputs, copying outputs, the thread pool between "
                                   "kernels")

    @classmethod
    def probe_blocks(cls, artifact: Any, images: np.ndarray, *, family: str | None, threads: int | None = None,
                     **options: Any) -> BlockOutputs:
        """Each block's output made a graph output of a copy of the file (Polygraphy's `--onnx-outputs mark`): a
        quantized file yields the float tensor its quantizer reads. The copy runs with the file's own session
        options; a tensor made an output cannot be fused away, so kernels around it may differ from the file's."""
        import onnx

        from t2tedge.op_blocks import probe_tensors

        if not str(artifact).endswith(".onnx"):
            raise BlocksUnavailable(f"{Path(artifact).name}: block outputs are read from .onnx files, not ORT format")
        proto = onnx.load(str(artifact))
        nodes = [(n.name, module_path(n.name) if n.name.startswith("/") else None, n.input, n.output)
                 for n in proto.graph.node if n.op_type != "Constant"]
        quantizers = [n.name for n in proto.graph.node if n.op_type in CONVERT_OPS]
        probes = probe_tensors(nodes, family, [o.name for o in proto.graph.output], quantizers)
        if not probes:
            raise BlocksUnavailable(f"{Path(artifact).name}: its node names carry no module paths")
        known = {o.name for o in proto.graph.output}
        proto.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in probes.values() if t not in known)
        with tempfile.TemporaryDirectory(prefix="t2tedge-ort-blocks-") as tmp:
            marked = Path(tmp) / Path(artifact).name
            onnx.save(proto, str(marked))
            instance = cls.load(marked, threads=threads, **options)
            names = list(probes.values())
            runs = [instance.session.run(names, {instance.input_name: images[i:i + 1]}) for i in range(len(images))]
        outputs = {probe: np.concatenate([run[k] for run in runs]) for k, probe in enumerate(probes)}
        return BlockOutputs("graph outputs added to a copy of the file", outputs)

    def describe(self) -> RuntimeDescription:
        import onnxruntime as ort

        return RuntimeDescription(runtime=self.name, version=ort.__version__, precision=self.precision, device="cpu",
                                  threads=self.threads or os.cpu_count(),
                                  details={"execution_provider": EXECUTION_PROVIDERS[self.provider],
                                           "format": "ort" if self.path.endswith(".ort") else "onnx",
                                           "graph_optimization_level": self.optimization,
                                           "disabled_optimizers": ",".join(self.disabled_optimizers) or "none",
                                           "fusions": ",".join(f"{op} x{n}" for op, n in self.fusions.items()) or "none",
                                           "int8_weights": (f"uint8 in memory ({self.unsigned_weights} tensors; "
                                                            "u8 x u8 kernels, no int16 saturation)"
                                                            if self.unsigned_weights else "as in the file"),
                                           "artifact": self.path})
