"""Pretrained tags, like timm's `model.tag`: each names a weights file, its sha256, its class count and label set,
so known weights need no `--checkpoint` path and no `--num-classes`.

    create_model("t2t_vit_7.imagenette")       # our Imagenette-trained T2T-ViT-7, shipped in the package
    create_model("mobilenet_v2_100.tf_in1k")   # the TensorFlow-trained ImageNet weights in ../shared/weights
    create_model("t2t_vit_7.official")         # the official release file, downloaded once and sha256-recorded
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from t2tedge.errors import CheckpointError, UsageError
from t2tedge.fileio import sha256_file
from t2tedge.models.registry import get_spec, list_models

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
IMAGENET_1K = "ImageNet-1k (wnid order)"


@dataclass(frozen=True)
class PretrainedTag:
    """Where a tag's weights live: `package` (a file in t2tedge/models/weights), `shared` (a file in
    ../shared/weights) or `official` (the model's release URL, fetched into the user cache)."""

    model: str
    tag: str
    source: str
    file: str | None
    sha256: str | None
    num_classes: int
    labels: str
    note: str

    @property
    def name(self) -> str:
        return f"{self.model}.{self.tag}"

    def local_path(self) -> Path | None:
        """Where a `package` or `shared` tag's file should be (present or not); None for a download."""
        if self.source == "package":
            return WEIGHTS_DIR / str(self.file)
        if self.source == "shared":
            from t2tedge.paths import shared_path

            return shared_path("weights", str(self.file))
        return None

    def origin(self) -> str:
        """Where the weights come from, in words: a file of the package or of ../shared, or the release URL."""
        path = self.local_path()
        if path is not None:
            return str(path)
        return str(get_spec(self.model).release_url)

    def present(self) -> bool:
        """Whether the weights are here without a download (a release already fetched into the cache)."""
        path = self.local_path()
        if path is not None:
            return path.is_file()
        from t2tedge.models.release import cached_official

        return cached_official(self.model) is not None

    def checkpoint(self) -> Path:
        """The weights file, checked against the recorded sha256."""
        path = self.local_path()
        if path is None:
            from t2tedge.models.release import fetch_official

            return fetch_official(self.model)
        if not path.is_file():
            raise CheckpointError(f"the weights of {self.name} are not here: {path}")
        if self.sha256 and sha256_file(path) != self.sha256:
            raise CheckpointError(f"{path} does not have the sha256 recorded for {self.name}; it is damaged or "
                                  f"another file")
        return path


_TAGS: dict[str, PretrainedTag] = {}


def _register(tag: PretrainedTag) -> None:
    _TAGS[tag.name] = tag


_register(PretrainedTag(
    "t2t_vit_7", "imagenette", "package", "t2t_vit_7_imagenette.pth",
    "89a62642ef39f086c22142b7efba7d8c76689b4c217fa35f9484e9e0498610a4", 10,
    "Imagenette (its 10 wnid folders in sorted order)",
    "trained from scratch here on Imagenette, 130 epochs; 85.10% top-1 on its val (docs/models.md)"))
# The registry already names each model's shared ImageNet weights and release file; the tags follow from it.
for _model in list_models():
    _spec = get_spec(_model)
    if _spec.shared_weights:
        _register(PretrainedTag(_model, "tf_in1k", "shared", _spec.shared_weights, None, 1000, IMAGENET_1K,
                                "TensorFlow-trained ImageNet weights with TF SAME padding (../shared/weights)"))
    if _spec.release_url:
        _register(PretrainedTag(_model, "official", "official", None, _spec.release_sha256, 1000, IMAGENET_1K,
                                "the official ImageNet release (downloaded once; its sha256 is recorded then)"
                                + (f"; its float TFLite weights converted, published top-1 {_spec.release_top1}%"
                                   if _spec.release_member else "")))


def list_pretrained(model: str | None = None) -> list[str]:
    return sorted(name for name, tag in _TAGS.items() if model is None or tag.model == model)


def split_tag(name: str) -> tuple[str, str | None]:
    """"t2t_vit_7.imagenette" -> ("t2t_vit_7", "imagenette"); a plain model name -> (name, None)."""
    model, _, tag = name.partition(".")
    return model, tag or None


def get_pretrained(name: str) -> PretrainedTag:
    try:
        return _TAGS[name]
    except KeyError:
        model = split_tag(name)[0]
        known = list_pretrained(model) or list_pretrained()
        raise UsageError(f"unknown pretrained tag {name!r}; known: {', '.join(known)}") from None
