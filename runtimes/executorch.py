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
from pathlib import Path
from typing import Any

import numpy as np

from t2tedge import metadata_keys as keys
from t2tedge.batching import run_in_chunks
from t2tedge.errors import T2TEdgeError, first_line, missing_package
from t2tedge.native_output import native_output_captured
from t2tedge.runtimes.base import Runtime, RuntimeDescription
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


class ExecuTorch(Runtime):
    name = "executorch"
    consumes = "pte"

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
