"""OpenVINO IR (`.xml` + `.bin`) from our ONNX files, with the t2tedge metadata in the IR's rt_info.

OpenVINO reads `.onnx` directly, so IR is optional; it loads faster and can store weights as fp16. An INT8
QDQ file converts to IR with FakeQuantize ops, which OpenVINO's CPU plugin runs as int8 kernels.
"""

from __future__ import annotations

import os
from pathlib import Path

from t2tedge import metadata_keys as keys
from t2tedge.errors import T2TEdgeError, native_message
from t2tedge.fileio import publish_together, staging_dir
from t2tedge.export.onnx_export import read_metadata

WEIGHT_FORMATS = ("fp32", "fp16")


def convert_onnx_to_ir(onnx_path: str | os.PathLike, destination: str | os.PathLike, weights: str = "fp32") -> Path:
    """Write `destination` (.xml, with its .bin beside it) from `onnx_path`; `weights` fp16 halves a float
    model's file (OpenVINO decompresses to the inference precision when it loads). Both files are moved into place
    together, or neither (an earlier pair stays as it was)."""
    import openvino as ov

    if weights not in WEIGHT_FORMATS:
        raise T2TEdgeError(f"unknown IR weight format {weights!r}; choose {', '.join(WEIGHT_FORMATS)}")
    source, destination = Path(onnx_path), Path(destination)
    if destination.suffix != ".xml":
        raise T2TEdgeError(f"OpenVINO IR is written as .xml (+ .bin), not {destination.name}")
    try:
        metadata = {key: value for key, value in read_metadata(source).items() if key.startswith(keys.PREFIX)}
        # read_model, not convert_model: convert_model's offline passes changed INT8 MobileNetV2 logits by up to 0.35
        # against OpenVINO running the same .onnx, and the IR should compute what the .onnx computes there.
        model = ov.Core().read_model(str(source))
    except Exception as exc:  # OpenVINO's converter raises its own types with multi-line texts
        raise T2TEdgeError(f"OpenVINO cannot convert {source}: {native_message(exc)}") from None
    _name_unnamed_nodes(model)
    for key, value in {**metadata, keys.IR_WEIGHTS: weights, keys.SOURCE_ONNX: source.name}.items():
        model.set_rt_info(value, ["t2tedge", key.removeprefix(keys.PREFIX)])
    with staging_dir(destination.parent, destination.stem) as staging:
        ov.save_model(model, str(staging / "model.xml"), compress_to_fp16=weights == "fp16")
        publish_together({staging / "model.bin": destination.with_suffix(".bin"), staging / "model.xml": destination})
    return destination


def _name_unnamed_nodes(model) -> None:
    """Name the nodes the reader created without a name by their place in the graph. Unnamed, the IR gets names
    from a counter of every node the process made before (Constant_20718 after other conversions, Constant_28 in a
    fresh process), so one ONNX file gave IRs of different bytes depending on what ran earlier."""
    for index, node in enumerate(model.get_ordered_ops()):
        if node.get_friendly_name() == node.get_name():
            node.set_friendly_name(f"{node.get_type_name()}_{index}")
