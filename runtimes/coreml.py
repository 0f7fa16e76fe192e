"""Core ML through coremltools (macOS only: `MLModel.predict` needs the Core ML framework)."""

from __future__ import annotations

import json
import os
import platform
import time
from typing import Any

import numpy as np

from t2tedge import metadata_keys as keys
from t2tedge.errors import T2TEdgeError, first_line, missing_package
from t2tedge.runtimes.base import Runtime, RuntimeDescription

COMPUTE_UNITS = ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE")


class CoreML(Runtime):
    """Takes the same normalised NCHW batch as every runtime and turns it back into the RGB pixels the package's
    image input expects (the package applies the normalisation itself). Returns logits when the package has a
    `logits` output; for a classifier package, log-probabilities (logits up to a per-row constant)."""

    name = "coreml"
    consumes = "coreml"
    no_op_timing = ("coremltools reports no per-layer times (Xcode's Core ML performance report and Instruments "
                    "do, on a Mac or iPhone)")
    libraries = ("coremltools",)

    def __init__(self, mlmodel, path: str, compute_units: str, load_seconds: float) -> None:
        self.mlmodel = mlmodel
        self.path = path
        self.compute_units = compute_units
        self.load_seconds = load_seconds
        spec = mlmodel.get_spec()
        self.input_name = spec.description.input[0].name
        self.probabilities_name = spec.description.predictedProbabilitiesName or None
        self.output_name = spec.description.output[0].name if not self.probabilities_name else None
        meta = dict(mlmodel.user_defined_metadata)
        self.preprocess = json.loads(meta[keys.PREPROCESS]) if keys.PREPROCESS in meta else None
        labels = meta.get(keys.CLASS_ORDER, "")
        self.num_labels = len(labels.split(",")) if labels else None
        self.precision = meta.get(keys.PRECISION, "fp16")
        self.compress = meta.get(keys.COMPRESS, "none")
        self.labels: list[Any] | None = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if platform.system() != "Darwin":
            return "Core ML predicts only on macOS (coremltools converts and checks packages elsewhere)"
        return missing_package("coremltools", "'t2t-edge[coreml]'")

    @classmethod
    def load(cls, artifact: str | os.PathLike, *, threads: int | None = None, compute_units: str = "ALL",
             **options: Any) -> "CoreML":
        import coremltools as ct

        if compute_units not in COMPUTE_UNITS:
            raise T2TEdgeError(f"unknown compute units {compute_units!r}; choose {', '.join(COMPUTE_UNITS)}")
        start = time.perf_counter()
        try:
            mlmodel = ct.models.MLModel(str(artifact), compute_units=getattr(ct.ComputeUnit, compute_units))
        except Exception as exc:  # Core ML raises assorted types for unreadable packages
            raise T2TEdgeError(f"Core ML cannot load {artifact}: {first_line(exc)}") from None
        return cls(mlmodel, str(artifact), compute_units, time.perf_counter() - start)

    def _to_pixels(self, image: np.ndarray):
        from PIL import Image

        if self.preprocess is None:
            raise T2TEdgeError(f"{self.path} has no t2tedge.preprocess metadata; export it with t2tedge")
        mean = np.asarray(self.preprocess["mean"], np.float32).reshape(3, 1, 1)
        std = np.asarray(self.preprocess["std"], np.float32).reshape(3, 1, 1)
        pixels = np.clip(np.rint((image * std + mean) * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(pixels.transpose(1, 2, 0), mode="RGB")

    def run(self, batch: np.ndarray) -> np.ndarray:
        rows = []
        for image in np.asarray(batch, np.float32):
            result = self.mlmodel.predict({self.input_name: self._to_pixels(image)})
            if self.probabilities_name:
                probabilities = result[self.probabilities_name]
                if self.labels is None:
                    self.labels = list(probabilities)  # the package's label order is the class-index order
                row = np.log(np.maximum(np.array([probabilities[k] for k in self.labels], np.float64), 1e-30))
                rows.append(row.astype(np.float32))
            else:
                rows.append(np.asarray(result[self.output_name], np.float32).reshape(-1))
        return np.stack(rows)

    def describe(self) -> RuntimeDescription:
        import coremltools as ct

        return RuntimeDescription(
            runtime=self.name, version=ct.__version__, precision=self.precision,
            device=f"{platform.machine()} macOS {platform.mac_ver()[0]} ({self.compute_units})", threads=None,
            details={"compute_units": self.compute_units, "compress": self.compress,
                     "load_seconds": round(self.load_seconds, 4),
                     "output": "log-probabilities" if self.probabilities_name else "logits"})
