"""ONNX Runtime-only rewrites of a graph, applied by `t2tedge optimize` (export/ort_optimize.py) to a copy of the file.

The exported file stays plain ONNX (TensorRT and Core ML read it too); the optimized copy needs ONNX Runtime's
com.microsoft contrib ops. ORT's own optimizer does not fuse
T2T-ViT's self-attention (its pattern expects BERT's separate, biased q/k/v projections), so each block ran as
fourteen small ops: a qkv MatMul, Split, three Reshape+Transpose pairs, two MatMuls, the scale, Softmax and the
Transpose+Reshape back. On two threads each op pays a thread-pool round trip; the contrib `Attention` kernel
does the same arithmetic as one op. Measured on T2T-ViT-7 fp32, batch 1, 2 threads: 10.15 -> 9.28 ms.

Tried and left out: residual Add + LayerNorm as contrib SkipLayerNormalization (with the projection bias)
took 3.9 ms for T2T-ViT-7's 16 pairs on one thread, where LayerNormalization alone took 0.8 ms for 18.
In an INT8 (QDQ) graph the same block becomes com.microsoft.QAttention when its qkv MatMul reads a per-tensor
uint8 activation and int8 weights and its output is float (quantize/requantization.py leaves it so): QAttention
runs the int8 GEMM and the float attention that the graph spells out, so no requantization point moves.
Trained T2T-ViT-7 INT8, 2 threads: 8.98 -> 8.14 ms, identical logits on 64 Imagenette val images. Each
other int8 MatMul then takes the bias Add after it (MatMulIntegerToFloat's bias input): 7.97 -> 7.35 ms.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from t2tedge.onnx_graph import consumers, producers
from t2tedge.onnx_graph import prune_unused_initializers

MS_DOMAIN = "com.microsoft"
HEADS_FIRST = [0, 2, 1, 3]  # (B, N, H, D) <-> (B, H, N, D)
KEYS_TRANSPOSED = [0, 2, 3, 1]  # (B, N, H, D) -> (B, H, D, N)


@dataclass
class _Graph:
    proto: onnx.ModelProto

    def __post_init__(self) -> None:
        graph = self.proto.graph
        self.producer = producers(graph)
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list, consumers(graph))
        self.outputs = {o.name for o in graph.output}
        self.constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)

    def made_by(self, tensor: str, op_type: str) -> onnx.NodeProto | None:
        """The node of `op_type` that produces `tensor`, if `tensor` feeds nothing else and is no graph output."""
        node = self.producer.get(tensor)
        if node is None or node.op_type != op_type or tensor in self.outputs or len(self.consumers[tensor]) != 1:
            return None
        return node

    def only_consumer(self, tensor: str, op_type: str) -> onnx.NodeProto | None:
        users = self.consumers[tensor]
        if tensor in self.outputs or len(users) != 1 or users[0].op_type != op_type:
            return None
        return users[0]


def _attr(node: onnx.NodeProto, name: str, default=None):
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _transpose(g: _Graph, tensor: str, perm: list[int]) -> onnx.NodeProto | None:
    node = g.made_by(tensor, "Transpose")
    return node if node is not None and list(_attr(node, "perm", [])) == perm else None


def _heads_reshape(g: _Graph, tensor: str) -> tuple[onnx.NodeProto, int, int] | None:
    """Reshape (B, N, H*D) -> (B, N, H, D): the node, H and D."""
    node = g.made_by(tensor, "Reshape")
    shape = g.constants.get(node.input[1]) if node is not None else None
    if shape is None or shape.shape != (4,) or min(shape[2:]) <= 0 or _attr(node, "allowzero", 0):
        return None
    return node, int(shape[2]), int(shape[3])


def _match(g: _Graph, softmax: onnx.NodeProto) -> dict | None:
    """The nodes of one self-attention block around `softmax`, or None if any part differs from the pattern."""
    if _attr(softmax, "axis", -1) not in (-1, 3):
        return None
    scale_mul = g.made_by(softmax.input[0], "Mul")
    if scale_mul is None:
        return None
    scores_name, scale_name = ((scale_mul.input[0], scale_mul.input[1]) if scale_mul.input[1] in g.constants
                               else (scale_mul.input[1], scale_mul.input[0]))
    scale = g.constants.get(scale_name)
    scores = g.made_by(scores_name, "MatMul")
    if scale is None or scale.size != 1 or scores is None:
        return None
    mix = g.only_consumer(softmax.output[0], "MatMul")
    if mix is None or mix.input[0] != softmax.output[0]:
        return None
    back = g.only_consumer(mix.output[0], "Transpose")
    merge = g.only_consumer(back.output[0], "Reshape") if back is not None else None
    if back is None or list(_attr(back, "perm", [])) != HEADS_FIRST or merge is None:
        return None
    transposes = [_transpose(g, scores.input[0], HEADS_FIRST), _transpose(g, scores.input[1], KEYS_TRANSPOSED),
                  _transpose(g, mix.input[1], HEADS_FIRST)]
    if None in transposes:
        return None
    reshapes = [_heads_reshape(g, t.input[0]) for t in transposes]
    if None in reshapes or len({(h, d) for _, h, d in reshapes}) != 1:
        return None
    _, heads, head_size = reshapes[0]
    hidden = heads * head_size
    merged = g.constants.get(merge.input[1])
    if merged is None or merged.shape != (3,) or int(merged[2]) != hidden:
        return None
    split = g.producer.get(reshapes[0][0].input[0])
    if split is None or split.op_type != "Split" or list(split.output) != [r.input[0] for r, _, _ in reshapes]:
        return None
    sizes = g.constants.get(split.input[1]) if len(split.input) > 1 else np.array(_attr(split, "split", []))
    if _attr(split, "axis", 0) not in (-1, 2) or sizes is None or list(sizes) != [hidden] * 3:
        return None
    if any(len(g.consumers[out]) != 1 or out in g.outputs for out in split.output):
        return None
    bias_add = g.made_by(split.input[0], "Add")
    bias_name = None
    projected = split.input[0]
    if bias_add is not None:
        bias_name = next((i for i in bias_add.input if i in g.constants), None)
        projected = next((i for i in bias_add.input if i != bias_name), None)
        if bias_name is None or g.constants[bias_name].shape != (3 * hidden,):
            return None
    projection = g.made_by(projected, "MatMul")
    if projection is None:
        return None
    weight = g.constants.get(projection.input[1])
    int8 = None
    if weight is None:
        int8 = _int8_projection(g, projection, 3 * hidden)
        if int8 is None:
            return None
    elif weight.ndim != 2 or weight.shape[1] != 3 * hidden:
        return None
    nodes = [projection, bias_add, split, *(r for r, _, _ in reshapes), *transposes, scores, scale_mul, softmax,
             mix, back, merge, *(int8["dequantize"] if int8 else [])]
    return {"nodes": [n for n in nodes if n is not None], "input": projection.input[0],
            "weight": projection.input[1], "bias": bias_name, "hidden": hidden, "heads": heads, "int8": int8,
            "scale": float(scale.reshape(())), "output": merge.output[0], "name": softmax.name}


def _int8_projection(g: _Graph, projection: onnx.NodeProto, columns: int | None = None) -> dict | None:
    """The quantized operands of a QDQ MatMul that QAttention and MatMulIntegerToFloat take as they are: a
    per-tensor uint8 activation and 2-D int8 weights (`columns` wide if given), per tensor or per column."""
    activation = g.made_by(projection.input[0], "DequantizeLinear")
    weights = g.made_by(projection.input[1], "DequantizeLinear")
    if activation is None or weights is None or len(activation.input) < 3 or len(weights.input) < 3:
        return None
    x_scale, x_zero = (g.constants.get(name) for name in activation.input[1:3])
    w, w_scale, w_zero = (g.constants.get(name) for name in weights.input[:3])
    if x_scale is None or x_zero is None or x_scale.size != 1 or x_zero.dtype != np.uint8:
        return None
    if w is None or w.dtype != np.int8 or w.ndim != 2 or w_scale is None or w_zero is None:
        return None
    columns = columns or w.shape[1]
    if w.shape[1] != columns:
        return None
    if w_scale.size != 1 and (w_scale.shape != (columns,) or _attr(weights, "axis", 1) not in (1, -1)):
        return None
    return {"inputs": [activation.input[0], weights.input[0], activation.input[1], weights.input[1],
                       activation.input[2], weights.input[2]], "dequantize": [activation, weights]}


def fuse_self_attention(proto: onnx.ModelProto) -> int:
    """Replace every matching self-attention block of `proto` (in place) by com.microsoft.Attention (QAttention for
    an int8 qkv projection); the count."""
    g = _Graph(proto)
    matches = [m for m in (_match(g, node) for node in proto.graph.node if node.op_type == "Softmax") if m]
    if not matches:
        return 0
    graph = proto.graph
    replaced: dict[int, onnx.NodeProto] = {}
    removed: set[int] = set()
    for number, found in enumerate(matches):
        bias = found["bias"]
        if bias is None:  # Attention needs a bias input; T2T-ViT's qkv has none
            bias = f"{found['weight']}_zero_bias_{number}"
            graph.initializer.append(numpy_helper.from_array(np.zeros(3 * found["hidden"], np.float32), bias))
        if found["int8"]:
            x, w, x_scale, w_scale, x_zero, w_zero = found["int8"]["inputs"]
            attention = helper.make_node("QAttention", [x, w, bias, x_scale, w_scale, "", x_zero, w_zero],
                                         [found["output"]], name=f"{found['name']}_QAttention", domain=MS_DOMAIN,
                                         num_heads=found["heads"], scale=found["scale"])
        else:
            attention = helper.make_node("Attention", [found["input"], found["weight"], bias], [found["output"]],
                                         name=f"{found['name']}_Attention", domain=MS_DOMAIN,
                                         num_heads=found["heads"], scale=found["scale"])
        ids = [id(n) for n in found["nodes"]]
        replaced[ids[0]] = attention  # where the qkv projection was: its inputs exist there already
        removed.update(ids[1:])
    _replace_nodes(proto, replaced, removed)
    prune_unused_initializers(proto)  # the removed Reshapes' shapes and Split sizes
    return len(matches)


def _replace_nodes(proto: onnx.ModelProto, replaced: dict[int, onnx.NodeProto], removed: set[int]) -> None:
    """Put each new node where the node of its id() was, drop the `removed` ids, and import the contrib domain."""
    graph = proto.graph
    kept = [replaced.get(id(n), n) for n in graph.node if id(n) not in removed]
    del graph.node[:]
    graph.node.extend(kept)
    if not any(o.domain == MS_DOMAIN for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))


def fuse_int8_matmul_bias(proto: onnx.ModelProto) -> int:
    """Replace each QDQ MatMul with a float output whose only reader is the Add of a constant bias (nn.Linear as
    torch exports it) by com.microsoft.MatMulIntegerToFloat with that bias, in place; the count.

    ORT makes the same MatMul a MatMulIntegerToFloat without the bias and runs the Add as its own op: on two
    threads each such Add reads back the whole output (T2T-ViT-7 INT8: 29 of them, 7.97 -> 7.35 ms)."""
    g = _Graph(proto)
    replaced: dict[int, onnx.NodeProto] = {}
    removed: set[int] = set()
    for node in proto.graph.node:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
            continue
        add = g.only_consumer(node.output[0], "Add")
        int8 = _int8_projection(g, node) if add is not None else None
        if int8 is None:
            continue
        columns = g.constants[int8["inputs"][1]].shape[1]
        bias = next((name for name in add.input if name != node.output[0]), None)
        if bias not in g.constants or g.constants[bias].shape != (columns,) or g.constants[bias].dtype != np.float32:
            continue
        # MatMulIntegerToFloat's inputs are QAttention's order without the bias and mask: A, B, scales, zero points.
        replaced[id(node)] = helper.make_node("MatMulIntegerToFloat", [*int8["inputs"], bias], [add.output[0]],
                                              name=f"{node.name}_with_bias", domain=MS_DOMAIN)
        removed.update(id(n) for n in (add, *int8["dequantize"]))
    if replaced:
        _replace_nodes(proto, replaced, removed)
    return len(replaced)
