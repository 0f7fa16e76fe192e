"""The model registry: name -> constructor, preprocessing, checkpoint format and paper reference."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from t2tedge.errors import UsageError
from t2tedge.models import mobilenet, t2t_vit
from t2tedge.models.checkpoint import load_checkpoint

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TF_INCEPTION_MEAN = (0.5, 0.5, 0.5)
TF_INCEPTION_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class PreprocessConfig:
    """Resize the shorter side to `resize`, center-crop `crop`, scale to [0, 1], then (x - mean) / std."""

    crop: int = 224
    resize: int = 248
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PaperReference:
    top1: float
    params_m: float
    macs_g: float
    source: str


# Families quantized the ViT-aware way on every target: LayerNorm, softmax, GELU and the attention products float.
TRANSFORMER_FAMILIES = ("T2T-ViT",)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    constructor: Callable[..., nn.Module]
    kwargs: dict[str, Any]
    preprocess: PreprocessConfig
    padding: str  # "symmetric" or "tf_same"
    checkpoint_formats: tuple[str, ...]
    paper: PaperReference | None = None
    release_url: str | None = None
    shared_weights: str | None = None  # file name under ../shared/weights used when no checkpoint is given
    license: str = "see the source of the weights"
    release_sha256: str | None = None  # pinned digest of the release file; None: recorded at first download
    # The release is an archive: the float TFLite file in it whose weights are converted (t2tedge.models.release).
    release_member: str | None = None
    release_top1: float | None = None  # the top-1 the release itself publishes (ImageNet val, single crop)


_REGISTRY: dict[str, ModelSpec] = {}

# Official T2T-ViT cfg: crop_pct 0.9 at 224 -> resize 248, bicubic, ImageNet mean/std.
_T2T_PREPROCESS = PreprocessConfig()
# The TF-trained MobileNet weights in ../shared expect [-1, 1] inputs and SAME padding.
_TF_PREPROCESS = PreprocessConfig(resize=256, interpolation="bilinear", mean=TF_INCEPTION_MEAN, std=TF_INCEPTION_STD)
_T2T_FORMATS = ("official T2T-ViT release (.pth.tar with state_dict_ema / state_dict)", "bare state dict")
_T2T_RELEASE = "https://github.com/yitu-opensource/T2T-ViT/releases/download/main/{}"


def register(spec: ModelSpec) -> ModelSpec:
    _REGISTRY[spec.name] = spec
    return spec


def _t2t(name: str, depth: int, embed_dim: int, heads: int, mlp_ratio: float, tokens: str,
         paper: PaperReference | None, release_file: str | None) -> None:
    register(ModelSpec(
        name=name, family="T2T-ViT", constructor=t2t_vit.T2TViT,
        kwargs=dict(tokens_type=tokens, embed_dim=embed_dim, depth=depth, num_heads=heads, mlp_ratio=mlp_ratio),
        preprocess=_T2T_PREPROCESS, padding="symmetric", checkpoint_formats=_T2T_FORMATS, paper=paper,
        release_url=_T2T_RELEASE.format(release_file) if release_file else None,
        license="BSD-3-Clause-Clear (official T2T-ViT code and weights, YITU Technology)",
    ))


_t2t("t2t_vit_7", 7, 256, 4, 2.0, "performer", PaperReference(71.7, 4.3, 1.1, "T2T-ViT paper, Table 4"), "71.7_T2T_ViT_7.pth.tar")
_t2t("t2t_vit_10", 10, 256, 4, 2.0, "performer", PaperReference(75.2, 5.9, 1.5, "T2T-ViT paper, Table 4"), "75.2_T2T_ViT_10.pth.tar")
_t2t("t2t_vit_12", 12, 256, 4, 2.0, "performer", PaperReference(76.5, 6.9, 1.8, "T2T-ViT paper, Table 4"), "76.5_T2T_ViT_12.pth.tar")
_t2t("t2t_vit_14", 14, 384, 6, 3.0, "performer", PaperReference(81.5, 21.5, 4.8, "T2T-ViT paper, Table 1"), "81.5_T2T_ViT_14.pth.tar")
_t2t("t2t_vit_t_14", 14, 384, 6, 3.0, "transformer", PaperReference(81.7, 21.5, 6.1, "T2T-ViT paper, Table 1"), "81.7_T2T_ViTt_14.pth.tar")

# The float releases the MobileNets' own papers point to (tensorflow/models: research/slim/nets/mobilenet_v1.md and
# research/slim/nets/mobilenet/README.md), each a .tgz holding the float TFLite file, with the top-1 they publish.
_V1_RELEASE = "http://download.tensorflow.org/models/mobilenet_v1_2018_02_22/{}.tgz"
_V2_RELEASE = "https://storage.googleapis.com/mobilenet_v2/checkpoints/{}.tgz"

for _name, _cls, _width, _paper, _release, _top1 in [
    ("mobilenet_v1_100", mobilenet.MobileNetV1, 1.0, PaperReference(70.6, 4.2, 0.6, "T2T-ViT paper, Table 4"),
     _V1_RELEASE.format("mobilenet_v1_1.0_224"), 70.9),
    ("mobilenet_v2_100", mobilenet.MobileNetV2, 1.0, PaperReference(72.0, 3.5, 0.3, "T2T-ViT paper, Table 4"),
     _V2_RELEASE.format("mobilenet_v2_1.0_224"), 71.8),
    ("mobilenet_v2_140", mobilenet.MobileNetV2, 1.4, PaperReference(74.7, 6.9, 0.6, "T2T-ViT paper, Table 4"),
     _V2_RELEASE.format("mobilenet_v2_1.4_224"), 75.0),
]:
    register(ModelSpec(
        name=_name, family=_cls.__name__, constructor=_cls, kwargs=dict(width_mult=_width),
        preprocess=_TF_PREPROCESS, padding="tf_same",
        checkpoint_formats=("bare state dict (MobileNetV2: torchvision key layout)",), paper=_paper,
        shared_weights={"mobilenet_v1_100": "mobilenet_v1_1.0_imagenet_tfsame.pth",
                        "mobilenet_v2_100": "mobilenet_v2_1.0_imagenet_tfsame.pth"}.get(_name),
        license="Apache-2.0 (TensorFlow-trained MobileNet weights)",
        release_url=_release, release_member=_release.rsplit("/", 1)[-1].replace(".tgz", ".tflite"),
        release_top1=_top1,
    ))


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The spec of `name`, a model name or a pretrained tag (`t2t_vit_7.imagenette`)."""
    if "." in name:
        from t2tedge.models.pretrained import get_pretrained

        name = get_pretrained(name).model
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown model {name!r}; available: {', '.join(list_models())}") from None


