"""ONNX graph helpers every layer shares: who writes and who reads each tensor (the two lookups every Q/DQ rewrite
starts from), whether a model is quantized or fp16, and dropping initializers nothing reads."""

from __future__ import annotations

import os
from pathlib import Path

import onnx


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """Tensor name -> the node that outputs it (graph inputs and initializers have none)."""
    return {name: node for node in graph.node for name in node.output}


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes that read it, in graph order."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers


def redirect_readers(readers: list[onnx.NodeProto], old: str, new: str) -> None:
    """Make each of `readers` read tensor `new` wherever it read `old`."""
    for reader in readers:
        for k, name in enumerate(reader.input):
            if name == old:
                reader.input[k] = new


def has_qdq(model: str | os.PathLike | onnx.ModelProto) -> bool:
    """Whether an ONNX model (a file or a loaded ModelProto) holds Q/DQ nodes: an INT8 QDQ model."""
    if not hasattr(model, "graph"):
        model = onnx.load(str(model), load_external_data=False)
    return any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in model.graph.node)


FLOAT_TYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
               onnx.TensorProto.BFLOAT16: "bfloat16", onnx.TensorProto.DOUBLE: "float64"}


def float_types(model: str | os.PathLike | onnx.ModelProto) -> dict[str, int]:
    """How many of the graph's float initializers are of each float type, e.g. {"float16": 181, "float32": 2}."""
    if not hasattr(model, "graph"):
        model = onnx.load(str(model), load_external_data=False)
    counts: dict[str, int] = {}
    for init in model.graph.initializer:
        name = FLOAT_TYPES.get(init.data_type)
        if name:
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def onnx_precision(model: str | os.PathLike | onnx.ModelProto) -> str:
    """The precision of the vocabulary an ONNX file of ours holds: int8 (Q/DQ), fp16 (mostly fp16 weights), fp32."""
    if not hasattr(model, "graph"):
        model = onnx.load(str(model), load_external_data=False)
    if has_qdq(model):
        return "int8"
    counts = float_types(model)
    return "fp16" if counts.get("float16", 0) > counts.get("float32", 0) else "fp32"


def contrib_op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """ONNX Runtime contrib ops (com.microsoft domain) in `model`, by op type, sorted by name."""
    kinds = [node.op_type for node in model.graph.node if node.domain == "com.microsoft"]
    return {kind: kinds.count(kind) for kind in sorted(set(kinds))}


def prune_unused_initializers(model: onnx.ModelProto) -> int:
    """Remove initializers that no node reads and that are neither graph inputs nor outputs; returns how many."""
    graph = model.graph
    if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for attr in n.attribute):
        return 0  # a subgraph may read outer initializers by name
    used = ({name for node in graph.node for name in node.input} | {o.name for o in graph.output}
            | {i.name for i in graph.input})
    stale = [init for init in graph.initializer if init.name not in used]
    for init in stale:
        graph.initializer.remove(init)
    return len(stale)


def external_data_files(path: str | os.PathLike, model: onnx.ModelProto | None = None) -> tuple[Path, ...]:
    """The files an ONNX model keeps tensors in beside itself (`MODEL.onnx.data`, what large exports and several
    tools write), each checked: a DataError names one that is missing, or shorter than the tensors it must hold."""
    from t2tedge.errors import DataError

    path = Path(path)
    if model is None:
        model = onnx.load(str(path), load_external_data=False)
    needs: dict[str, int] = {}
    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entry = {item.key: item.value for item in tensor.external_data}
        end = int(entry.get("offset", 0)) + int(entry.get("length", 0))
        needs[entry["location"]] = max(needs.get(entry["location"], 0), end)
    files = []
    for location, end in needs.items():
        data = path.parent / location
        if not data.is_file():
            raise DataError(f"{path.name} keeps its weights in {location}, which is not beside it; copy the two "
                            f"files together")
        if data.stat().st_size < end:
            raise DataError(f"{location} is truncated: {data.stat().st_size} bytes, and {path.name} reads up to "
                            f"byte {end}; copy it again")
        files.append(data)
    return tuple(files)
