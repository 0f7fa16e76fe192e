"""ORT format (.ort) for ONNX Runtime Mobile, written by onnxruntime's own converter."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from t2tedge.errors import DataError, T2TEdgeError, first_line
from t2tedge.onnx_graph import external_data_files
from t2tedge.fileio import atomic_path

STYLES = {"fixed": "Fixed", "runtime": "Runtime"}
PLATFORMS = ("arm", "amd64")


def export_ort(onnx_path: str | os.PathLike, out_dir: str | os.PathLike | None = None, style: str = "fixed",
               platform: str = "arm") -> tuple[Path, Path]:
    """Convert `onnx_path`; return the .ort file and the required-operators config (for a minimal ORT build).

    `fixed` bakes in the optimizations for `platform`'s CPU kernels (smallest, fastest to load); `runtime`
    leaves them to session creation, which an execution provider like XNNPACK needs in order to claim nodes.
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise T2TEdgeError(f"ONNX file not found: {onnx_path}")
    if style not in STYLES or platform not in PLATFORMS:
        raise T2TEdgeError(f"ORT format: style is one of {', '.join(STYLES)}, platform one of {', '.join(PLATFORMS)}")
    try:
        external_data_files(onnx_path)  # a missing or cut data file, in one line of ours
    except DataError:
        raise
    except Exception as exc:  # onnx raises DecodeError, ValueError, ... for a file that is not a model
        raise T2TEdgeError(f"cannot read {onnx_path}: {first_line(exc)}") from None
    out_dir = Path(out_dir) if out_dir else onnx_path.parent
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", "--output_dir", tmp,
                   "--optimization_style", STYLES[style], "--target_platform", platform, str(onnx_path)]
        done = subprocess.run(command, capture_output=True, text=True)
        produced = sorted(Path(tmp).glob("*.ort"))
        if done.returncode != 0 or not produced:
            detail = (done.stderr or done.stdout).strip().splitlines()
            raise T2TEdgeError(f"onnxruntime's ORT-format converter failed on {onnx_path.name}: "
                               f"{detail[-1] if detail else 'no output'}")
        configs = sorted(Path(tmp).glob("*.config"))
        ort_file = out_dir / f"{onnx_path.stem}.ort"
        config_file = out_dir / f"{onnx_path.stem}.required_operators.config"
        with atomic_path(ort_file, suffix=".ort") as staged:
            staged.write_bytes(produced[0].read_bytes())
        with atomic_path(config_file) as staged:
            staged.write_bytes(configs[0].read_bytes() if configs else b"")
    return ort_file, config_file