RANDOM_WEIGHTS = "random"
RANDOM_INIT_SEED = 0


def default_checkpoint(name: str, checkpoint: str | os.PathLike | None = None) -> Path | None:
    """The checkpoint to use, one rule for every model: the given one; "random" for none; else the model's real
    weights in ../shared (this repository's tests); else its official release when it is in the user cache already
    (`MODEL.official` fetched it once); else None (random weights: the CLI says which tag brings real ones)."""
    if checkpoint is not None:
        return None if str(checkpoint) == RANDOM_WEIGHTS else Path(checkpoint)
    spec = get_spec(name)
    if spec.shared_weights:
        from t2tedge.paths import shared_path

        candidate = shared_path("weights", spec.shared_weights)
        if candidate.is_file():
            return candidate
    if spec.release_url:
        from t2tedge.models.release import cached_official

        return cached_official(name)
    return None


@dataclass(frozen=True)
class TrainedSubject:
    """A checkpoint this project trained itself (no official one reaches it), with the data it belongs to.

    Used wherever a measurement needs trained weights: PTQ agreement, Core ML round-trips.
    """

    model: str
    checkpoint: Path
    num_classes: int
    train: Path
    val: Path
    note: str


# Model -> (pretrained tag, dataset under ../shared/data) of the checkpoints this project trained itself.
_TRAINED_SUBJECTS = {"t2t_vit_7": ("t2t_vit_7.imagenette", "imagenette2")}


def trained_subject(name: str) -> TrainedSubject | None:
    """`name`'s self-trained subject when its checkpoint and data are both present, else None."""
    if name not in _TRAINED_SUBJECTS:
        return None
    from t2tedge.models.pretrained import get_pretrained
    from t2tedge.paths import shared_path

    tag_name, dataset = _TRAINED_SUBJECTS[name]
    tag = get_pretrained(tag_name)
    checkpoint = tag.local_path()
    data = shared_path("data", dataset)
    if checkpoint is None or not checkpoint.is_file() or not data.is_dir():
        return None
    return TrainedSubject(name, checkpoint, tag.num_classes, data / "train", data / "val", tag.note)


def create_model(name: str, checkpoint: str | os.PathLike | None = None, export_form: bool = False,
                 seed: int = RANDOM_INIT_SEED, **overrides: Any) -> nn.Module:
    """Build `name` in eval mode, optionally loading `checkpoint` strictly.

    `name` may carry a pretrained tag (`t2t_vit_7.imagenette`, `t2tedge.models.pretrained`): its weights and class
    count are then the defaults. `export_form=True` switches T2T-ViT to the Conv soft split / MatMul FP16-safe
    Performer form. MobileNets take `tf_same=False` for PyTorch symmetric padding.
    """
    if "." in name:
        from t2tedge.models.pretrained import get_pretrained

        tag = get_pretrained(name)
        name = tag.model
        checkpoint = tag.checkpoint() if checkpoint is None else checkpoint
        if tag.num_classes != 1000:
            overrides.setdefault("num_classes", tag.num_classes)
    spec = get_spec(name)
    # Untrained weights are seeded so every runtime and every export of them sees the same network.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = spec.constructor(**{**spec.kwargs, **overrides})
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, model_name=name)
    if export_form:
        t2t_vit.set_export_form(model, True)
    model.eval()
    return model
