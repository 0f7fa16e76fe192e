"""Core ML's quantization, with coremltools.optimize: a network or a converted program in, a quantized one out.

- `compress_program`: on the converted ML Program, per-channel int8 weights (w8, and the weights of w8a8) or
  k-means palettized weights (palettize6/4).
- `calibrate_w8a8`: activation quantization calibrated on real images on the torch side
  (coremltools.optimize.torch), because `MLModel.predict` does not exist off macOS; the converted program then
  holds the quantize/dequantize ops with the same scales.
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn

from t2tedge.errors import DataError, T2TEdgeError, first_line
from t2tedge.models.mobilenet import explicit_same_padding
from t2tedge.models.registry import PreprocessConfig
from t2tedge.models.t2t_vit import PerformerAttention


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


def compress_program(mlmodel, compress: str):
    """The converted program with `compress` applied to its weights (none: as it is)."""
    import coremltools.optimize.coreml as cto

    try:
        if compress in ("w8", "w8a8"):  # w8a8: activations were quantized in torch before conversion
            config = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel")
            return cto.linear_quantize_weights(mlmodel, cto.OptimizationConfig(global_config=config))
        if compress.startswith("palettize"):
            # Per-tensor LUTs run on every target from iOS16. iOS18's per-grouped-channel tables were measured
            # here on MobileNetV2 (group 16): larger packages (0.55x fp16 at 4 bits) and no better accuracy.
            config = cto.OpPalettizerConfig(nbits=int(compress[len("palettize"):]), mode="kmeans",
                                            granularity="per_tensor")
            return cto.palettize_weights(mlmodel, cto.OptimizationConfig(global_config=config))
    except Exception as exc:  # coremltools raises bare ValueError/TypeError/RuntimeError
        raise T2TEdgeError(f"Core ML {compress} compression failed: {type(exc).__name__}: {first_line(exc)}") from None
    return mlmodel
