"""ONNX export from the export-ready model form: simplified, checked, stamped, written atomically."""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from t2tedge import __version__
from t2tedge import metadata_keys as keys
from t2tedge.errors import DataError, T2TEdgeError
from t2tedge.export.common import build_model, class_labels
from t2tedge.fileio import atomic_path
from t2tedge.onnx_graph import external_data_files
from t2tedge.models import get_spec

MIN_OPSET, MAX_OPSET = 13, 21
DEFAULT_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "image", "logits"


@dataclass(frozen=True)
class OnnxExportOptions:
    opset: int = DEFAULT_OPSET
    batch: int = 1
    dynamic_batch: bool = False
    simplify: bool = True

    def __post_init__(self) -> None:
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise T2TEdgeError(f"opset {self.opset} is not supported; choose {MIN_OPSET}..{MAX_OPSET} (default {DEFAULT_OPSET})")
        if self.batch < 1:
            raise T2TEdgeError(f"batch must be >= 1, got {self.batch}")


def artifact_name(model_name: str, options: OnnxExportOptions) -> str:
    if options.dynamic_batch:
        return f"{model_name}_dynbatch.onnx"
    return f"{model_name}.onnx" if options.batch == 1 else f"{model_name}_bs{options.batch}.onnx"


def trace_to_onnx(model: torch.nn.Module, options: OnnxExportOptions, input_size: int = 224) -> onnx.ModelProto:
    """Raw torch.onnx (TorchScript exporter) output, before simplification."""
    dummy = torch.zeros(options.batch, 3, input_size, input_size)
    dynamic_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if options.dynamic_batch else None
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (dummy,), buffer, dynamo=False, opset_version=options.opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=dynamic_axes,
                          do_constant_folding=True)
    return onnx.load_from_string(buffer.getvalue())


def _onnxsim(proto: onnx.ModelProto, options: OnnxExportOptions, input_size: int) -> onnx.ModelProto:
    import onnxsim

    with contextlib.redirect_stdout(io.StringIO()):  # onnxsim prints its check progress
        simplified, ok = onnxsim.simplify(proto, check_n=1, test_input_shapes=None if not options.dynamic_batch
                                          else {INPUT_NAME: [2, 3, input_size, input_size]})
    if not ok:
        raise T2TEdgeError("onnxsim could not validate the simplified graph against the original")
    return simplified


def _onnxslim(proto: onnx.ModelProto, options: OnnxExportOptions, input_size: int) -> onnx.ModelProto:
    import onnxslim

    # FusionGemm would rewrite each 3-D token Linear (MatMul + Add) as Reshape-Gemm-Reshape: more nodes, and ORT's
    # Gemm adds its bias on one thread (see t2tedge.ort_session.MULTI_THREAD_DISABLED_OPTIMIZERS).
    with contextlib.redirect_stdout(io.StringIO()):
        return onnxslim.slim(onnx.ModelProto.FromString(proto.SerializeToString()), skip_fusion_patterns=["FusionGemm"])


SIMPLIFIERS = {"onnxsim": _onnxsim, "onnxslim": _onnxslim}


def simplify(proto: onnx.ModelProto, options: OnnxExportOptions, input_size: int = 224) -> tuple[onnx.ModelProto, str]:
    """Run both simplifiers and keep the graph with fewer nodes (ties: onnxsim, which also checks numerics).

    Measured on T2T-ViT-7: static batch, onnxsim 324 nodes vs onnxslim 288; dynamic batch, onnxsim 364 vs
    onnxslim 301, because onnxsim rewrites each 3-D MatMul+Add as Reshape-Gemm-Reshape (26 Gemms) and onnxslim,
    with its Gemm fusion off, keeps them as they are.
    """
    candidates = [(len(graph.graph.node), name, graph) for name, graph in
                  ((name, fn(proto, options, input_size)) for name, fn in SIMPLIFIERS.items())]
    nodes, name, graph = min(candidates, key=lambda c: (c[0], c[1] != "onnxsim"))
    return graph, name


