"""Which block of the model an op of an exported graph belongs to, from the module path our exports keep in node
names (ONNX, OpenVINO) or stamp at export (ExecuTorch's sidecar).

A block is a module path cut to the depth that explains a model's time: `tokens_to_token.attention1`,
`blocks.3.attn`, `blocks.3.mlp`, `head` for T2T-ViT; `features.7`, `classifier` for the MobileNets. An op at the
model's top level (T2T-ViT's class token and position embedding) belongs to no block. Needs only the standard
library: `t2tedge profile --ops` runs on devices without torch.
"""

from __future__ import annotations

from typing import Iterable, Sequence

# Module-path units that make one block, per model family (`t2tedge.family`); an index joins the name before it
# (`blocks.3`, `features.7`; `features.0.0` is unit `features.0`, then `0`). Families not listed: 1.
BLOCK_DEPTH = {"T2T-ViT": 2}


def module_path(node_name: str) -> str:
    """The module path of a node of our TorchScript-traced exports: `/features/features.1/conv/conv.0/conv.0.0/Conv`
    -> `features.1.conv.0.0` (each scope names its child relative to the scope before it). "" for a node with no
    scope (one a graph optimizer made)."""
    parts: list[str] = []
    previous = None
    for scope in node_name.strip("/").split("/")[:-1]:
        parts.append(scope[len(previous) + 1:] if previous and scope.startswith(previous + ".") else scope)
        previous = scope
    return ".".join(parts)


def block_of(path: str, family: str | None) -> str | None:
    """The block of a module path: `blocks.3.attn.qkv` -> `blocks.3.attn` (T2T-ViT), `features.7.conv.0.0` ->
    `features.7`; None for the model's top level."""
    units: list[str] = []
    for part in path.split(".") if path else ():
        if part.isdigit() and units and not units[-1].rsplit(".", 1)[-1].isdigit():
            units[-1] += "." + part
        else:
            units.append(part)
    return ".".join(units[:BLOCK_DEPTH.get(family or "", 1)]) or None


def parameter_module(tensor_name: str) -> str:
    """`blocks.3.attn.qkv.weight` -> `blocks.3.attn.qkv`; "" for a name that is no module parameter."""
    if "/" in tensor_name or ":" in tensor_name or "." not in tensor_name:
        return ""
    return tensor_name.rsplit(".", 1)[0]


def graph_module_paths(nodes: Sequence[tuple[str, str, Iterable[str], Iterable[str]]]) -> dict[str, str]:
    """Node name -> module path for a graph's nodes in topological order, each `(name, its own module path or "",
    input tensors, output tensors)`. A node a graph optimizer made (no scope in its name: `SkipLayerNormalization`,
    `MVN_523`) takes the scope of its output tensors, else the module of a parameter it reads (`head.weight`:
    OpenVINO names the last layer after the graph's output), else the scope of the node that made its first scoped
    input, else of its scoped input tensor names."""
    producer_path: dict[str, str] = {}
    paths: dict[str, str] = {}
    for name, own, inputs, outputs in nodes:
        inputs, outputs = list(inputs), list(outputs)
        path = own or next((p for p in map(module_path, outputs) if p), "")
        if not path:
            path = next((parameter_module(i) for i in inputs if parameter_module(i)), "")
        if not path:
            path = next((producer_path[i] for i in inputs if producer_path.get(i)), "")
        if not path:
            path = next((p for p in map(module_path, inputs) if p), "")
        paths[name] = path
        for tensor in outputs:
            producer_path[tensor] = path
    return paths
