"""ExecuTorch `.pte` programs from our models: `torch.export`, then ExecuTorch's `to_edge_transform_and_lower` with
the XNNPACK partitioner (the CPU backend of ExecuTorch on Android and iOS) or the Core ML one (iOS, macOS).

T2T-ViT is lowered from its delegable form (`t2tedge.export.executorch_form`), so the whole network is one
delegate call. The delegation report (which ops each delegate took, which stayed outside) is printed and kept in
the sidecar JSON beside the program (`MODEL.pte.json`), with the model's preprocessing and class order: a `.pte`
has no place for them. A program with computation left outside its delegate is refused unless asked for, because
ExecuTorch's portable kernels are what a phone would then run, at several times the latency.
Quantized programs are made by `t2tedge.quantize.executorch_ptq`.
"""

from __future__ import annotations

import collections
import sys
from typing import Any

import torch

from t2tedge import metadata_keys as keys
from t2tedge.errors import T2TEdgeError, first_line, require_installed
from t2tedge.export.common import artifact_metadata
from t2tedge.native_output import native_output_captured

INSTALL = "'t2t-edge[executorch]'"
DELEGATES = ("xnnpack", "coreml")
# The Core ML delegate's deployment target and compute precision (Core ML's own default, fp16 on the Neural Engine).
COREML_TARGET = "iOS17"
# Graph nodes that only unpack a delegate's outputs; anything else outside a delegate is computation.
BOOKKEEPING = ("getitem", "executorch_call_delegate")


def check_delegate(delegate: str) -> None:
    if delegate not in DELEGATES:
        raise T2TEdgeError(f"unknown ExecuTorch delegate {delegate!r}; choose {', '.join(DELEGATES)}")


def _partitioner(delegate: str) -> Any:
    if delegate == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        return XnnpackPartitioner()
    require_installed("coremltools", "'t2t-edge[coreml]'")
    import coremltools as ct
    from executorch.backends.apple.coreml.compiler import CoreMLBackend
    from executorch.backends.apple.coreml.partition import CoreMLPartitioner

    specs = CoreMLBackend.generate_compile_specs(minimum_deployment_target=getattr(ct.target, COREML_TARGET))
    return CoreMLPartitioner(compile_specs=specs)


def op_name(node: torch.fx.Node) -> str:
    """`aten.convolution.default`, `quantized_decomposed.quantize_per_tensor.default`, `getitem`, ..."""
    return getattr(node.target, "__name__", str(node.target))


def delegation_report(edge_program: Any) -> dict[str, Any]:
    """What each delegate took and what stayed outside, per op type, in a lowered edge program."""
    from executorch.exir.lowered_backend_module import get_lowered_submodules

    graph_module = edge_program.exported_program().graph_module
    delegated: collections.Counter[str] = collections.Counter()
    backends: collections.Counter[str] = collections.Counter()
    for _, lowered, _ in get_lowered_submodules(graph_module):
        backends[lowered.backend_id] += 1
        delegated.update(op_name(n) for n in lowered.original_module.graph.nodes
                         if n.op == "call_function" and op_name(n) not in BOOKKEEPING)
    outside = collections.Counter(op_name(n) for n in graph_module.graph.nodes
                                  if n.op == "call_function" and op_name(n) not in BOOKKEEPING)
    return {"delegate_calls": sum(backends.values()), "backends": dict(sorted(backends.items())),
            "delegated_ops": dict(sorted(delegated.items())), "ops_outside_delegate": dict(sorted(outside.items()))}


def delegated_op_paths(edge_program: Any) -> list[list[list[str]]]:
    """Per delegate call, in execution order, the ops it took in graph order as `[op, module path]`: a `.pte` keeps
    no module names, and ExecuTorch's profiler names XNNPACK's operators only by type, so `t2tedge profile --ops`
    matches its events to these (runtimes/executorch.py). The path is the innermost module of the node's
    `nn_module_stack` ("" for the model's top level)."""
    from executorch.exir.lowered_backend_module import get_lowered_submodules

    calls = []
    for _, lowered, _ in get_lowered_submodules(edge_program.exported_program().graph_module):
        ops = []
        for node in lowered.original_module.graph.nodes:
            if node.op == "call_function" and op_name(node) not in BOOKKEEPING:
                stack = list((node.meta.get("nn_module_stack") or {}).values())
                ops.append([op_name(node), stack[-1][0] if stack else ""])
        calls.append(ops)
    return calls


def format_delegation(report: dict[str, Any]) -> str:
    outside = report["ops_outside_delegate"]
    where = ", ".join(f"{backend} x{n}" for backend, n in report["backends"].items()) or "none"
    text = (f"{sum(report['delegated_ops'].values())} ops in {report['delegate_calls']} delegate call(s) ({where}); "
            f"{sum(outside.values())} outside")
    return text + (": " + ", ".join(f"{op} x{n}" for op, n in outside.items()) if outside else "")


def export_program(module: torch.nn.Module, sample: torch.Tensor) -> torch.export.ExportedProgram:
    """`torch.export` of `module` on `sample`, failures as one line."""
    try:
        with torch.no_grad():
            return torch.export.export(module, (sample,))
    except Exception as exc:  # torch.export raises many types (Unsupported, UserError, ...)
        raise T2TEdgeError(f"torch.export failed: {first_line(exc)}") from None


def lower_program(program: torch.export.ExportedProgram, delegate: str, allow_outside: bool = False,
                  ) -> tuple[bytes, dict[str, Any], list[list[list[str]]]]:
    """The `.pte` bytes of `program` lowered to `delegate`, its delegation report and its delegated ops' module
    paths (`delegated_op_paths`). Refuses a program with
    computation left outside the delegate, naming the ops, unless `allow_outside`."""
    check_delegate(delegate)
    require_installed("executorch", INSTALL)
    print(f"lowering to ExecuTorch ({delegate}) ...", file=sys.stderr, flush=True)
    with native_output_captured():  # Core ML's MIL passes draw progress bars; ExecuTorch warns on every export
        from executorch.exir import to_edge_transform_and_lower

        try:
            edge = to_edge_transform_and_lower(program, partitioner=[_partitioner(delegate)])
        except T2TEdgeError:
            raise
        except Exception as exc:  # partitioners and backends raise plain assertions and RuntimeErrors
            raise T2TEdgeError(f"ExecuTorch lowering to {delegate} failed: {first_line(exc)}") from None
        report = delegation_report(edge)
        op_paths = delegated_op_paths(edge)
        if report["ops_outside_delegate"] and not allow_outside:
            raise T2TEdgeError(f"{delegate} did not take every op ({format_delegation(report)}); nothing written "
                               f"(--allow-outside-delegate writes it anyway, run by ExecuTorch's portable kernels)")
        try:
            buffer = edge.to_executorch().buffer
        except Exception as exc:
            raise T2TEdgeError(f"ExecuTorch program serialization failed: {first_line(exc)}") from None
    return buffer, {"delegate": delegate, **report}, op_paths


def program_metadata(model_name: str, weights: str, precision: str, num_classes: int, delegate: str) -> dict[str, Any]:
    description = "NCHW float32 RGB, normalised as in t2tedge.preprocess; batch 1 (contiguous tensor)"
    metadata = artifact_metadata(model_name, weights, "nchw", precision, num_classes, description)
    metadata[keys.DELEGATE] = delegate
    if delegate == "coreml":
        metadata[keys.COREML_DELEGATE] = {"minimum_deployment_target": COREML_TARGET, "compute_precision": "float16"}
    return metadata
