"""Drop the QuantizeLinear -> DequantizeLinear pairs that onnxruntime.quantization puts on an int8 layer's output
when nothing downstream runs in int8.

ORT's QDQ quantizer requantizes every quantized node's output. Where a float op reads it (a bias or residual
Add, a Split into float attention, GELU, the logits), that step only adds rounding noise and two memory passes;
the producer still runs in int8 without it: ORT fuses DequantizeLinear -> MatMul with a float output into
MatMulIntegerToFloat and Gemm into QGemm with a float output, and TensorRT keeps such a layer's output in float.
"""

from __future__ import annotations

from typing import Iterable

import onnx

from t2tedge.onnx_graph import consumers, producers, prune_unused_initializers, redirect_readers
from t2tedge.quantize.tensorrt_checks import quantize_amax

# Only these have an int8 kernel with a float output in ORT; a Conv without its output Q would run in float.
FLOAT_OUTPUT_INT8_OPS = ("MatMul", "Gemm")


def _drop_pair(graph: onnx.GraphProto, q: onnx.NodeProto, dq: onnx.NodeProto,
               readers: list[onnx.NodeProto]) -> None:
    """Route `dq`'s readers to `q`'s float input and remove the pair."""
    redirect_readers(readers, dq.output[0], q.input[0])
    for info in [v for v in graph.value_info if v.name in (q.output[0], dq.output[0])]:
        graph.value_info.remove(info)
    graph.node.remove(dq)
    graph.node.remove(q)


def keep_outputs_float(model: onnx.ModelProto) -> int:
    """Drop the QuantizeLinear -> DequantizeLinear pair in front of each graph output, in place; returns how many.

    ORT quantizes the logits like any activation, and 256 levels make near-ties exact ties: on imagenet-val1300
    the int8 logits of MobileNetV1 tied in 22 images (argmax then picks the lower class index). The producer
    still runs in int8 (QGemm / MatMulIntegerToFloat with a float output)."""
    graph = model.graph
    writers = producers(graph)
    readers = consumers(graph)
    removed = 0
    for output in graph.output:
        dq = writers.get(output.name)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = writers.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear" or len(readers.get(q.output[0], [])) != 1:
            continue
        source = writers.get(q.input[0])
        if source is None or len(readers.get(q.input[0], [])) != 1:
            continue  # the float tensor feeds other nodes too (or is a graph input): leave the pair
        source.output[list(source.output).index(q.input[0])] = output.name
        for info in [v for v in graph.value_info if v.name == q.input[0]]:
            graph.value_info.remove(info)
        graph.node.remove(dq)
        graph.node.remove(q)
        removed += 1
    prune_unused_initializers(model)
    return removed


def skip_requantization_before_float(model: onnx.ModelProto, int8_op_types: Iterable[str]) -> dict[str, float]:
    """Drop the output Q -> DQ pair of each int8 MatMul/Gemm whose dequantized output only float ops read, in
    place; returns {tensor: amax of the dropped QuantizeLinear} (TensorRT's calibration cache still wants it).

    A reader counts as int8, and the pair stays, when its op type is quantized (`int8_op_types`) or when all of
    its outputs go straight into QuantizeLinear (a Reshape or Transpose that ORT runs on int8 between Q/DQ)."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    int8_op_types = set(int8_op_types)
    writers = producers(graph)
    readers = consumers(graph)
    outputs = {o.name for o in graph.output}

    def runs_in_int8(node: onnx.NodeProto) -> bool:
        if node.op_type in int8_op_types:
            return True
        after = [r for o in node.output for r in readers.get(o, [])]
        return bool(after) and all(r.op_type == "QuantizeLinear" for r in after)

    dropped: dict[str, float] = {}
    for q in [n for n in graph.node if n.op_type == "QuantizeLinear"]:
        source = writers.get(q.input[0])
        if source is None or source.op_type not in FLOAT_OUTPUT_INT8_OPS or len(readers.get(q.input[0], [])) != 1:
            continue
        if not all(writers.get(name) is not None and writers[name].op_type == "DequantizeLinear"
                   for name in source.input[:2]):
            continue  # a float layer: its output Q feeds an int8 reader's input
        after_q = readers.get(q.output[0], [])
        if len(after_q) != 1 or after_q[0].op_type != "DequantizeLinear" or after_q[0].output[0] in outputs:
            continue
        dq = after_q[0]
        float_readers = readers.get(dq.output[0], [])
        if not float_readers or any(runs_in_int8(r) for r in float_readers):
            continue
        dropped[q.input[0]] = quantize_amax(inits, q)
        _drop_pair(graph, q, dq, float_readers)
    prune_unused_initializers(model)
    return dropped
