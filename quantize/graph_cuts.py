"""Run a graph from its latest cut instead of from the image, for passes that walk the graph layer by layer.

A cut is a tensor through which alone every later node depends on the graph input: in graph order, right after
its producer, it is the only non-constant tensor still to be read (a residual stream between two blocks, the
uint8 output of a MobileNet block's QuantizeLinear). Bias correction runs the INT8 model once per layer; from the
image, that is one pass through every earlier layer each time (T2T-ViT-7: its 3136-token stage 31 times over).
Caching the latest cut's values for the calibration images and running only the nodes after it computes the
same tensors with the same kernels.

Cuts are float tensors that no DequantizeLinear produced, or uint8 ones: a subgraph that starts at a dequantized
float would hand ORT a float input where the full graph has an int8 kernel (QLinearConv), and an int8 input
cannot take ORT's uint8 weight rewrite (t2tedge.ort_int8_weights) on CPUs without VNNI. The price is memory:
one cut's values for every calibration image (T2T-ViT-7's 3136x64 float stage: 0.8 MB an image).
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import onnx

from t2tedge.onnx_graph import producers

CUT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.UINT8)


def cut_tensors(model: onnx.ModelProto, infos: dict[str, onnx.ValueInfoProto] | None = None) -> dict[str, int]:
    """{cut tensor: index of its producer in graph order} (see the module docstring). `infos`: the model's
    `value_infos`, where the caller has them already."""
    graph = model.graph
    constants = {i.name for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" or (node.input and all(not x or x in constants for x in node.input)):
            constants.update(node.output)
    last_read: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for name in node.input:
            if name and name not in constants:
                last_read[name] = index
    # Only tensors of known rank: the subgraph that starts at a cut declares it as its input.
    types = {name: info.type.tensor_type.elem_type for name, info in (infos or value_infos(model)).items()
             if info.type.tensor_type.HasField("shape")}
    made = producers(graph)
    live = {i.name for i in graph.input if i.name not in constants and i.name in last_read}
    cuts = {}
    for index, node in enumerate(graph.node):
        live = {name for name in live if last_read.get(name, -1) > index}
        live.update(o for o in node.output if o and o not in constants and last_read.get(o, -1) > index)
        if len(live) == 1:
            (tensor,) = live
            if tensor in made and types.get(tensor) in CUT_TYPES and not (
                    types[tensor] == onnx.TensorProto.FLOAT and made[tensor].op_type == "DequantizeLinear"):
                cuts[tensor] = index
    return cuts


def value_infos(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """Inferred type and shape of each tensor (none where inference fails: no cuts, callers run from the input)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        return {}
    return {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)
            + list(inferred.graph.input)}


def subgraph_from(model: onnx.ModelProto, start: onnx.ValueInfoProto, outputs: list[str]) -> onnx.ModelProto:
    """The nodes of `model` that compute `outputs` from tensor `start` (now the only input)."""
    start_name = start.name
    made = producers(model.graph)
    needed, stack, seen = set(), list(outputs), set()
    while stack:
        name = stack.pop()
        if name in seen or name == start_name:
            continue
        seen.add(name)
        node = made.get(name)
        if node is None:
            continue  # an initializer (a graph input here would mean `start` is no cut)
        if id(node) not in needed:
            needed.add(id(node))
            stack.extend(x for x in node.input if x)
    nodes = [n for n in model.graph.node if id(n) in needed]
    read = {x for n in nodes for x in n.input}
    graph = onnx.helper.make_graph(
        nodes, f"{model.graph.name}_from_{start_name}", [start],
        [onnx.helper.make_empty_tensor_value_info(o) for o in outputs],
        initializer=[i for i in model.graph.initializer if i.name in read])
    return onnx.helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)


def fixed_batch(model: onnx.ModelProto) -> int | None:
    """The batch size a static-batch graph's input is fixed to; None for a dynamic batch."""
    dim = model.graph.input[0].type.tensor_type.shape.dim
    return int(dim[0].dim_value) if dim and dim[0].HasField("dim_value") else None


def run_in_batches(session, input_name: str, fixed: int | None, inputs: np.ndarray, outputs: list[str],
                   batch: int) -> Iterator[dict[str, np.ndarray]]:
    """{input_name: the chunk, each of `outputs`: its values} for `batch` of `inputs` at a time (no session when
    `outputs` is empty)."""
    from t2tedge.ort_session import run_in_fixed_batches

    for start in range(0, len(inputs), batch):
        chunk = inputs[start:start + batch]
        values = {}
        if outputs:
            values = dict(zip(outputs, run_in_fixed_batches(session, input_name, fixed, chunk, outputs)))
        values[input_name] = chunk
        yield values


class CutRunner:
    """Values of tensors of a graph that changes only after the tensors asked for (bias correction writes each
    layer's bias before the next layer is asked for), on fixed `images`. `run(tensors)` runs from the latest cut
    before them whose values are cached, then caches the latest cut it passes; every tensor asked for must come
    after every tensor asked for before."""

    def __init__(self, model: onnx.ModelProto, images: np.ndarray,
                 session_for: Callable[[onnx.ModelProto, list[str]], tuple[object, int | None]],
                 batch: int = 8) -> None:
        self.model = model
        self.session_for = session_for
        self.fixed_batch = fixed_batch(model)  # a subgraph's session sees the cut's shape, not the image's
        self.batch = batch
        self.value_infos = value_infos(model)
        self.cuts = cut_tensors(model, self.value_infos)
        self.position = {o: i for i, n in enumerate(model.graph.node) for o in n.output}
        self.cached_name = model.graph.input[0].name
        self.cached_position = -1
        self.cached: np.ndarray = np.ascontiguousarray(images, np.float32)

    def run(self, tensors: list[str]) -> Iterator[dict[str, np.ndarray]]:
        """Batches of {tensor: values}, `self.batch` images at a time."""
        first = min(self.position.get(t, -1) for t in tensors)
        later = [(i, c) for c, i in self.cuts.items() if self.cached_position < i <= first]
        if later:
            index, cut = max(later)
            self.cached = np.concatenate([values[cut] for values in self._from_cached([cut])])
            self.cached_name, self.cached_position = cut, index
        return self._from_cached(tensors)

    def _from_cached(self, tensors: list[str]) -> Iterator[dict[str, np.ndarray]]:
        outside = [t for t in tensors if t != self.cached_name]
        session = None
        if outside:
            model = self.model if self.cached_position < 0 else subgraph_from(
                self.model, self.value_infos[self.cached_name], outside)
            session, _ = self.session_for(model, outside)
        return run_in_batches(session, self.cached_name, self.fixed_batch, self.cached, outside, self.batch)
