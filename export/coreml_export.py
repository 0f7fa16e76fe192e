"""Core ML conversion: an ML Program that takes a pixel buffer.

The image input carries the model's normalisation (ImageType scale/bias when one std serves all channels,
else a first per-channel op), so an app feeds a CVPixelBuffer directly. Compression (w8, palettize6/4) and the
w8a8 activation calibration are the quantizer's (t2tedge.quantize.coreml_ptq); t2tedge.targets.coreml ties the
steps together and writes the package.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn as nn

from t2tedge import __version__
from t2tedge import metadata_keys as keys
from t2tedge.errors import DataError, RuntimeUnavailable, T2TEdgeError, first_line
from t2tedge.export.common import class_labels
from t2tedge.models import get_spec
from t2tedge.models.mobilenet import freeze_same_padding
from t2tedge.models.registry import PreprocessConfig

# ML Program needs iOS 15 / macOS 12 or newer; activation quantization (w8a8) needs iOS 17 / macOS 14.
TARGETS = ("iOS15", "iOS16", "iOS17", "iOS18", "macOS12", "macOS13", "macOS14", "macOS15")
W8A8_TARGETS = ("iOS17", "iOS18", "macOS14", "macOS15")
COMPRESSIONS = ("none", "w8", "palettize6", "palettize4", "w8a8")
PRECISIONS = ("fp16", "fp32")
OUTPUTS = ("classifier", "logits")
INPUT_NAME = "image"
LABEL_NAME, LOGITS_NAME = "classLabel", "logits"
INSTALL_HINT = "coremltools is not installed; install it with: pip install 't2t-edge[coreml]'"


@dataclass(frozen=True)
class CoreMLExportOptions:
    precision: str = "fp16"
    target: str = "iOS16"
    compress: str = "none"
    output: str = "classifier"
    calib: str | None = None  # image folder for w8a8; default ../shared imagenet-sample
    num_calib: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        for value, choices, what in ((self.precision, PRECISIONS, "precision"), (self.target, TARGETS, "target"),
                                     (self.compress, COMPRESSIONS, "compression"), (self.output, OUTPUTS, "output")):
            if value not in choices:
                raise T2TEdgeError(f"unknown Core ML {what} {value!r}; choose one of {', '.join(choices)}")
        if self.compress == "w8a8" and self.target not in W8A8_TARGETS:
            raise T2TEdgeError(f"w8a8 needs activation quantization, which Core ML has from iOS17/macOS14; "
                               f"got --target {self.target} (use one of {', '.join(W8A8_TARGETS)})")
        if self.num_calib < 1:
            raise T2TEdgeError(f"--num-calib must be >= 1, got {self.num_calib}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def require_coremltools():
    try:
        import coremltools
    except ImportError:
        raise RuntimeUnavailable(INSTALL_HINT) from None
    return coremltools


def artifact_name(model_name: str, options: CoreMLExportOptions) -> str:
    parts = [model_name]
    if options.compress != "none":
        parts.append(options.compress)
    if options.precision != "fp16":
        parts.append(options.precision)
    if options.output != "classifier":
        parts.append(options.output)
    return "_".join(parts) + ".mlpackage"


class ChannelNormalize(nn.Module):
    """(x - mean) / std per channel, for inputs whose per-channel std an ImageType scale cannot express."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).reshape(1, -1, 1, 1))
        self.register_buffer("inv_std", 1.0 / torch.tensor(std).reshape(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * self.inv_std


class DeployModel(nn.Module):
    """Pixels (after ImageType scale/bias) -> the network -> logits, or probabilities for a classifier."""

    def __init__(self, network: nn.Module, normalize: nn.Module | None, probabilities: bool) -> None:
        super().__init__()
        self.normalize = normalize or nn.Identity()
        self.network = network
        self.probabilities = probabilities

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.network(self.normalize(x))
        return logits.softmax(dim=-1) if self.probabilities else logits


def image_input_transform(preprocess: PreprocessConfig) -> tuple[float, list[float], ChannelNormalize | None]:
    """ImageType scale and bias for 0..255 pixels, plus the first op still needed (None when folded whole)."""
    if len(set(preprocess.std)) == 1:
        std = preprocess.std[0]
        return 1.0 / (255.0 * std), [-m / std for m in preprocess.mean], None
    return 1.0 / 255.0, [0.0, 0.0, 0.0], ChannelNormalize(preprocess.mean, preprocess.std)


_INT_CAST_PATCHED = False


def _patch_int_cast() -> None:
    """coremltools 9.0's `int` op calls int() on a (1,)-shaped array, which NumPy >= 2.4 rejects.

    Shapes read inside the traced T2T-ViT hit it (apple/coremltools#2633); the fix is upstream but not
    released on PyPI, so the same conversion is registered here with `.item()`.
    """
    global _INT_CAST_PATCHED
    if _INT_CAST_PATCHED:
        return
    import numpy as np
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs
    from coremltools.converters.mil.frontend.torch.torch_op_registry import register_torch_op

    def _int(context, node) -> None:
        x = _get_inputs(context, node, expected=1)[0]
        if x.can_be_folded_to_const():
            result = mb.const(val=int(np.asarray(x.val).item()), name=node.name)
        else:
            if len(x.shape) > 0:
                x = mb.squeeze(x=x, name=node.name + "_item")
            result = mb.cast(x=x, dtype="int32", name=node.name)
        context.add(result, node.name)

    register_torch_op(_int, torch_alias=["int"], override=True)
    _INT_CAST_PATCHED = True


@contextlib.contextmanager
def quiet_coremltools() -> Iterator[None]:
    """coremltools warns at import and per pass about versions it has not tested; keep the CLI output readable."""
    logger = logging.getLogger("coremltools")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(previous)


def prepare_network(model_name: str, network: nn.Module) -> nn.Module:
    """The export-form network as Core ML converts it: TF SAME padding frozen into explicit pads."""
    spec = get_spec(model_name)
    return freeze_same_padding(network, spec.preprocess.crop) if spec.padding == "tf_same" else network


def convert(model_name: str, network: nn.Module, options: CoreMLExportOptions):
    """(the in-memory MLModel of a prepared network, its class count): the image input carries the normalisation;
    compression and metadata are later steps (t2tedge.targets.coreml)."""
    ct = require_coremltools()
    pre = get_spec(model_name).preprocess
    scale, bias, normalize = image_input_transform(pre)
    classifier = options.output == "classifier"
    deploy = DeployModel(network, normalize, probabilities=classifier).eval()
    example = torch.zeros(1, 3, pre.crop, pre.crop)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(deploy, example)
    num_classes = int(deploy(example).shape[-1])
    _patch_int_cast()
    image = ct.ImageType(name=INPUT_NAME, shape=tuple(example.shape), scale=scale, bias=bias,
                         color_layout=ct.colorlayout.RGB)
    kwargs: dict[str, Any] = dict(
        inputs=[image], convert_to="mlprogram", minimum_deployment_target=getattr(ct.target, options.target),
        compute_precision=ct.precision.FLOAT16 if options.precision == "fp16" else ct.precision.FLOAT32)
    if classifier:
        labels = class_labels(num_classes, readable=True)
        kwargs["classifier_config"] = ct.ClassifierConfig(labels, predicted_feature_name=LABEL_NAME)
    else:
        kwargs["outputs"] = [ct.TensorType(name=LOGITS_NAME)]
    with quiet_coremltools():
        try:
            return ct.convert(traced, **kwargs), num_classes
        except Exception as exc:  # the converter raises bare ValueError/TypeError/RuntimeError
            raise T2TEdgeError(f"Core ML conversion of {model_name} failed: {type(exc).__name__}: "
                               f"{first_line(exc)}") from None


def default_calib_dir() -> Path:
    from t2tedge.paths import shared_path

    folder = shared_path("data", "imagenet-sample")
    if not folder.is_dir():
        raise DataError(f"w8a8 needs calibration images: pass --calib DIR (default {folder} is missing)")
    return folder


def stamp_metadata(mlmodel, model_name: str, weights: str, options: CoreMLExportOptions, num_classes: int) -> None:
    spec = get_spec(model_name)
    paper = f"; paper top-1 {spec.paper.top1}%" if spec.paper else ""
    mlmodel.short_description = (f"{model_name} ({spec.family}) image classifier, {num_classes} classes{paper}. "
                                 f"Weights: {weights}.")
    mlmodel.author = f"t2t-edge {__version__}"
    mlmodel.license = spec.license
    mlmodel.version = __version__
    mlmodel.input_description[INPUT_NAME] = (
        f"RGB image {spec.preprocess.crop}x{spec.preprocess.crop}; resize shorter side to {spec.preprocess.resize} "
        f"({spec.preprocess.interpolation}) and center-crop first. Normalisation is inside the model.")
    if options.output == "classifier":
        description = mlmodel.get_spec().description
        mlmodel.output_description[description.predictedFeatureName] = "most likely class"
        mlmodel.output_description[description.predictedProbabilitiesName] = "softmax probability per class label"
    else:
        mlmodel.output_description[LOGITS_NAME] = f"raw logits, {num_classes} classes in ImageNet class-index order"
    meta = mlmodel.user_defined_metadata
    meta.update({
        keys.MODEL: model_name,
        keys.FAMILY: spec.family,
        keys.PREPROCESS: json.dumps(spec.preprocess.to_dict(), sort_keys=True),
        keys.PADDING: spec.padding,
        keys.CLASS_ORDER: ",".join(class_labels(num_classes)),
        keys.WEIGHTS: weights,
        keys.VERSION: __version__,
        # The toolkit's vocabulary: int8 weights are w8, int8 weights and activations int8; else the compute precision.
        keys.PRECISION: {"w8": "w8", "w8a8": "int8"}.get(options.compress, options.precision),
        keys.COMPRESS: options.compress,
        keys.TARGET: options.target,
        keys.OUTPUT: options.output,
    })
