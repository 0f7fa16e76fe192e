"""Build what a runtime consumes from a model name and weights, so callers only name runtimes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from t2tedge.errors import T2TEdgeError
from t2tedge.models import create_model


def build_artifact(consumes: str, model_name: str, checkpoint: str | os.PathLike | None, workdir: Path,
                   onnx_path: str | os.PathLike | None = None, dynamic_batch: bool = True, **overrides) -> Any:
    if consumes == "torch":
        return create_model(model_name, checkpoint=checkpoint, **overrides)
    if consumes == "onnx":
        if onnx_path is not None:
            if not Path(onnx_path).is_file():
                raise T2TEdgeError(f"ONNX file not found: {onnx_path}")
            return Path(onnx_path)
        from t2tedge.export import OnnxExportOptions, export_onnx

        return export_onnx(model_name, checkpoint, out_dir=workdir,
                           options=OnnxExportOptions(dynamic_batch=dynamic_batch), **overrides)
    if consumes == "coreml":
        from t2tedge.export.coreml_export import CoreMLExportOptions, export_coreml

        # Raw logits, so parity against other runtimes compares the same quantity.
        return export_coreml(model_name, checkpoint, out_dir=workdir, options=CoreMLExportOptions(output="logits"),
                             progress=False, **overrides)
    if consumes == "tflite":
        from t2tedge.quantize.litert_ptq import export_litert_model

        return export_litert_model(model_name, checkpoint, out_dir=workdir, **overrides)[0]
    if consumes == "pte":
        from t2tedge.quantize.executorch_ptq import export_executorch_model

        return export_executorch_model(model_name, checkpoint, out_dir=workdir, progress=False, **overrides)[0]
    raise T2TEdgeError(f"no artifact builder for {consumes!r} yet")
