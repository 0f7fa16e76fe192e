"""Per-node PTQ sensitivity and the mixed-precision search that keeps the most sensitive nodes in float.

Both speak QuantConfig: the search returns the config (with per-node-name `None` entries) it settled on.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from t2tedge.metrics import sqnr_db
from t2tedge.ort_session import logits as ort_logits
from t2tedge.quantize.config import FOLDABLE_ACTIVATIONS, QuantConfig, nodes_to_quantize
from t2tedge.quantize.ptq import quantize_onnx


@dataclass
class Agreement:
    top1_agreement: float
    sqnr_db: float
    images: int

    @classmethod
    def of(cls, reference: np.ndarray, candidate: np.ndarray) -> "Agreement":
        return cls(float(np.mean(reference.argmax(1) == candidate.argmax(1))), sqnr_db(reference, candidate),
                   len(reference))

    @property
    def standard_error(self) -> float:
        """Binomial standard error of the agreement. Which images flip depends on the sub-step rounding of
        every activation, so two variants a few tenths of a dB apart differ by about this much at random
        (MobileNetV2 on 744 held-out images: 0.4%, against a 1% disagreement budget at target 0.99). The
        rate is taken with one agreeing and one disagreeing image added (Laplace), so that 48 of 48 reads
        as 100% ± 2.0% rather than as certain."""
        if not self.images:
            return float("inf")
        agreeing = round(self.top1_agreement * self.images)
        rate = (agreeing + 1) / (self.images + 2)
        return float(np.sqrt(rate * (1 - rate) / self.images))

    def resolves(self, target: float) -> bool:
        """Whether the agreement lies more than one standard error from `target`, so that the held-out images
        tell on which side of it the model is."""
        return abs(self.top1_agreement - target) > self.standard_error

    def describe(self) -> str:
        return (f"top-1 agreement {100 * self.top1_agreement:.1f}% ± {100 * self.standard_error:.1f}% (1 s.e., "
                f"{self.images} images), logits SQNR {self.sqnr_db:.1f} dB")

    def to_dict(self) -> dict:
        return {"top1_agreement": self.top1_agreement, "top1_agreement_standard_error": self.standard_error,
                "sqnr_db": self.sqnr_db, "images": self.images}


class PTQSession:
    """One fp32 model, one calibration, many quantization variants scored on held-out images."""

    def __init__(self, fp32_path: str | os.PathLike, reader, config: QuantConfig, held_out: np.ndarray,
                 workdir: str | os.PathLike | None = None, threads: int | None = None) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="t2tedge-sensitivity-") if workdir is None else None
        self.workdir = Path(workdir or self._tmp.name)
        self.fp32_path = Path(fp32_path)
        self.config = config
        self.held_out = held_out
        self.threads = threads
        self.ranges = self.workdir / "ranges.json"
        self.reference = self._logits(self.fp32_path)
        self.full_path = self.workdir / "full_int8.onnx"
        self.full_report = quantize_onnx(self.fp32_path, self.full_path, reader, config, ranges_cache=self.ranges)
        self.full = Agreement.of(self.reference, self._logits(self.full_path))
        graph = onnx.load(str(self.fp32_path), load_external_data=False).graph
        self.graph = graph
        kinds = {n.name: n.op_type for n in graph.node}
        self.candidates = [n for n in nodes_to_quantize(config, graph) if kinds[n] not in FOLDABLE_ACTIVATIONS]
        self._count = 0

    def _logits(self, path: Path) -> np.ndarray:
        return ort_logits(path, self.held_out, self.threads)

    def score(self, config: QuantConfig) -> Agreement:
        self._count += 1
        path = self.workdir / f"variant_{self._count}.onnx"
        quantize_onnx(self.fp32_path, path, None, config, ranges_cache=self.ranges)
        try:
            return Agreement.of(self.reference, self._logits(path))
        finally:
            path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def analyse(session: PTQSession, progress: Callable | None = None) -> list[dict]:
    """For every quantizable node: the model with only that node left in float (what keeping it float buys),
    sorted most sensitive first."""
    from tqdm import tqdm

    rows = []
    for name in tqdm(session.candidates, desc="sensitivity", unit="node", leave=False, disable=progress is False):
        skipped = session.score(session.config.with_float([name], session.graph))
        rows.append({"node": name, "float_top1_agreement": skipped.top1_agreement, "float_sqnr_db": skipped.sqnr_db,
                     "sqnr_gain_db": skipped.sqnr_db - session.full.sqnr_db})
    return sorted(rows, key=lambda r: (-r["sqnr_gain_db"], r["node"]))


def mixed_precision(session: PTQSession, ranking: list[dict], target_agreement: float,
                    max_float: int | None = None) -> tuple[QuantConfig, list[str], Agreement]:
    """Keep the most sensitive nodes in float, one at a time, until top-1 agreement reaches the target."""
    kept: list[str] = []
    config, achieved = session.config, session.full
    limit = len(ranking) if max_float is None else min(max_float, len(ranking))
    for row in ranking[:limit]:
        if achieved.top1_agreement >= target_agreement:
            break
        kept.append(row["node"])
        config = session.config.with_float(kept, session.graph)
        achieved = session.score(config)
    return config, kept, achieved
