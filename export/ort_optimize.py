"""ONNX files optimized for ONNX Runtime's CPU provider: an explicit, stamped artifact step.

The `onnxruntime` runtime runs a file as it is on disk, so the latency and logits we report are those of
`onnxruntime.InferenceSession(file)` in a user's app. The ORT-only rewrites live here instead, and write a new
file:
- contrib-op fusions (export/ort_fusions.py): T2T-ViT's self-attention as com.microsoft.Attention (QAttention
  where the qkv projection is int8), and each other int8 MatMul with its bias Add as MatMulIntegerToFloat;
- `int8_weights="uint8"`: an INT8 graph's int8 weights moved to uint8 (exact; t2tedge.ort_int8_weights), for x86
  CPUs without VNNI, where ORT's int8 dot products saturate.

The result needs ONNX Runtime (TensorRT, OpenVINO and Core ML take the file it was made from). Its metadata keeps
the source's and says what was done: `t2tedge.ort_optimized` (the fusions), `t2tedge.int8_weights` and
`t2tedge.optimized_from` (the source's name and sha256).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from t2tedge import metadata_keys as keys
from t2tedge.errors import T2TEdgeError, UsageError, first_line
from t2tedge.fileio import atomic_path, ensure_writable_file, sha256_file
from t2tedge.onnx_graph import contrib_op_counts, external_data_files, has_qdq

INT8_WEIGHT_CHOICES = ("int8", "uint8", "auto")
OPTIMIZED_SUFFIX = ".ort-cpu.onnx"


def optimized_path(source: str | os.PathLike) -> Path:
    """Where `optimize_for_onnxruntime` writes by default: beside the source, `NAME.ort-cpu.onnx`."""
    source = Path(source)
    return source.with_name(source.name.removesuffix(".onnx") + OPTIMIZED_SUFFIX)


def resolve_int8_weights(choice: str) -> str:
    """`auto`: uint8 where this CPU's int8 dot products may saturate (x86 without VNNI), int8 elsewhere."""
    from t2tedge.ort_int8_weights import int8_dot_may_saturate

    if choice not in INT8_WEIGHT_CHOICES:
        raise UsageError(f"unknown --int8-weights {choice!r}; choose {', '.join(INT8_WEIGHT_CHOICES)}")
    if choice == "auto":
        return "uint8" if int8_dot_may_saturate() else "int8"
    return choice


def optimize_for_onnxruntime(source: str | os.PathLike, destination: str | os.PathLike | None = None,
                             int8_weights: str = "int8") -> tuple[Path, dict[str, Any]]:
    """Write the ONNX Runtime CPU form of `source` to `destination` (default: `optimized_path(source)`), moved into
    place whole. Returns (path, report: fusions per contrib op, int8 weight tensors moved, the source's digest)."""
    import onnx

    from t2tedge.export.ort_fusions import fuse_int8_matmul_bias, fuse_self_attention
    from t2tedge.ort_int8_weights import make_int8_unsigned

    source = Path(source)
    weights = resolve_int8_weights(int8_weights)
    if source.suffix != ".onnx":
        raise UsageError(f"{source.name} is not an .onnx file")
    if not source.is_file():
        raise T2TEdgeError(f"ONNX file not found: {source}")
    target = ensure_writable_file(destination or optimized_path(source), suffix=".onnx")
    if target.resolve() == source.resolve():
        raise UsageError(f"--out {target} is the source file; name another file")
    try:
        external_data_files(source)  # a missing or cut data file, in one line of ours
        proto = onnx.load(str(source))
    except T2TEdgeError:
        raise
    except Exception as exc:  # onnx raises DecodeError, ValueError, ... for a file that is not a model
        raise T2TEdgeError(f"cannot read {source}: {first_line(exc)}") from None
    metadata = {prop.key: prop.value for prop in proto.metadata_props}
    if keys.ORT_OPTIMIZED in metadata:
        raise UsageError(f"{source.name} is already optimized for ONNX Runtime ({metadata[keys.ORT_OPTIMIZED]}); "
                         f"optimize the file it was made from ({metadata.get(keys.OPTIMIZED_FROM, 'unknown')})")
    quantized = has_qdq(proto)
    fuse_self_attention(proto)
    if quantized:
        fuse_int8_matmul_bias(proto)
    moved = make_int8_unsigned(proto) if quantized and weights == "uint8" else 0
    fusions = contrib_op_counts(proto)
    digest = sha256_file(source)
    stamps = {keys.ORT_OPTIMIZED: ",".join(f"{op} x{n}" for op, n in fusions.items()) or "none",
              keys.INT8_WEIGHTS: ("uint8" if moved else "int8") if quantized else "none",
              keys.OPTIMIZED_FROM: f"{source.name} sha256:{digest}"}
    for key, value in stamps.items():
        proto.metadata_props.add(key=key, value=value)
    with atomic_path(target, suffix=".onnx") as tmp:
        tmp.write_bytes(proto.SerializeToString(deterministic=True))
    return target, {"fusions": fusions, "int8_weight_tensors_moved": moved, "quantized": quantized,
                    "source": str(source), "source_sha256": digest}