def stamp_metadata(proto: onnx.ModelProto, model_name: str, weights: str, opset: int, simplifier: str) -> None:
    spec = get_spec(model_name)
    num_classes = proto.graph.output[0].type.tensor_type.shape.dim[-1].dim_value or 1000
    props = {
        keys.MODEL: model_name,
        keys.FAMILY: spec.family,
        keys.PREPROCESS: json.dumps(spec.preprocess.to_dict(), sort_keys=True),
        keys.PADDING: spec.padding,
        keys.INPUT_LAYOUT: "NCHW float32, RGB, normalised as in t2tedge.preprocess",
        keys.CLASS_ORDER: ",".join(class_labels(num_classes)),
        keys.WEIGHTS: weights,
        keys.VERSION: __version__,
        keys.OPSET: str(opset),
        keys.SIMPLIFIER: simplifier,
    }
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name, proto.producer_version = "t2t-edge", __version__
    proto.doc_string = f"{model_name} exported by t2t-edge {__version__}; weights: {weights}"


def read_metadata(proto_or_path: onnx.ModelProto | str | os.PathLike) -> dict[str, str]:
    proto = proto_or_path if isinstance(proto_or_path, onnx.ModelProto) else onnx.load(
        str(proto_or_path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def load_onnx_graph(path: str | os.PathLike) -> onnx.ModelProto:
    """The model in `path` without its external data, or a DataError when it is not an ONNX model with a graph."""
    path = Path(path)
    if path.is_dir() or not path.is_file():
        raise DataError(f"ONNX file not found: {path}" if not path.exists() else f"{path} is a folder, not an ONNX file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf decode errors have no common base class
        raise DataError(f"{path} is not a readable ONNX model ({type(exc).__name__}); pass the .onnx that "
                        f"`t2tedge export onnx` wrote") from None
    if not proto.graph.node or not proto.graph.input or not proto.graph.output:
        raise DataError(f"{path} is not a readable ONNX model (no graph); pass the .onnx that `t2tedge export onnx` wrote")
    external_data_files(path, proto)  # a data file missing or cut short is named here, before any runtime reads it
    return proto


def check_onnx_fits(path: str | os.PathLike, model_name: str, num_classes: int | None = None,
                    force: bool = False) -> str | None:
    """Refuse an ONNX file that is not what the command says it is: another model stamped in its metadata, another
    class count, another input size. `force` accepts a mismatch (a user's own export with other names). Returns the
    note a command prints for a file we did not make (no t2tedge metadata): it is run as the model the command
    names, with that model's preprocessing (the one rule of every command that names a model; `profile`, which
    names none, asks for --model)."""
    proto = load_onnx_graph(path)
    stamped = read_metadata(proto).get(keys.MODEL)
    note = None if stamped else (f"note: {Path(path).name} carries no t2tedge metadata; it is run as {model_name}, "
                                 f"with {model_name}'s preprocessing and class order")
    if force:
        return note
    hint = "; name the right model, or pass --force to use the file anyway"
    if stamped and stamped != model_name:
        raise DataError(f"{path} holds {stamped}, but the command names {model_name}{hint}")
    output = proto.graph.output[0].type.tensor_type.shape.dim
    classes = output[-1].dim_value if output else 0
    if num_classes is not None and classes and classes != num_classes:
        raise DataError(f"{path} has {classes} classes, but the command expects {num_classes} "
                        f"(--num-classes {classes} for a fine-tune){hint}")
    crop = get_spec(model_name).preprocess.crop
    size = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim[2:]]
    if all(size) and size and size != [crop, crop]:
        raise DataError(f"{path} takes {'x'.join(map(str, size))} images, but {model_name} takes {crop}x{crop}{hint}")
    return note


def export_onnx(model_name: str, checkpoint: str | os.PathLike | None = None, out_dir: str | os.PathLike = "artifacts/onnx",
                options: OnnxExportOptions = OnnxExportOptions(), destination: str | os.PathLike | None = None,
                **overrides) -> Path:
    """Export `model_name` to ONNX and return the written path."""
    spec = get_spec(model_name)
    model, weights = build_model(model_name, checkpoint, **overrides)
    proto = trace_to_onnx(model, options, spec.preprocess.crop)
    simplifier = "none"
    if options.simplify:
        proto, simplifier = simplify(proto, options, spec.preprocess.crop)
    proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    stamp_metadata(proto, model_name, weights, options.opset, simplifier)
    onnx.checker.check_model(proto, full_check=True)
    destination = Path(destination) if destination else Path(out_dir) / artifact_name(model_name, options)
    with atomic_path(destination, suffix=".onnx") as tmp:
        tmp.write_bytes(proto.SerializeToString(deterministic=True))
    return destination
