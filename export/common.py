"""What every exporter needs: the export-form model with the provenance of its weights, class labels, and the
metadata our sidecar-carrying artifacts (LiteRT, ExecuTorch) describe themselves with."""

from __future__ import annotations

import os
from typing import Any

import torch

from t2tedge import __version__
from t2tedge import metadata_keys as keys
from t2tedge.errors import T2TEdgeError
from t2tedge.fileio import sha256_file
from t2tedge.models import create_model, get_spec
from t2tedge.models.registry import RANDOM_INIT_SEED


def build_model(model_name: str, checkpoint: str | os.PathLike | None, **overrides) -> tuple[torch.nn.Module, str]:
    """The export-form model and the provenance stamp of its weights."""
    if checkpoint is None:
        return create_model(model_name, export_form=True, **overrides), f"untrained (random init, seed {RANDOM_INIT_SEED})"
    model = create_model(model_name, checkpoint=checkpoint, export_form=True, **overrides)
    return model, f"sha256:{sha256_file(checkpoint)}"


def class_labels(num_classes: int, readable: bool = False) -> list[str]:
    """ImageNet wnids (or readable names) in class-index order; plain indices for other heads."""
    if num_classes != 1000:
        return [str(i) for i in range(num_classes)]
    from t2tedge.data import imagenet_class_names, imagenet_wnids

    try:
        return imagenet_class_names() if readable else imagenet_wnids()
    except T2TEdgeError:
        return [str(i) for i in range(num_classes)]


def artifact_metadata(model_name: str, weights: str, layout: str, precision: str, num_classes: int,
                      input_description: str) -> dict[str, Any]:
    """The `t2tedge.*` keys of a sidecar: model, preprocessing, input layout and shape, class order, weights, version."""
    spec = get_spec(model_name)
    crop = spec.preprocess.crop
    shape = [1, crop, crop, 3] if layout == "nhwc" else [1, 3, crop, crop]
    return {
        keys.MODEL: model_name, keys.FAMILY: spec.family, keys.PRECISION: precision,
        keys.INPUT: input_description, keys.PREPROCESS: spec.preprocess.to_dict(),
        keys.PADDING: spec.padding, keys.INPUT_LAYOUT: layout.upper(), keys.INPUT_SHAPE: shape,
        keys.CLASS_ORDER: class_labels(num_classes), keys.WEIGHTS: weights, keys.VERSION: __version__,
    }
