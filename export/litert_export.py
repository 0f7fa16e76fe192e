"""LiteRT (TensorFlow Lite) `.tflite` files from our models, with litert-torch, and their sidecar metadata.

The input layout defaults to NHWC float32, what an Android app fills from a bitmap. LiteRT's flatbuffer has no
field for our preprocessing and class order, so they travel in a sidecar JSON beside the file
(`MODEL.tflite.json`, see `t2tedge.sidecar`), written and moved into place together with it. Quantized variants
are made from the fp32 file by `t2tedge.quantize.litert_ptq`; `t2tedge.targets.litert` ties the steps together.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from t2tedge import metadata_keys as keys
from t2tedge.errors import T2TEdgeError, first_line, require_installed
from t2tedge.export.common import artifact_metadata
from t2tedge.fileio import staging_prefix
from t2tedge.native_output import native_output_captured
from t2tedge.models import get_spec

LAYOUTS = ("nhwc", "nchw")
INSTALL = "'t2t-edge[litert]'"


class ChannelsLast(torch.nn.Module):
    """Takes NHWC images, as an app hands them over; the converter folds the transpose into the NHWC convolutions."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.permute(0, 3, 1, 2))


def _failure_line(exc: Exception, log: Path) -> str:
    """One line naming what the converter refused (an op, when its messages name one)."""
    text = f"{exc}\n{log.read_text(errors='replace') if log.is_file() else ''}"
    for pattern in (r"failed to legalize operation '([\w.]+)'", r"'([\w.]+)' op [^\n]*not supported",
                    r"(aten\.[\w.]+)[^\n]*(?:not supported|no lowering|unsupported)"):
        match = re.search(pattern, text)
        if match:
            return f"op {match.group(1)} cannot be converted ({first_line(exc, 160)})"
    return first_line(exc)


def convert_module(module: torch.nn.Module, sample: torch.Tensor, destination: Path) -> None:
    """litert-torch conversion of `module` on `sample`, written to `destination` (a staging path). The converter
    writes into a scratch folder of the system temp and Python copies the file over: LLVM ends the whole process
    (exit 1, no Python exception) when its output stream fails, so a full --out disk must meet Python's write,
    which raises and lets the staging folder be removed."""
    require_installed("litert_torch", INSTALL)
    print("converting with litert-torch ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix=staging_prefix("litert")) as scratch:
        written = Path(scratch) / destination.name
        with native_output_captured() as log:
            try:
                import litert_torch

                converted = litert_torch.convert(module, (sample,))
                converted.export(str(written))
            except Exception as exc:  # the converter raises many types, with pages of MLIR
                raise T2TEdgeError(f"LiteRT conversion failed: {_failure_line(exc, log)}") from None
        try:
            shutil.copyfile(written, destination)
        except OSError as exc:  # named by the file being written, not by the scratch copy
            raise OSError(exc.errno, exc.strerror, str(destination)) from None


def input_metadata(layout: str, precision: str) -> dict[str, str]:
    """What the file's input takes, in words: the part of the metadata that depends on the precision."""
    kind = ("int8 (round(x / scale) + zero_point with the input tensor's quantization) of RGB"
            if precision == "int8" else "float32 RGB")
    return {keys.PRECISION: precision,
            keys.INPUT: f"{layout.upper()} {kind}, normalised as in t2tedge.preprocess"}


def litert_metadata(model_name: str, weights: str, layout: str, precision: str, num_classes: int) -> dict[str, Any]:
    description = input_metadata(layout, precision)[keys.INPUT]
    return artifact_metadata(model_name, weights, layout, precision, num_classes, description)


def check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise T2TEdgeError(f"unknown input layout {layout!r}; choose {', '.join(LAYOUTS)}")


def convert_fp32(model: torch.nn.Module, model_name: str, weights: str, staging: Path, layout: str = "nhwc",
                 num_classes: int = 1000) -> tuple[Path, dict[str, Any]]:
    """The fp32 .tflite of the export-form `model` (of `model_name`, weights stamped as `weights`) in `staging`,
    and its metadata (not yet published)."""
    check_layout(layout)
    crop = get_spec(model_name).preprocess.crop
    module = ChannelsLast(model).eval() if layout == "nhwc" else model
    sample = torch.zeros(1, crop, crop, 3) if layout == "nhwc" else torch.zeros(1, 3, crop, crop)
    staged = staging / f"{model_name}.tflite"
    convert_module(module, sample, staged)
    return staged, litert_metadata(model_name, weights, layout, "fp32", num_classes)
