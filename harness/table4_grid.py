"""What a Table 4 grid is made of (models and suites; its runtimes and precisions are the target registry's),
importable without torch: the CLI's parser reads it, and `t2tedge profile` runs on devices that have no torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TABLE4_MODELS = ("t2t_vit_7", "t2t_vit_12", "mobilenet_v1_100", "mobilenet_v2_100", "mobilenet_v2_140")


@dataclass(frozen=True)
class Suite:
    """Where a grid's images and weights come from. `imagenet`: the models' ImageNet weights where they exist
    (untrained otherwise), val1300, imagenet-sample calibration. `imagenette`: every model trained from scratch on
    Imagenette with one recipe, its val and train folders; a model without such a checkpoint is skipped."""

    name: str
    dataset: str
    calibration: str
    num_classes: int

    def data(self) -> Path:
        from t2tedge.paths import shared_path

        return shared_path("data", *self.dataset.split("/"))

    def calibration_folder(self) -> Path:
        from t2tedge.paths import shared_path

        return shared_path("data", *self.calibration.split("/"))

    def checkpoint(self, model_name: str, weights: str = "local") -> Path | None:
        """`weights` local: the models' weights found here (../shared, the release cache), untrained otherwise;
        official: every model's `MODEL.official` release, downloaded once (imagenet only)."""
        from t2tedge.models import default_checkpoint, trained_subject

        if self.name == "imagenet" and weights == "official":
            from t2tedge.models.pretrained import get_pretrained

            return get_pretrained(f"{model_name}.official").checkpoint()
        if self.name == "imagenet":
            return default_checkpoint(model_name)
        subject = trained_subject(model_name)
        return subject.checkpoint if subject is not None and subject.num_classes == self.num_classes else None

    def missing_weights(self, model_name: str) -> str | None:
        """Why `model_name` has no cell in this suite, or None."""
        if self.name == "imagenette" and self.checkpoint(model_name) is None:
            return (f"no Imagenette-trained {model_name} yet: train it from scratch with the T2T-ViT-7 recipe "
                    f"(`t2tedge train`, on a GPU; models/weights/README.md)")
        return None


# Where a grid's ImageNet weights come from (`t2tedge table4 --weights`).
WEIGHT_SOURCES = ("local", "official")

SUITES = {"imagenet": Suite("imagenet", "imagenet-val1300", "imagenet-sample", 1000),
          "imagenette": Suite("imagenette", "imagenette2/val", "imagenette2/train", 10)}
