"""Trainer smoke test: a few steps on a few real images, release-format checkpoint, resume, eval."""

from __future__ import annotations

import shutil

import pytest
import torch

from conftest import shared_or_skip
from t2tedge.cli import main
from t2tedge.models import create_model


@pytest.fixture(scope="module")
def tiny_imagenette(tmp_path_factory):
    source = shared_or_skip("data", "imagenette2")
    root = tmp_path_factory.mktemp("nette")
    for split, per_class in [("train", 4), ("val", 2)]:
        for wnid in sorted(p.name for p in (source / split).iterdir())[:2]:
            (root / split / wnid).mkdir(parents=True)
            for image in sorted((source / split / wnid).iterdir())[:per_class]:
                shutil.copy(image, root / split / wnid / image.name)
    return root


def test_train_resume_and_eval(tiny_imagenette, tmp_path, capsys):
    out = tmp_path / "t2t7.pth"
    base = ["train", "t2t_vit_7", "--data", str(tiny_imagenette / "train"), "--val", str(tiny_imagenette / "val"),
            "--img-size", "64", "--batch", "4", "--warmup-epochs", "1", "--out", str(out), "--workers", "1"]
    assert main(base + ["--epochs", "1"]) == 0
    first = torch.load(out, weights_only=True)
    assert first["epoch"] == 0 and set(first["history"][0]) == {"epoch", "loss", "seconds", "val_top1"}

    assert main(base + ["--epochs", "2", "--fp16"]) == 0
    assert "resuming" in capsys.readouterr().out
    second = torch.load(out, weights_only=True)
    assert second["epoch"] == 1 and len(second["history"]) == 2
    assert not torch.equal(first["state_dict"]["head.weight"], second["state_dict"]["head.weight"])

    compact = torch.load(out.with_suffix(".fp16.pth"), weights_only=True)
    assert compact["state_dict"]["head.weight"].dtype == torch.float16
    # The release-format checkpoint loads strictly into a 2-class model at that image size.
    model = create_model("t2t_vit_7", checkpoint=out.with_suffix(".fp16.pth"), num_classes=2, img_size=64)
    assert model.head.out_features == 2


def test_same_seed_same_weights(tiny_imagenette, tmp_path):
    outs = []
    for name in ["a.pth", "b.pth"]:
        argv = ["train", "mobilenet_v2_100", "--data", str(tiny_imagenette / "train"), "--img-size", "64",
                "--batch", "4", "--epochs", "1", "--max-steps", "2", "--out", str(tmp_path / name)]
        assert main(argv) == 0
        outs.append(torch.load(tmp_path / name, weights_only=True)["state_dict"])
    assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])


def test_preloaded_training_with_batch_augmentation(tiny_imagenette, tmp_path, capsys):
    """The GPU-feeding path (decode once, crop on the device) with every batch op and an EMA, on CPU."""
    out = tmp_path / "pre.pth"
    argv = ["train", "t2t_vit_7", "--data", str(tiny_imagenette / "train"), "--val", str(tiny_imagenette / "val"),
            "--img-size", "64", "--batch", "4", "--epochs", "2", "--eval-every", "2", "--preload", "48",
            "--mixup", "0.8", "--cutmix", "1.0", "--color-jitter", "0.4", "--random-erase", "0.25",
            "--ema-decay", "0.9", "--out", str(out), "--fp16"]
    assert main(argv) == 0
    state = torch.load(out, weights_only=True)
    first, last = state["history"]
    assert "val_top1" not in first and {"val_top1", "val_top1_ema"} <= set(last)
    assert state["train_config"]["preload"] == 48
    ema, live = state["state_dict_ema"]["head.weight"], state["state_dict"]["head.weight"]
    assert not torch.equal(ema, live)
    # The compact release file carries the EMA weights, as the official releases do.
    compact = torch.load(out.with_suffix(".fp16.pth"), weights_only=True)
    assert set(compact) == {"state_dict_ema"}
    assert torch.equal(compact["state_dict_ema"]["head.weight"], ema.half())


def test_preloaded_training_is_reproducible(tiny_imagenette, tmp_path):
    outs = []
    for name in ["a.pth", "b.pth"]:
        argv = ["train", "t2t_vit_7", "--data", str(tiny_imagenette / "train"), "--img-size", "64", "--batch", "4",
                "--epochs", "1", "--preload", "48", "--cutmix", "1.0", "--random-erase", "0.5",
                "--out", str(tmp_path / name)]
        assert main(argv) == 0
        outs.append(torch.load(tmp_path / name, weights_only=True)["state_dict"])
    assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])


def test_eval_with_small_head(tiny_imagenette, tmp_path, capsys):
    state = create_model("t2t_vit_7", num_classes=2).state_dict()
    torch.save({"state_dict_ema": state}, tmp_path / "two.pth")
    assert main(["eval", "t2t_vit_7", "--checkpoint", str(tmp_path / "two.pth"), "--num-classes", "2",
                 "--data", str(tiny_imagenette / "val")]) == 0
    assert "top-1" in capsys.readouterr().out


def test_empty_training_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "t2t_vit_7", "--data", str(tmp_path), "--out", str(tmp_path / "x.pth")]) == 1
    assert "class folders" in capsys.readouterr().err
    assert not (tmp_path / "x.pth").exists()
