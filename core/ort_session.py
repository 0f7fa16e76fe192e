"""Plain ONNX Runtime CPU sessions for the quantizer's own measurements (calibration passes, GPTQ inputs, bias
correction, layer SQNR, sensitivity): the graph as written, with the two corrections every one of them needs so
that it measures what the file computes (QDQ_DISABLED_OPTIMIZERS, and uint8 weights where int8 dot products
saturate: t2tedge.ort_int8_weights)."""

from __future__ import annotations

import numpy as np

from t2tedge.batching import run_in_chunks
from t2tedge.onnx_graph import has_qdq
from t2tedge.ort_int8_weights import int8_dot_may_saturate, make_int8_unsigned

# ORT's WeightBiasQuantization (a level-1 QDQ transformer) quantizes, at load time, every float Conv,
# ConvTranspose or Gemm whose input comes from a per-tensor DequantizeLinear: per-tensor int8 weights of its own
# choosing. In a QDQ model those are exactly the nodes the quantization config kept in float (--exclude, the
# mixed-precision search), so without this they silently ran in int8, with per-tensor weights that a depthwise
# Conv cannot take: MobileNetV2 with every Conv kept float but its activations quantized fell to 0% agreement.
QDQ_DISABLED_OPTIMIZERS = ("WeightBiasQuantization",)


def run_in_fixed_batches(session, input_name: str, fixed_batch: int | None, batch: np.ndarray,
                         output_names: list[str] | None = None) -> list[np.ndarray]:
    """`session.run` on `batch` (float32, or uint8 for a graph that starts at a quantized tensor); a static-batch
    graph (`fixed_batch`) takes any batch: chunks of its size, the last one zero-padded and its padding cut from
    every output."""
    batch = np.ascontiguousarray(batch, dtype=batch.dtype if batch.dtype == np.uint8 else np.float32)
    return run_in_chunks(lambda chunk: session.run(output_names, {input_name: chunk}), fixed_batch, batch)


def session_exposing(proto, tensors, threads: int | None = None, only: bool = False):
    """(CPU session, fixed batch or None) of `proto` with the intermediate `tensors` also exposed as outputs
    (those the graph computes; others are left out). `only`: they replace the graph's outputs, so ORT drops
    every node after them. `proto` is not modified."""
    import onnx
    import onnxruntime as ort

    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    if int8_dot_may_saturate():
        make_int8_unsigned(proto)
    present = {o for node in proto.graph.node for o in node.output}
    if only:
        del proto.graph.output[:]
    existing = {o.name for o in proto.graph.output}
    for tensor in sorted(set(tensors)):
        if tensor in present and tensor not in existing:
            proto.graph.output.add(name=tensor)  # untyped output: ORT fills in type and shape
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"],
                                   disabled_optimizers=list(QDQ_DISABLED_OPTIMIZERS) if has_qdq(proto) else [])
    batch_dim = session.get_inputs()[0].shape[0]
    return session, batch_dim if isinstance(batch_dim, int) else None


def logits(path, images: np.ndarray, threads: int | None = None) -> np.ndarray:
    """The model's first output on `images`, from a plain session of the file at `path`."""
    import onnx

    session, fixed_batch = session_exposing(onnx.load(str(path)), [], threads)
    return run_in_fixed_batches(session, session.get_inputs()[0].name, fixed_batch, images)[0]
