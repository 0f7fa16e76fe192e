"""Quantize the input image on the grid its own 8-bit pixels lie on.

Our preprocessing feeds (p / 255 - mean) / std for integer pixels p (PIL resizes and crops in uint8). With one
mean and std for all three channels those 256 values are evenly spaced, `step` = 1 / (255 std) apart, so an int8
input can hold every one of them exactly. ORT's calibrated input quantizer misses that: for the MobileNets'
[-1, 1] input it picks scale 2/255 with zero point 128, puts every pixel value half-way between two steps, and
round-half-to-even then maps pixel pairs onto one code, losing a bit of every pixel.

The fix puts the input on the grid: an Add of a constant `offset` (a fraction of a step) in front of the input's
QuantizeLinear, whose scale becomes `step` and zero point the code of p = 0, so code = p exactly. The Convs that
read the dequantized image then see image + offset; their biases absorb offset * sum(weights), which is exact
everywhere except in taps that read zero padding (ORT pads with the zero point, image + offset = 0 there).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from t2tedge import metadata_keys as keys
from t2tedge.onnx_graph import consumers, producers

PIXEL_LEVELS = 255
OFFSET_NODE_SUFFIX = "_PixelGridOffset"


def grid_source(tensor: str, writers: dict[str, onnx.NodeProto]) -> str:
    """The graph input behind the offset Add this pass inserts (the fp32 graph's name for the tensor), else `tensor`."""
    node = writers.get(tensor)
    return node.input[0] if node is not None and node.name.endswith(OFFSET_NODE_SUFFIX) else tensor


def _channel_constant(values: list[float]) -> float | None:
    return float(values[0]) if len(set(values)) == 1 else None


def input_grid(model: onnx.ModelProto) -> tuple[float, float] | str:
    """(step, value of pixel 0) of the preprocessed input, or why it has no single grid."""
    meta = {p.key: p.value for p in model.metadata_props}
    if keys.PREPROCESS not in meta:
        return f"the model has no {keys.PREPROCESS} metadata (not a t2tedge export), so its pixel grid is unknown"
    preprocess = json.loads(meta[keys.PREPROCESS])
    mean, std = _channel_constant(preprocess["mean"]), _channel_constant(preprocess["std"])
    if mean is None or std is None or std <= 0:
        return "the input channels are not normalised alike, so no per-tensor grid"
    return 1.0 / (PIXEL_LEVELS * std), -mean / std


def align_input_quantization(model: onnx.ModelProto) -> dict[str, Any]:
    """Move the input QuantizeLinear onto the pixel grid in place (see the module docstring); returns what was
    done, or why not, for the quantize report."""
    grid = input_grid(model)
    if isinstance(grid, str):
        return {"applied": False, "reason": grid}
    step, pixel0 = grid
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    readers = consumers(graph)
    writers = producers(graph)
    image = graph.input[0].name
    quantizers = readers.get(image, [])
    if len(quantizers) != 1 or quantizers[0].op_type != "QuantizeLinear":
        return {"applied": False, "reason": "the input is read by float ops, not by one QuantizeLinear"}
    q = quantizers[0]
    dequantizers = readers.get(q.output[0], [])
    convs = [c for d in dequantizers for c in readers.get(d.output[0], [])]
    if (not dequantizers or any(d.op_type != "DequantizeLinear" for d in dequantizers)
            or not convs or any(c.op_type != "Conv" or len(c.input) < 3 for c in convs)):
        return {"applied": False, "reason": "the quantized input feeds something other than Convs with a bias"}
    own = {id(q), *(id(d) for d in dequantizers)}
    if any(id(r) not in own for name in q.input[1:] for r in readers.get(name, [])):
        return {"applied": False, "reason": "the input's scale or zero point is shared with other nodes"}
    if (len(q.input) < 3 or any(name not in inits for name in q.input[1:3])
            or numpy_helper.to_array(inits[q.input[1]]).size != 1):
        return {"applied": False, "reason": "the input quantizer is not per-tensor with an explicit zero point"}
    zero_point = numpy_helper.to_array(inits[q.input[2]])
    if zero_point.dtype == np.uint8:
        code0 = int(round(-pixel0 / step))  # the zero point that makes code = pixel
    else:
        code0 = 0  # int8 keeps zero point 0 (TensorRT requires it): code = pixel - 128
    # image + offset = (code - code0) * step, with code = p (uint8) or p - 128 (int8)
    first_code = 0 if zero_point.dtype == np.uint8 else -128
    offset = (first_code - code0) * step - pixel0
    if abs(offset) > step:
        return {"applied": False, "reason": "with zero point 0 the 256 pixel values only fit the int8 codes "
                f"after a shift of {abs(offset) / step:.1f} steps (mean far from 0.5)"}

    old_scale = float(numpy_helper.to_array(inits[q.input[1]]))
    shifted = f"{image}_on_pixel_grid"
    offset_name = f"{image}_pixel_grid_offset"
    graph.initializer.append(numpy_helper.from_array(np.array(offset, np.float32), offset_name))
    graph.node.insert(list(graph.node).index(q), onnx.helper.make_node(
        "Add", [image, offset_name], [shifted], name=f"{image}{OFFSET_NODE_SUFFIX}"))
    q.input[0] = shifted
    _set_scalar(inits[q.input[1]], np.float32(step))
    _set_scalar(inits[q.input[2]], zero_point.dtype.type(code0))
    for d in dequantizers:  # ORT's quantizer shares the Q's scale and zero point initializers with its DQ
        for name, value in ((d.input[1], np.float32(step)), (d.input[2], zero_point.dtype.type(code0))):
            if name not in (q.input[1], q.input[2]):
                _set_scalar(inits[name], value)
    for conv in convs:
        _absorb_offset(conv, offset, step, inits, writers)
    return {"applied": True, "step": step, "offset": offset, "zero_point": code0, "previous_scale": old_scale,
            "convs": [c.name for c in convs]}


def _set_scalar(init: onnx.TensorProto, value: np.generic) -> None:
    init.CopyFrom(numpy_helper.from_array(np.array(value, dtype=value.dtype), init.name))


def _dequantized(name: str, inits, writers) -> np.ndarray:
    """An initializer's float value, through its DequantizeLinear if it has one (per-axis scales on axis 0)."""
    if name in inits:
        return numpy_helper.to_array(inits[name]).astype(np.float64)
    dq = writers[name]
    values = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
    zero = numpy_helper.to_array(inits[dq.input[2]]).astype(np.float64) if len(dq.input) > 2 else 0.0
    shape = (-1,) + (1,) * (values.ndim - 1) if scale.ndim == 1 else ()
    return (values - np.reshape(zero, shape)) * np.reshape(scale, shape)


def _absorb_offset(conv: onnx.NodeProto, offset: float, step: float, inits, writers) -> None:
    """bias -= offset * sum(W) per output channel; an int32 bias is requantized at the new input scale."""
    weights = _dequantized(conv.input[1], inits, writers)
    bias = _dequantized(conv.input[2], inits, writers) - offset * weights.reshape(weights.shape[0], -1).sum(1)
    if conv.input[2] in inits:
        inits[conv.input[2]].CopyFrom(numpy_helper.from_array(bias.astype(np.float32), conv.input[2]))
        return
    bias_dq = writers[conv.input[2]]
    weight_scale = numpy_helper.to_array(inits[writers[conv.input[1]].input[1]]).astype(np.float64)
    bias_scale = step * weight_scale
    inits[bias_dq.input[0]].CopyFrom(numpy_helper.from_array(
        np.round(bias / bias_scale).astype(np.int32), bias_dq.input[0]))
    inits[bias_dq.input[1]].CopyFrom(numpy_helper.from_array(bias_scale.astype(np.float32), bias_dq.input[1]))
