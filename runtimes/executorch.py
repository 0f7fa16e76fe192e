"""ExecuTorch on the CPU through its Python runtime: the `.pte` program as it is on disk, with the XNNPACK kernels
that ExecuTorch runs on Android and iOS.

Inputs are handed over as contiguous tensors: the Python runtime reads a non-contiguous tensor (a transposed image,
say) as if it were contiguous, silently. Programs have a static batch (ours: 1); larger batches run in chunks of it.
`describe()` reads the program's instructions: how many calls go to a delegate and how many kernels ExecuTorch runs
itself (outside every delegate). Threads: the runtime has one thread pool per process; `load(threads=N)` resizes it.
"""

from __future__ import annotations

import collections
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from t2tedge import metadata_keys as keys
from t2tedge.batching import run_in_chunks
from t2tedge.errors import BlocksUnavailable, T2TEdgeError, first_line, missing_package
from t2tedge.native_output import native_output_captured
from t2tedge.runtimes.base import BlockOutputs, OpTrace, Runtime, RuntimeDescription, TracedOp, steady_runs, timed_runs
from t2tedge.sidecar import read_sidecar

INSTALL = "'t2t-edge[executorch]'"


def program_instructions(path: str | os.PathLike) -> dict[str, Any]:
    """The delegates a program calls (backend -> delegate calls) and the kernels it runs itself (op -> count), read
    from the flatbuffer as it is on disk."""
    from executorch.exir._serialize._program import deserialize_pte_binary
    from executorch.exir.schema import DelegateCall, KernelCall

    try:
        program = deserialize_pte_binary(Path(path).read_bytes()).program
    except Exception as exc:  # the flatbuffer reader raises whatever a malformed buffer trips
        raise T2TEdgeError(f"ExecuTorch cannot read {Path(path).name}: not a .pte program ({type(exc).__name__})") from None
    plan = next((p for p in program.execution_plan if p.name == "forward"), program.execution_plan[0])
    calls: collections.Counter[str] = collections.Counter()
    kernels: collections.Counter[str] = collections.Counter()
    for chain in plan.chains:
        for instruction in chain.instructions:
            args = instruction.instr_args
            if isinstance(args, DelegateCall):
                calls[plan.delegates[args.delegate_index].id] += 1
            elif isinstance(args, KernelCall):
                op = plan.operators[args.op_index]
                kernels[f"{op.name}.{op.overload}" if op.overload else op.name] += 1
    return {"delegate_calls": dict(calls), "kernels_outside_delegate": dict(kernels)}


# ExecuTorch's profiler names XNNPACK's operators by type ("Fully Connected (NC, QS8, QC8W) GEMM #12"); a program
# keeps no node names, so events are matched, in order, to the ops the export stamped (`t2tedge.op_paths`) through
# the XNNPACK operator each edge op becomes.
_XNNPACK_OPERATOR = {
    "aten.convolution.default": "Convolution", "aten.linear.default": "Fully Connected",
    "aten.addmm.default": "Fully Connected", "aten.mm.default": "Fully Connected",
    "aten.bmm.default": "Batch Matrix Multiply", "aten.view_copy.default": "Static Reshape",
    "aten.squeeze_copy.dims": "Static Reshape", "aten.unsqueeze_copy.default": "Static Reshape",
    "aten.permute_copy.default": "Transpose", "aten.add.Tensor": "Add", "aten.sub.Tensor": "Subtract",
    "aten.mul.Tensor": "Multiply", "aten.div.Tensor": "Divide", "aten.slice_copy.Tensor": "Slice",
    "aten.rsqrt.default": "Reciprocal Square Root", "aten._softmax.default": "Softmax", "aten.exp.default": "Exp",
    "aten.max.dim": "Max Pooling", "aten.clamp.default": "Clamp", "aten.hardtanh.default": "Clamp",
    "aten.cat.default": "Copy", "dim_order_ops._clone_dim_order.default": "Copy",
    "aten.mean.dim": "Global Average Pooling", "aten.avg_pool2d.default": "Average Pooling",
}
# XNNPACK runs a 1x1 convolution as a Fully Connected operator: both match either.
_DENSE = ("Convolution", "Fully Connected")
# Edge ops XNNPACK folds into the operators around them (weight dequantization, q/dq pairs between int8
# operators, zero pads); left out of the matching. Convert events that remain take the path of the op before.
_FOLDED = ("quantized_decomposed.", "aten.constant_pad_nd")
# ETDump events that span others (a whole run, a delegate call) or happen at load: not ops.
_SPANS = ("Method::execute", "DELEGATE_CALL", "Method::init", "Program::load_method")


def _operator_kind(event_name: str) -> str:
    """`Fully Connected (NC, QS8, QC8W) GEMM #12` -> `Fully Connected`."""
    return event_name.split(" #")[0].split(" (")[0]


