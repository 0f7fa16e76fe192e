"""Check a saved .mlpackage on any OS: its spec, its op set against the deployment target, and its weights.

`MLModel.predict` exists only on macOS, so on Linux the package is verified by reading it back: the spec
(inputs, outputs, target, ops), and the stored (possibly compressed) weights, decompressed and loaded
into the torch model they came from so that accuracy can be measured in torch.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from t2tedge.errors import T2TEdgeError, first_line
from t2tedge.export.coreml_export import require_coremltools

# Ops that store compressed weights, decompressed when the model loads.
COMPRESSED_WEIGHT_OPS = ("constexpr_affine_dequantize", "constexpr_lut_to_dense", "constexpr_blockwise_shift_scale",
                         "constexpr_lut_to_sparse", "constexpr_sparse_to_dense")


@dataclass
class PackageReport:
    path: str
    size_bytes: int
    specification_version: int
    deployment_target: str
    inputs: list[dict[str, Any]]
    outputs: list[str]
    classifier: bool
    op_counts: dict[str, int]
    unsupported_ops: list[str]
    metadata: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def package_size(path: str | os.PathLike) -> int:
    path = Path(path)
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def _load_spec(path: str | os.PathLike):
    ct = require_coremltools()
    path = Path(path)
    if not (path / "Manifest.json").is_file():
        raise T2TEdgeError(f"{path} is not an .mlpackage (no Manifest.json)")
    try:
        mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
    except Exception as exc:  # protobuf and coremltools raise assorted types on a damaged package
        raise T2TEdgeError(f"cannot read Core ML package {path}: {first_line(exc)}") from None
    return mlmodel, mlmodel.get_spec()


def load_program(path: str | os.PathLike):
    """The package's ML Program as a coremltools MIL Program (weights read from the package's blob file)."""
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    mlmodel, spec = _load_spec(path)
    if spec.WhichOneof("Type") != "mlProgram":
        raise T2TEdgeError(f"{path} is not an ML Program (found {spec.WhichOneof('Type')})")
    return milproto_load(spec, spec.specificationVersion, mlmodel.weights_dir)


def _target_name(specification_version: int) -> str:
    import coremltools as ct

    names = [t.name for t in ct.target if t.value == specification_version and t.name.startswith("iOS")]
    return names[0] if names else f"specification {specification_version}"


def _unsupported_ops(op_types: set[str], specification_version: int) -> list[str]:
    """Op types that no opset up to the package's specification version defines."""
    from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry

    bad = []
    for op_type in sorted(op_types):
        versions = SSAOpRegistry.core_ops.get(op_type, {})
        if not any(getattr(v, "value", v) <= specification_version for v in versions):
            bad.append(op_type)
    return bad


def inspect_package(path: str | os.PathLike) -> PackageReport:
    mlmodel, spec = _load_spec(path)
    program = load_program(path)
    counts: dict[str, int] = {}
    for function in program.functions.values():
        for op in function.operations:
            counts[op.op_type] = counts.get(op.op_type, 0) + 1
    inputs = []
    for feature in spec.description.input:
        kind = feature.type.WhichOneof("Type")
        entry: dict[str, Any] = {"name": feature.name, "type": kind}
        if kind == "imageType":
            image = feature.type.imageType
            entry.update(width=image.width, height=image.height,
                         color_space=type(image).ColorSpace.Name(image.colorSpace))
        inputs.append(entry)
    return PackageReport(
        path=str(path), size_bytes=package_size(path), specification_version=spec.specificationVersion,
        deployment_target=_target_name(spec.specificationVersion), inputs=inputs,
        outputs=[o.name for o in spec.description.output], classifier=bool(spec.description.predictedFeatureName),
        op_counts=dict(sorted(counts.items())), unsupported_ops=_unsupported_ops(set(counts), spec.specificationVersion),
        metadata=dict(mlmodel.user_defined_metadata))


