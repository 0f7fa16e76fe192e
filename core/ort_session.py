"""The one home of our ONNX Runtime session options (`disabled_optimizers`), used by the onnxruntime runtime adapter
and by the quantizer's own sessions alike (calibration passes, GPTQ inputs, bias correction, layer SQNR,
sensitivity), so a node is scored under the session that eval and Table 4 run. The graph is taken as written, with
uint8 weights where int8 dot products saturate (t2tedge.ort_int8_weights)."""

from __future__ import annotations

import os

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

# With static shapes ORT's MatMulAddFusion turns each token Linear (3-D MatMul + bias Add) into Reshape-Gemm-Reshape,
# and its Gemm kernel broadcasts the bias into the output on one thread before the threaded GEMM: 0.2 ms of
# 0.55 ms for T2T-ViT-7's 3136x147x192 projection at 2 threads. Left unfused on more than one thread, T2T-ViT-7
# fp32 took 10.45 ms instead of 11.66; on one thread the fusion helps (12.63 vs 13.01 ms), so it stays there.
MULTI_THREAD_DISABLED_OPTIMIZERS = ("MatMulAddFusion",)
# ORT's SkipLayerNormFusion (level 2) merges a residual Add into the LayerNorm after it when nothing else reads
# the sum: in T2T-ViT only the last block's, before the final norm. ORT 1.32's CPU SkipLayerNormalization kernel
# took 210 us there on one thread where Add + LayerNormalization took 30 (T2T-ViT-7 fp32: 12.31 -> 12.12 ms on
# one thread, 9.20 -> 9.14 ms on two).
SLOW_FUSIONS = ("SkipLayerNormFusion",)


def disabled_optimizers(threads: int | None, optimization: str = "all", provider: str = "cpu",
                        quantized: bool = False) -> list[str]:
    """ORT graph optimizers every session of ours turns off for the given intra-op thread count (None: all cores),
    and for a `quantized` (QDQ) graph."""
    disabled = list(QDQ_DISABLED_OPTIMIZERS) if quantized and optimization != "disable" else []
    if optimization in ("extended", "all"):
        disabled += SLOW_FUSIONS
    if provider == "cpu" and optimization not in ("disable", "basic") and (threads or os.cpu_count() or 1) > 1:
        disabled += MULTI_THREAD_DISABLED_OPTIMIZERS
    return disabled


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
                                   disabled_optimizers=disabled_optimizers(threads, quantized=has_qdq(proto)))
    batch_dim = session.get_inputs()[0].shape[0]
    return session, batch_dim if isinstance(batch_dim, int) else None


def logits(path, images: np.ndarray, threads: int | None = None) -> np.ndarray:
    """The model's first output on `images`, from a plain session of the file at `path`."""
    import onnx

    session, fixed_batch = session_exposing(onnx.load(str(path)), [], threads)
    return run_in_fixed_batches(session, session.get_inputs()[0].name, fixed_batch, images)[0]