def _xnnpack_precision(event_name: str, program_precision: str) -> str:
    """fp32, fp16, int8 or convert from an XNNPACK operator's datatype tag; untagged elementwise operators
    (`Add (ND)`) run in the program's float precision, or an unknown one in a quantized program."""
    kind = _operator_kind(event_name)
    tags = event_name.split(" (", 1)[1].split(")")[0].split(", ") if " (" in event_name else []
    if kind == "Convert":
        return "convert"
    if any(tag.startswith("Q") or tag == "X8" for tag in tags):  # QS8, QU8, QC8, QC8W, QD8: quantized types
        return "int8"
    if "F16" in tags:
        return "fp16"
    if "F32" in tags or "X32" in tags or program_precision == "fp32":
        return "fp32"
    return "unknown"


def match_events(events: list[str], stamped: list[list[str]]) -> list[str]:
    """The module path of each profiler event (in execution order): the longest common subsequence of the events'
    operator kinds and the XNNPACK operators of the stamped `[edge op, module path]` list pairs them; an event with
    no edge op of its own (a layout Transpose, a Convert between int8 and float operators) takes the path of the
    matched event before it."""
    stamped = [(op, path) for op, path in stamped if not op.startswith(_FOLDED)]
    if not stamped:
        return [""] * len(events)
    kinds = ["Dense" if kind in _DENSE else kind for kind in map(_operator_kind, events)]
    expected = ["Dense" if kind in _DENSE else kind for kind in (_XNNPACK_OPERATOR.get(op, op) for op, _ in stamped)]
    n, m = len(expected), len(kinds)
    # lengths[i][j]: LCS of expected[i:] and kinds[j:].
    lengths = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        row, below = lengths[i], lengths[i + 1]
        for j in range(m - 1, -1, -1):
            row[j] = below[j + 1] + 1 if expected[i] == kinds[j] else max(below[j], row[j + 1])
    matched: list[str | None] = [None] * m
    i = j = 0
    while i < n and j < m:
        if expected[i] == kinds[j]:
            matched[j] = stamped[i][1]
            i, j = i + 1, j + 1
        elif lengths[i + 1][j] >= lengths[i][j + 1]:
            i += 1
        else:
            j += 1
    paths, previous = [], next((p for p in matched if p is not None), "")
    for path in matched:
        previous = path if path is not None else previous
        paths.append(previous)
    return paths


