"""INT8 graphs handed to ONNX Runtime as uint8 on x86 CPUs whose int8 dot product can saturate.

On x86-64 without VNNI (AVX2, or AVX-512 without VNNI: AMD before Zen 4, Intel before Cascade Lake), ONNX Runtime's
MLAS runs u8 x s8 GEMMs with vpmaddubsw, which adds each pair of u8*s8 products into a saturating int16: a pair
of codes near 255 against weights near 127 passes 32767 and is clipped (ORT's s8 x s8 path goes the same way).
Our QDQ files use the full int8 weight range, and MobileNet inputs on the pixel grid reach code 255, so there it
is not rare: MobileNetV2 INT8 fell from 23.5 to 8.6 dB logits SQNR against fp32 (top-1 agreement 89.8%) on an
AMD EPYC (Zen 3), while ORT's reference DequantizeLinear path of the same file kept 23.5 dB. ORT's u8 x u8
kernels widen to int16 before multiplying and never saturate. Moving an int8 tensor and its zero point up by 128
together leaves every dequantized value, and every integer accumulator, exactly as it was; so the session gets
uint8 on such a CPU, and the file keeps int8 weights (what TensorRT, ARM and VNNI CPUs run fastest).
"""

from __future__ import annotations

import platform
import subprocess
from functools import lru_cache

import numpy as np

# (weight input, weight zero-point input) of each node that reads int8 weights in a graph ORT runs on the CPU.
_WEIGHT_INPUTS = {
    ("", "DequantizeLinear"): (0, 2),
    ("com.microsoft", "QAttention"): (1, 7),
    ("com.microsoft", "MatMulIntegerToFloat"): (1, 5),
}
# The activation zero-point input of the contrib kernels export.ort_fusions writes (they read uint8 only).
_FUSED_ACTIVATION_ZERO = {("com.microsoft", "QAttention"): 6, ("com.microsoft", "MatMulIntegerToFloat"): 4}
# Any of these means MLAS has a VNNI kernel (vpdpbusd accumulates in int32, no int16 step).
_VNNI_FLAGS = ("avx512_vnni", "avx512vnni", "avx_vnni", "avxvnni", "amx_int8")


def _x86_cpu_flags() -> set[str] | None:
    """The CPU's feature flags, lower case, or None where this OS does not say (then assume the worst)."""
    system = platform.system()
    try:
        if system == "Linux":
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
                for line in cpuinfo:
                    if line.startswith("flags"):
                        return set(line.split(":", 1)[1].lower().split())
        elif system == "Darwin":
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.features", "machdep.cpu.leaf7_features"],
                                 capture_output=True, text=True, timeout=5, check=False).stdout
            return set(out.lower().split()) or None
    except OSError:
        return None
    return None


@lru_cache(maxsize=1)
def int8_dot_may_saturate() -> bool:
    """Whether ORT's u8 x s8 GEMM on this CPU may saturate: x86-64 without VNNI (or an x86 CPU whose flags this
    OS does not show). ARM's sdot/udot accumulate in int32."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False
    flags = _x86_cpu_flags()
    return flags is None or not any(flag in flags for flag in _VNNI_FLAGS)


def _shift_to_uint8(initializer) -> None:
    from onnx import numpy_helper

    values = numpy_helper.to_array(initializer).astype(np.int16) + 128
    initializer.CopyFrom(numpy_helper.from_array(values.astype(np.uint8), initializer.name))


def _kind(node) -> tuple[str, str]:
    return ("" if node.domain == "ai.onnx" else node.domain, node.op_type)


def _activation_zero_points(proto, initializers) -> set[str] | None:
    """Zero points of the activations' quantizers (Q/DQ whose input is not a constant, and the fused kernels'
    activation inputs); None if one of them is also read as anything else, so that moving it could change
    another value."""
    found, other = set(), set()
    for node in proto.graph.node:
        kind = _kind(node)
        slot = _FUSED_ACTIVATION_ZERO.get(kind, -1)
        if kind in (("", "QuantizeLinear"), ("", "DequantizeLinear")) and node.input[0] not in initializers:
            slot = 2
        for position, name in enumerate(node.input):
            if name in initializers:
                (found if position == slot else other).add(name)
    return None if found & other else found


def make_int8_unsigned(proto) -> int:
    """Rewrite `proto` in place so that ORT runs its u8 x u8 kernels: each int8 weight initializer and its zero
    point move up by 128 to uint8, and so do int8 activation zero points (our TensorRT target; ORT's s8 x s8 path
    saturates the same way). Exact: every dequantized value stays as it was. Returns how many weight tensors
    moved; only initializers that every reader takes as a weight (or zero point) are moved."""
    import onnx

    initializers = {i.name: i for i in proto.graph.initializer}
    activation_zeros = _activation_zero_points(proto, initializers)
    if activation_zeros is None:
        return 0
    if any(initializers[z].data_type == onnx.TensorProto.INT8 for z in activation_zeros):
        if any(initializers[z].data_type != onnx.TensorProto.INT8 for z in activation_zeros):
            return 0  # mixed activation types: leave such a graph as it is
        for name in sorted(activation_zeros):
            _shift_to_uint8(initializers[name])
    roles: dict[str, set[str]] = {}
    pairs = set()
    for node in proto.graph.node:
        slots = _WEIGHT_INPUTS.get(_kind(node), (-1, -1))
        for position, name in enumerate(node.input):
            role = {slots[0]: "weight", slots[1]: "zero"}.get(position, "other")
            roles.setdefault(name, set()).add(role)
        if len(node.input) > slots[1] >= 0 and all(node.input[i] in initializers for i in slots):
            pairs.add((node.input[slots[0]], node.input[slots[1]]))
    movable = {(w, z) for w, z in pairs
               if roles[w] == {"weight"} and roles[z] == {"zero"}
               and initializers[w].data_type == onnx.TensorProto.INT8
               and initializers[z].data_type == onnx.TensorProto.INT8}
    while True:  # a weight or zero point shared with a pair that cannot move stays where it is
        stuck = {name for pair in pairs - movable for name in pair}
        kept = {(w, z) for w, z in movable if w not in stuck and z not in stuck}
        if kept == movable:
            break
        movable = kept
    for name in sorted({name for pair in movable for name in pair}):
        _shift_to_uint8(initializers[name])
    return len({w for w, _ in movable})