def package_weights(path: str | os.PathLike, min_size: int = 2) -> list[tuple[str, str, np.ndarray]]:
    """(op name, op type, dense float32 value) of every stored tensor: plain consts and decompressed constexprs."""
    weights = []
    for function in load_program(path).functions.values():
        for op in function.operations:
            if op.op_type in COMPRESSED_WEIGHT_OPS:
                value = op.materialized_val_inference()
            elif op.op_type == "const":
                value = op.outputs[0].val
            else:
                continue
            if isinstance(value, np.ndarray) and value.dtype.kind == "f" and value.size >= min_size:
                weights.append((op.name, op.op_type, value.astype(np.float32)))
    return weights


@dataclass
class RoundTrip:
    loaded: int
    compressed: int
    unmatched: list[str]
    max_relative_error: float


def load_package_weights(model: nn.Module, path: str | os.PathLike, tolerance: float = 0.5) -> RoundTrip:
    """Replace each parameter of `model` by the package tensor it became, in place.

    Converters rename, fold and reshape consts, so tensors are paired by content: each parameter takes
    the same-sized package tensor (as stored, or transposed for 2-D) nearest to it in relative L2 error.
    `model` must be the network as converted, e.g. with BatchNorm folded the way the converter folds it.
    A parameter with no candidate within `tolerance` is reported unmatched and left as it was.
    """
    stored = package_weights(path)
    by_size: dict[int, list[tuple[str, str, np.ndarray]]] = {}
    for entry in stored:
        by_size.setdefault(entry[2].size, []).append(entry)
    loaded = compressed = 0
    worst = 0.0
    unmatched = []
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.numel() < 2:
                continue
            reference = param.detach().cpu().numpy().astype(np.float32)
            norm = float(np.linalg.norm(reference)) or 1.0
            best = None
            for _, op_type, value in by_size.get(reference.size, []):
                views = [value.reshape(reference.shape)]
                if value.ndim == 2 and value.shape[::-1] == reference.shape:
                    views.append(value.T)
                for view in views:
                    error = float(np.linalg.norm(view - reference)) / norm
                    if best is None or error < best[0]:
                        best = (error, op_type, view)
            if best is None or best[0] > tolerance:
                unmatched.append(name)
                continue
            param.copy_(torch.from_numpy(np.ascontiguousarray(best[2])))
            loaded += 1
            compressed += best[1] in COMPRESSED_WEIGHT_OPS
            worst = max(worst, best[0])
    return RoundTrip(loaded=loaded, compressed=compressed, unmatched=unmatched, max_relative_error=worst)


def activation_scales(path: str | os.PathLike) -> list[float]:
    """Scales of the package's activation quantize and dequantize ops (w8a8), in program order.

    Dequantize scales count too: the converter rewrites a quantized add as s2 * (dq(x, s1/s2) + dq(y, 1)),
    so the calibrated output scale of a residual add survives on the dequantize that follows it.
    """
    scales = []
    for function in load_program(path).functions.values():
        for op in function.operations:
            if op.op_type in ("quantize", "dequantize") and op.scale.val is not None:
                scales.extend(np.atleast_1d(np.asarray(op.scale.val, dtype=np.float32)).tolist())
    return scales


def roundtrip_network(model_name: str, package: str | os.PathLike, checkpoint: str | os.PathLike | None,
                      network: nn.Module | None = None, **overrides) -> tuple[nn.Module, RoundTrip]:
    """The torch network as the converter saw it, carrying the package's stored weights.

    By default the export-form model with BatchNorm folded; for a w8a8 package pass the calibrated model
    (`t2tedge.quantize.coreml_ptq.calibrate_w8a8`), whose activation fake-quantization then runs with the package's weights.
    """
    from t2tedge.export.common import build_model
    from t2tedge.models.mobilenet import fold_batchnorm

    if network is None:
        network, _ = build_model(model_name, checkpoint, **overrides)
        fold_batchnorm(network)
    return network, load_package_weights(network, package)
