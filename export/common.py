"""What every exporter needs: the export-form model with the provenance of its weights, and class labels."""

from __future__ import annotations

import os

import torch

from t2tedge.errors import T2TEdgeError
from t2tedge.fileio import sha256_file
from t2tedge.models import create_model
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
