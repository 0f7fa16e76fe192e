"""Per-layer SQNR of a QDQ model against its fp32 source: where along the graph the quantization error grows.

Each quantized node keeps its output tensor name in the QDQ graph, so both models expose the same tensors;
the SQNR at a node is cumulative (it includes the error of everything upstream), as in Polygraphy's
layer-wise comparison. A collapsing model shows as a cliff in this list.
"""

from __future__ import annotations

import os

import numpy as np
import onnx

from t2tedge.ort_session import run_in_fixed_batches, session_exposing

DEFAULT_SQNR_THRESHOLD_DB = 10.0


def _dequantized_names(proto: onnx.ModelProto) -> dict[str, str]:
    """tensor -> the DequantizeLinear output that carries it after quantization (what consumers really read)."""
    producers_of_q = {n.output[0]: n.input[0] for n in proto.graph.node if n.op_type == "QuantizeLinear"}
    return {producers_of_q[n.input[0]]: n.output[0] for n in proto.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in producers_of_q}


def _outputs_of(proto: onnx.ModelProto, names: dict[str, str], images: np.ndarray) -> dict[str, np.ndarray]:
    """Run `proto` exposing the tensors `names` maps to; return them under the keys of `names`."""
    session, fixed_batch = session_exposing(proto, names.values())
    available = {o.name for o in session.get_outputs()}
    keys = [k for k, t in names.items() if t in available]
    feed = session.get_inputs()[0]
    values = run_in_fixed_batches(session, feed.name, fixed_batch, images, [names[k] for k in keys])
    return dict(zip(keys, values))


def layer_sqnr(fp32_path: str | os.PathLike, qdq_path: str | os.PathLike, nodes: list[str], images: np.ndarray,
               threshold_db: float = DEFAULT_SQNR_THRESHOLD_DB) -> list[dict]:
    """[{node, output, sqnr_db, flagged}] in graph order for the given quantized nodes.

    Each node's fp32 output is compared with the tensor the QDQ model's consumers read in its place: the
    DequantizeLinear after it (so activation rounding counts, and a ReLU/Clip folded into that range is
    compared as the clipped value it stands for), or the tensor itself where it is not quantized.
    """
    from t2tedge.metrics import sqnr_db

    fp32 = onnx.load(str(fp32_path))
    qdq = onnx.load(str(qdq_path))
    wanted = set(nodes)
    order = [(n.name, n.output[0]) for n in fp32.graph.node if n.name in wanted]
    dequantized = _dequantized_names(qdq)
    reference = _outputs_of(fp32, {t: t for _, t in order}, images)
    quantized = _outputs_of(qdq, {t: dequantized.get(t, t) for _, t in order}, images)
    rows = []
    for node, tensor in order:
        if tensor in reference and tensor in quantized and reference[tensor].shape == quantized[tensor].shape:
            value = sqnr_db(reference[tensor], quantized[tensor])
            rows.append({"node": node, "output": tensor, "sqnr_db": round(float(value), 2),
                         "flagged": bool(value < threshold_db)})
    return rows
