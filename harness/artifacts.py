"""The file a target runs for a model, built the way `t2tedge export` builds it, or a given ONNX file."""

from __future__ import annotations

import os
from pathlib import Path

from t2tedge.errors import DataError, UsageError
from t2tedge.targets import BuildRequest, Target


def takes_onnx(target: Target) -> bool:
    """Whether `target`'s runtime runs an .onnx file as it is (ONNX Runtime, OpenVINO, TensorRT)."""
    return target.runs(Path("model.onnx")) or target.from_onnx


def artifact_for(target: Target, model_name: str, checkpoint: str | os.PathLike | None, workdir: Path,
                 onnx_path: str | os.PathLike | None = None, precision: str = "fp32", num_classes: int = 1000) -> Path:
    """`onnx_path` itself for a target that runs ONNX files; else what `t2tedge export TARGET MODEL --precision
    PRECISION` writes, built into `workdir`."""
    if onnx_path is not None:
        if not takes_onnx(target):
            raise UsageError(f"--onnx goes with runtimes that run ONNX files; {target.name} builds its own file from "
                             f"the model (drop --onnx, or leave {target.name} out)")
        if not Path(onnx_path).is_file():
            raise DataError(f"ONNX file not found: {onnx_path}")
        return Path(onnx_path)
    request = BuildRequest(model=model_name, precision=precision, out_dir=Path(workdir) / target.name,
                           checkpoint=Path(checkpoint) if checkpoint else None, num_classes=num_classes)
    target.check_request(request)
    return target.build(request)