class ExecuTorch(Runtime):
    name = "executorch"
    consumes = "pte"
    op_profiler = "ExecuTorch ETDump read by executorch.devtools.Inspector (XNNPACK operator events)"
    libraries = ("torch", "executorch.runtime", "executorch.extension.pybindings.portable_lib",
                 "executorch.exir._serialize._program")

    def __init__(self, method, path: str, threads: int | None, metadata: dict[str, Any],
                 instructions: dict[str, Any]) -> None:
        self.method = method
        self.path = path
        self.threads = threads
        self.metadata = metadata
        self.input_shape = tuple(int(d) for d in method.metadata.input_tensor_meta(0).sizes())
        self.instructions = instructions

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return missing_package("executorch", INSTALL)

    @classmethod
    def load(cls, artifact: str | os.PathLike, *, threads: int | None = None, **options: Any) -> "ExecuTorch":
        """`threads`: the size of the process's ExecuTorch thread pool (None: all cores)."""
        path = Path(artifact)
        if path.suffix != ".pte":
            raise T2TEdgeError(f"ExecuTorch runs .pte programs, not {path.name}")
        if not path.is_file():
            raise T2TEdgeError(f"program file not found: {path}")
        with native_output_captured():  # cpuinfo prints its probing on first use
            from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
            from executorch.runtime import Runtime as EtRuntime

            runtime = EtRuntime.get()
            instructions = program_instructions(path)
            missing = sorted(set(instructions["delegate_calls"]) - set(runtime.backend_registry.registered_backend_names))
            if missing:
                where = " (Core ML runs on macOS and iOS)" if "CoreMLBackend" in missing else ""
                raise T2TEdgeError(f"{path.name} calls {', '.join(missing)}, which this ExecuTorch runtime does not "
                                   f"have{where}")
            _unsafe_reset_threadpool(threads or os.cpu_count() or 1)
            try:
                method = runtime.load_program(path).load_method("forward")
            except (RuntimeError, ValueError) as exc:
                raise T2TEdgeError(f"ExecuTorch cannot load {path}: {first_line(exc)}") from None
        if method is None:
            raise T2TEdgeError(f"{path.name} has no forward method")
        return cls(method, str(path), threads, read_sidecar(path), instructions)

    def _infer(self, batch: np.ndarray) -> list[np.ndarray]:
        import torch

        outputs = self.method.execute([torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))])
        return [np.array(outputs[0].numpy(), dtype=np.float32, copy=True)]

    def run(self, batch: np.ndarray) -> np.ndarray:
        return run_in_chunks(self._infer, self.input_shape[0], np.ascontiguousarray(batch, dtype=np.float32))[0]

    @classmethod
    def probe_blocks(cls, artifact: Any, images: np.ndarray, *, family: str | None, threads: int | None = None,
                     **options: Any) -> BlockOutputs:
        """The blocks of the program (the sidecar's `t2tedge.op_paths`, one list per delegate call), each said to
        be inside its delegate call but the last, whose output is the program's: ExecuTorch logs a delegate call's
        outputs (ETDump debug buffers), never the tensors inside one, and XNNPACK takes our programs whole."""
        from t2tedge.op_blocks import probe_of

        instance = cls.load(artifact, threads=threads)
        calls = instance.metadata.get(keys.OP_PATHS) or []
        if not calls:
            raise BlocksUnavailable(f"{Path(artifact).name} has no t2tedge.op_paths in its sidecar (exported by an "
                                    "older t2tedge or another tool): its blocks are unknown")
        # Each block where its last op is: the order in which block outputs are made.
        last: dict[str, tuple[int, int]] = {}
        ops = [(number, path) for number, call in enumerate(calls, 1) for _, path in call]
        for index, (number, path) in enumerate(ops):
            probe = probe_of(path, family)
            if probe is not None:
                last[probe] = (index, number)
        blocks = [(probe, number) for probe, (_, number) in sorted(last.items(), key=lambda item: item[1][0])]
        backends = ", ".join(instance.instructions["delegate_calls"]) or "delegate"
        hidden = {probe: f"inside {backends} call {number} of {len(calls)}" for probe, number in blocks[:-1]}
        outputs = {blocks[-1][0]: instance.run(images)} if blocks else {}
        return BlockOutputs("the program's output; ExecuTorch logs delegate calls' outputs, not the ops inside them",
                            outputs, hidden, [probe for probe, _ in blocks])

    @classmethod
    def trace_ops(cls, artifact: Any, batch: np.ndarray, *, runs: int, warmup: int, threads: int | None = None,
                  **options: Any) -> OpTrace:
        """XNNPACK's per-operator events (and any portable kernel's) from an ETDump of `warmup` + `runs` runs, read
        by ExecuTorch's Inspector; the warm-up runs are cut. Module paths: `match_events` over the sidecar's
        `t2tedge.op_paths` (programs exported without it get none)."""
        import tempfile

        import torch

        instance = cls.load(artifact, threads=threads)  # checks the file and the backends first
        with native_output_captured():
            from executorch.devtools import Inspector
            from executorch.extension.pybindings.portable_lib import _load_for_executorch

            module = _load_for_executorch(str(artifact), enable_etdump=True, debug_buffer_size=0)
            tensor = torch.from_numpy(np.ascontiguousarray(batch[: instance.input_shape[0]], dtype=np.float32))
            wall = timed_runs(lambda: module.forward([tensor]), runs, warmup)
            with tempfile.TemporaryDirectory(prefix="t2tedge-etdump-") as tmp:
                dump = Path(tmp) / "profile.etdump"
                module.write_etdump_result_to_file(str(dump))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # "Output Buffer not found": we ask for no tensor data
                    inspector = Inspector(etdump_path=str(dump))
        execute = next((block for block in inspector.event_blocks if block.name == "Execute"), None)
        events = [e for e in (execute.events if execute else []) if e.name not in _SPANS and e.perf_data is not None]
        stamped = [op for call in instance.metadata.get(keys.OP_PATHS, []) for op in call]
        delegated = [e for e in events if e.is_delegated_op]
        paths = dict(zip(map(id, delegated), match_events([e.name for e in delegated], stamped)))
        precision = instance.metadata.get(keys.PRECISION, "fp32")
        kept = steady_runs(wall)
        ops = []
        for event in events:
            raw = event.perf_data.raw
            timed = [raw[warmup + i] for i in kept] if len(raw) == warmup + runs else raw
            kind = _operator_kind(event.name) if event.is_delegated_op else event.name
            ops.append(TracedOp(event.name, kind, _xnnpack_precision(event.name, precision) if event.is_delegated_op
                                else precision, float(np.mean(timed)), paths.get(id(event), "")))
        return OpTrace(profiler=cls.op_profiler, ops=ops, wall_ms=1e3 * float(np.mean([wall[i] for i in kept])),
                       runs=runs, outside_ops="XNNPACK between operators (its runtime's setup and thread-pool dispatch) and "
                                   "ExecuTorch's method call around the delegate")

    def describe(self) -> RuntimeDescription:
        from executorch.version import __version__ as version

        calls, kernels = self.instructions["delegate_calls"], self.instructions["kernels_outside_delegate"]
        return RuntimeDescription(
            runtime=self.name, version=version, precision=self.metadata.get(keys.PRECISION, "fp32"),
            device="CPU, " + (", ".join(sorted(calls)) or "portable kernels"), threads=self.threads or os.cpu_count(),
            details={"delegate_calls": sum(calls.values()),
                     "delegates": ",".join(f"{k} x{n}" for k, n in sorted(calls.items())),
                     "ops_outside_delegate": sum(kernels.values()),
                     "ops_outside_delegate_by_type": ",".join(f"{k} x{n}" for k, n in sorted(kernels.items())),
                     "input_shape": list(self.input_shape), "artifact": self.path})
