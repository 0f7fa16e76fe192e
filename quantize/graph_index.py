"""Who writes and who reads each tensor of an ONNX graph: the two lookups every Q/DQ rewrite here starts from."""

from __future__ import annotations

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
