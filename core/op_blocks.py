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
# The ModuleList directly under a family's model: torch.export's scopes skip it (a ModuleList is never called), so
# a LiteRT tensor named after `Block_3` belongs to `blocks.3`.
TOP_LIST = {"T2T-ViT": "blocks"}
# Top-level modules whose children parity probes one by one (their own ops, between the children, make one probe).
PROBE_SPLIT = {"T2T-ViT": ("tokens_to_token",)}


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


def _units(path: str) -> list[str]:
    units: list[str] = []
    for part in path.split(".") if path else ():
        if part.isdigit() and units and not units[-1].rsplit(".", 1)[-1].isdigit():
            units[-1] += "." + part
        else:
            units.append(part)
    return units


def scope_path(tensor_name: str, family: str | None) -> str | None:
    """The module path in a LiteRT tensor name (litert-torch writes each module scope as `pkg.Class_attribute`,
    joined by "/", with ";N" after and ";;" between names fused into one tensor): `...T2TViT_model/...Block_3/
    ...Attention_attn;7` -> `blocks.3.attn`; "" for the model's top level; None for a name without scopes (a
    constant, the serving output). A root from `t2tedge.export` is our export wrapper; the model is its child."""
    first = tensor_name.split(";")[0]
    parts = first.split("/")
    root = parts[0].rsplit(".", 1)
    if len(root) != 2 or "_" in root[1] or (len(parts) == 1 and tensor_name == first):
        return None
    attributes = [part.rsplit(".", 1)[-1].partition("_")[2] for part in parts[1:]]
    if parts[0].startswith("t2tedge.export.") and attributes:
        attributes = attributes[1:]
    if attributes and attributes[0].isdigit() and family in TOP_LIST:
        attributes.insert(0, TOP_LIST[family])
    return ".".join(attributes)


def block_of(path: str, family: str | None) -> str | None:
    """The block of a module path: `blocks.3.attn.qkv` -> `blocks.3.attn` (T2T-ViT), `features.7.conv.0.0` ->
    `features.7`; None for the model's top level."""
    return ".".join(_units(path)[:BLOCK_DEPTH.get(family or "", 1)]) or None


def probe_of(path: str, family: str | None) -> str | None:
    """The probe (the module whose output parity compares) of a module path: its first unit (`blocks.3`,
    `features.7`, `norm`, `head`), a child of a module named in PROBE_SPLIT (`tokens_to_token.attention1`); None
    for the model's top level."""
    units = _units(path)
    if not units:
        return None
    return ".".join(units[:2 if units[0] in PROBE_SPLIT.get(family or "", ()) else 1])


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


def probe_tensors(nodes: Sequence[tuple[str, str | None, Iterable[str], Iterable[str]]], family: str | None,
                  graph_outputs: Iterable[str] = (), transparent: Iterable[str] = ()) -> dict[str, str]:
    """Probe -> the tensor that carries its output, for a graph's nodes in topological order, each `(name, module
    path, input tensors, output tensors)`: the last tensor made inside the probe that a node outside it (or the
    graph's output) reads. Path None: a node with no scope of its own (a converter made it), which joins the probe
    of its first input's maker. `transparent` names nodes that only move a tensor between precisions (QDQ,
    FakeQuantize, Convert): they pass their first input on, so a quantized file yields the float tensor before its
    quantizer, the tensor its float twin names too."""
    transparent = set(transparent)
    alias: dict[str, str] = {}
    made_by: dict[str, tuple[int, str | None]] = {}
    last: dict[str, tuple[int, str]] = {}

    def source(tensor: str) -> str:
        while tensor in alias:
            tensor = alias[tensor]
        return tensor

    def read_from(tensor: str, reader: str | None) -> None:
        tensor = source(tensor)
        if tensor not in made_by:
            return
        index, probe = made_by[tensor]
        if probe is not None and probe != reader and index >= last.get(probe, (-1, ""))[0]:
            last[probe] = (index, tensor)

    for index, (name, path, inputs, outputs) in enumerate(nodes):
        inputs, outputs = [i for i in inputs if i], list(outputs)
        if name in transparent and inputs:
            for tensor in outputs:
                alias[tensor] = inputs[0]
            continue
        if path is None:
            first = next((made_by[source(i)] for i in inputs if source(i) in made_by), (index, None))
            probe = first[1]
        else:
            probe = probe_of(path, family)
        for tensor in inputs:
            read_from(tensor, probe)
        for tensor in outputs:
            made_by[tensor] = (index, probe)
    for tensor in graph_outputs:
        read_from(tensor, None)
    return {probe: tensor for probe, (_, tensor) in sorted(last.items(), key=lambda item: item[1][0])}
