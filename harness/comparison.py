"""How two files' outputs are compared, the same for every parity command: metrics, and tolerances per precision
(docs/parity.md). Needs no torch: file parity runs where only the runtimes are installed.

Default tolerances per precision of the compared file:
- fp32: max abs diff <= 1e-4 and top-1 agreement 100%;
- fp16: cosine >= 0.999 and top-1 agreement >= 99%;
- bf16: cosine >= 0.99 and top-1 agreement >= 95%;
- int8, w8: cosine >= 0.98 and top-1 agreement >= 90% (a quantized file against a float one);
- int8 files of two runtimes made from one quantization plan: top-1 agreement >= 98% and cosine >= 0.99, set
  from the spread of kernels' rounding measured in docs/quantization-plan.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from t2tedge.errors import T2TEdgeError
from t2tedge.metrics import sqnr_db
from t2tedge.results import ParityPair

# SQNR of identical outputs is infinite (and JSON has no infinity); float32 rounding sits near 140 dB.
SQNR_CAP_DB = 150.0
TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"max_abs": 1e-4, "top1_agreement": 1.0},
    "fp16": {"cosine": 0.999, "top1_agreement": 0.99},
    # bf16 keeps 8 significant bits: OpenVINO's bf16 path measured 20-44 dB logits SQNR (MobileNetV2, T2T-ViT-7).
    "bf16": {"cosine": 0.99, "top1_agreement": 0.95},
    "int8": {"cosine": 0.98, "top1_agreement": 0.90},
    # Two runtimes' INT8 files of one plan: what differs is each kernel's rounding and what a runtime did not honour.
    "int8_vs_int8": {"cosine": 0.99, "top1_agreement": 0.98},
    # LiteRT's dynamic-range int8 (int8 weights, activations quantized per batch by the kernels).
    "w8": {"cosine": 0.98, "top1_agreement": 0.90},
}


def compare(reference: np.ndarray, candidate: np.ndarray, precision: str = "fp32",
            tolerance: dict[str, float] | None = None) -> dict[str, Any]:
    """Polygraphy-style comparison of two logit arrays (N, classes)."""
    if reference.shape != candidate.shape:
        raise T2TEdgeError(f"output shapes differ: {reference.shape} vs {candidate.shape}")
    ref, cand = reference.astype(np.float64), candidate.astype(np.float64)
    diff = np.abs(ref - cand)
    finite = bool(np.isfinite(cand).all())
    cos = np.sum(ref * cand, axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1) + 1e-30)
    top5_ref, top5_cand = np.argsort(-ref, axis=1)[:, :5], np.argsort(-cand, axis=1)[:, :5]
    overlap = np.mean([len(set(a) & set(b)) / 5.0 for a, b in zip(top5_ref, top5_cand)])
    metrics = {
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "max_rel": float((diff / (np.abs(ref) + 1e-6)).max()),
        "cosine": float(cos.min()),
        "top1_agreement": float(np.mean(ref.argmax(1) == cand.argmax(1))),
        "top5_overlap": float(overlap),
    }
    tolerance = tolerance or TOLERANCES.get(precision, TOLERANCES["fp32"])
    failures = [] if finite else ["non-finite outputs"]
    for key, bound in tolerance.items():
        value = metrics[key]
        if (key in ("max_abs", "mean_abs", "max_rel") and not value <= bound) or \
                (key not in ("max_abs", "mean_abs", "max_rel") and not value >= bound):
            failures.append(f"{key}={value:.6g} (limit {bound:g})")
    return {**metrics, "tolerance": tolerance, "passed": not failures, "failures": failures}


def capped_sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """SQNR of `candidate` against `reference`, at most SQNR_CAP_DB."""
    return min(sqnr_db(reference, candidate), SQNR_CAP_DB)


def compare_pair(first: str, second: str, reference: np.ndarray, candidate: np.ndarray, key: str,
                 tolerance: dict[str, float] | None = None) -> ParityPair:
    """`compare` as a typed pair: `candidate` (named `second`) against `reference` (`first`) within the tolerance
    `key` of TOLERANCES, or `tolerance` where given."""
    result = compare(reference, candidate, key, tolerance or TOLERANCES.get(key, TOLERANCES["fp32"]))
    return ParityPair(first=first, second=second, tolerance_key=key, sqnr_db=capped_sqnr_db(reference, candidate),
                      **{k: result[k] for k in ("tolerance", "max_abs", "mean_abs", "max_rel", "cosine",
                                            "top1_agreement", "top5_overlap", "passed", "failures")})


