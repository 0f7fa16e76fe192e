"""Run a global average pool between two int8 tensors in int8.

onnxruntime.quantization does not quantize GlobalAveragePool, so a MobileNet's head reads the last Conv's int8
output through DequantizeLinear, pools in float, and quantizes again (after a Flatten) for the classifier. In
ONNX Runtime that float pool also pins a Transpose back to NCHW behind the NHWC int8 Convs (60 µs of
MobileNetV2's 1.3 ms). A Q -> DQ pair right behind the pool, with the scale and zero point of the classifier's
own input quantizer, changes no value (Flatten only reshapes) and lets ORT fuse DQ -> pool -> Q into
QLinearGlobalAveragePool, which runs on the NHWC tensor as it is. TensorRT fuses Q/DQ around pooling as well.
"""

from __future__ import annotations

import onnx
from onnx import helper

from t2tedge.onnx_graph import consumers, producers, redirect_readers

RESHAPES = ("Flatten", "Reshape", "Squeeze")


def quantize_global_pooling(model: onnx.ModelProto) -> list[str]:
    """Insert a Q -> DQ pair after each GlobalAveragePool that reads a dequantized tensor and whose output, through
    at most one reshape, is quantized again; in place. Returns the pooling nodes changed."""
    graph = model.graph
    writers = producers(graph)
    readers = consumers(graph)
    changed = []
    for pool in [n for n in graph.node if n.op_type == "GlobalAveragePool"]:
        source = writers.get(pool.input[0])
        if source is None or source.op_type != "DequantizeLinear":
            continue
        after = readers.get(pool.output[0], [])
        if len(after) == 1 and after[0].op_type in RESHAPES:
            after = readers.get(after[0].output[0], [])
        if len(after) != 1 or after[0].op_type != "QuantizeLinear" or len(after[0].input) < 3:
            continue
        requantize = after[0]
        quantized, dequantized = f"{pool.output[0]}_quantized", f"{pool.output[0]}_dequantized"
        position = list(graph.node).index(pool) + 1
        graph.node.insert(position, helper.make_node(
            "QuantizeLinear", [pool.output[0], *requantize.input[1:3]], [quantized], name=f"{pool.name}_QuantizeLinear"))
        graph.node.insert(position + 1, helper.make_node(
            "DequantizeLinear", [quantized, *requantize.input[1:3]], [dequantized],
            name=f"{pool.name}_DequantizeLinear"))
        redirect_readers(readers[pool.output[0]], pool.output[0], dequantized)
        changed.append(pool.name)
    return changed
