"""Core ML export: an ML Program that takes a pixel buffer, optionally compressed with coremltools.optimize.

The image input carries the model's normalisation (ImageType scale/bias when one std serves all channels,
else a first per-channel op), so an app feeds a CVPixelBuffer directly. Compression runs on the converted
program (w8, palettize6/4). For w8a8 the activations are calibrated on real images on the torch side with
coremltools.optimize.torch, because `MLModel.predict` does not exist off macOS, and the weights then take
the w8 path after conversion.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from t2tedge import __version__
from t2tedge import metadata_keys as keys
from t2tedge.errors import DataError, RuntimeUnavailable, T2TEdgeError, first_line
from t2tedge.export.common import build_model, class_labels
from t2tedge.fileio import atomic_dir
from t2tedge.models import get_spec
from t2tedge.models.mobilenet import explicit_same_padding, freeze_same_padding
from t2tedge.models.registry import PreprocessConfig
from t2tedge.models.t2t_vit import PerformerAttention

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


# Modules whose activations stay float under w8a8. T2T-ViT's Performer attention: its random-feature
# exponentials span many orders of magnitude and per-tensor int8 rounded its normaliser to zero, so the division
# gave inf and every later range NaN. Its projections, MLP and LayerNorms around it are quantized as usual.
FLOAT_ACTIVATION_MODULES: tuple[type[nn.Module], ...] = (PerformerAttention,)


def calibrate_w8a8(model: nn.Module, preprocess: PreprocessConfig, calib_dir: str | os.PathLike,
                   num_calib: int, seed: int = 0, progress: bool = True) -> nn.Module:
    """Activation quantization for Core ML, calibrated (min/max) on real images with coremltools.optimize.torch.

    Returns the finalized torch model: it runs with int8-fake-quantized activations in torch and converts
    to Core ML quantize/dequantize ops with the same scales. Weights stay float here; `convert` quantizes
    them after conversion with Core ML's own per-channel int8 (the `w8` path).

    Both choices were measured on MobileNetV2 (imagenet-val1300, 128 calibration images): weights
    fake-quantized through torch's conv-BN emulation agree with fp32 on only 94% of images (Core ML's w8 on
    the converted program: 99%), and symmetric activations spend a bit on the sign of post-ReLU6 tensors
    (-0.6 point) where affine ones cost -0.1.
    """
    from coremltools.optimize.torch.quantization import (LinearQuantizer, LinearQuantizerConfig,
                                                         ModuleLinearQuantizerConfig)

    from t2tedge.data import discover_images, load_batch, readable_samples, split

    samples = discover_images(calib_dir)
    if not samples:
        raise DataError(f"no calibration images in {calib_dir}")
    chosen, _ = split(samples, min(num_calib, len(samples)), seed=seed)
    chosen = readable_samples(chosen, "calibration images")
    # Without this, TF-SAME convs trace as functional convs and their pre-BN outputs get quantized.
    explicit_same_padding(model, preprocess.crop)
    config = LinearQuantizerConfig(global_config=ModuleLinearQuantizerConfig(
        quantization_scheme="affine", weight_dtype=torch.float32, activation_observer="min_max", milestones=None),
        module_type_configs={module_type: None for module_type in FLOAT_ACTIVATION_MODULES})
    quantizer = LinearQuantizer(model, config)
    example = torch.zeros(1, 3, preprocess.crop, preprocess.crop)
    try:
        prepared = quantizer.prepare(example_inputs=(example,), inplace=False)
    except Exception as exc:  # torch.fx raises many types on untraceable code
        raise T2TEdgeError(f"w8a8 calibration cannot trace this model with torch.fx: {first_line(exc)}") from None
    prepared.eval()
    from tqdm import tqdm

    batch_size = 32
    with torch.no_grad():
        for start in tqdm(range(0, len(chosen), batch_size), desc="w8a8 calibration", unit="batch",
                          disable=not progress):
            images, _ = load_batch(chosen[start:start + batch_size], preprocess)
            prepared(torch.from_numpy(images))
    finalized = quantizer.finalize(inplace=False).eval()
    broken = [name for name, value in finalized.state_dict().items()
              if "_scale_" in name and value.numel() == 1 and not torch.isfinite(value).all()]
    if broken:
        # A module not in FLOAT_ACTIVATION_MODULES whose activations int8 cannot hold (as the Performer's
        # normaliser was: its int8 zero turned the division into inf, and every later range into NaN).
        raise T2TEdgeError(f"w8a8 calibration gave non-finite activation scales for {len(broken)} tensors (first: "
                           f"{broken[0]}); this model cannot take coremltools' activation quantization, use "
                           f"--precision w8 or --palettize 6")
    return finalized


def _compress_program(mlmodel, options: CoreMLExportOptions):
    import coremltools.optimize.coreml as cto

    if options.compress in ("w8", "w8a8"):  # w8a8: activations were quantized in torch before conversion
        config = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel")
        return cto.linear_quantize_weights(mlmodel, cto.OptimizationConfig(global_config=config))
    if options.compress.startswith("palettize"):
        # Per-tensor LUTs run on every target from iOS16. iOS18's per-grouped-channel tables were measured
        # here on MobileNetV2 (group 16): larger packages (0.55x fp16 at 4 bits) and no better accuracy.
        config = cto.OpPalettizerConfig(nbits=int(options.compress[len("palettize"):]), mode="kmeans",
                                        granularity="per_tensor")
        return cto.palettize_weights(mlmodel, cto.OptimizationConfig(global_config=config))
    return mlmodel


def _quiet_coremltools() -> Callable[[], None]:
    """coremltools warns at import and per pass about versions it has not tested; keep the CLI output readable."""
    logger = logging.getLogger("coremltools")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    return lambda: logger.setLevel(previous)


def convert(model_name: str, network: nn.Module, weights: str, options: CoreMLExportOptions,
            progress: bool = True):
    """The in-memory MLModel for an export-form network (compression applied, metadata stamped)."""
    ct = require_coremltools()
    spec = get_spec(model_name)
    pre = spec.preprocess
    network = freeze_same_padding(network, pre.crop) if spec.padding == "tf_same" else network
    if options.compress == "w8a8":
        calib = options.calib or _default_calib_dir()
        network = calibrate_w8a8(network, pre, calib, options.num_calib, options.seed, progress)
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
    restore = _quiet_coremltools()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mlmodel = ct.convert(traced, **kwargs)
            mlmodel = _compress_program(mlmodel, options)
    except T2TEdgeError:
        raise
    except Exception as exc:  # the converter raises bare ValueError/TypeError/RuntimeError
        raise T2TEdgeError(f"Core ML conversion of {model_name} failed: {type(exc).__name__}: "
                           f"{first_line(exc)}") from None
    finally:
        restore()
    stamp_metadata(mlmodel, model_name, weights, options, num_classes)
    return mlmodel


def _default_calib_dir() -> Path:
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


def export_coreml(model_name: str, checkpoint: str | os.PathLike | None = None,
                  out_dir: str | os.PathLike = "artifacts/coreml", options: CoreMLExportOptions = CoreMLExportOptions(),
                  destination: str | os.PathLike | None = None, progress: bool = True, **overrides) -> Path:
    """Export `model_name` to an .mlpackage and return its path; nothing is left behind on failure."""
    require_coremltools()
    network, weights = build_model(model_name, checkpoint, **overrides)
    mlmodel = convert(model_name, network, weights, options, progress=progress)
    destination = Path(destination) if destination else Path(out_dir) / artifact_name(model_name, options)
    if destination.suffix != ".mlpackage":
        raise T2TEdgeError(f"a Core ML ML Program is saved as a .mlpackage directory, not {destination.name}")
    with atomic_dir(destination) as tmp:
        mlmodel.save(str(tmp))
    return destination
