"""Pretrained tags: MODEL.TAG brings its weights (sha256-checked) and class count to create_model and to every
command, and the weights we ship are package data an installed package finds."""

from __future__ import annotations

import tomllib

import pytest
import torch

from t2tedge.cli import main
from t2tedge.errors import CheckpointError, T2TEdgeError
from t2tedge.fileio import sha256_file
from t2tedge.models import create_model, get_spec
from t2tedge.models import pretrained
from t2tedge.models.pretrained import get_pretrained, list_pretrained
from t2tedge.paths import PROJECT_ROOT


def test_a_tag_brings_its_weights_and_class_count():
    tag = get_pretrained("t2t_vit_7.imagenette")
    model = create_model("t2t_vit_7.imagenette")
    assert model.head.out_features == tag.num_classes == 10
    reference = create_model("t2t_vit_7", checkpoint=tag.checkpoint(), num_classes=10)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
    assert get_spec("t2t_vit_7.imagenette") is get_spec("t2t_vit_7")


def test_the_shipped_weights_are_package_data_with_their_recorded_digest():
    tag = get_pretrained("t2t_vit_7.imagenette")
    path = pretrained.WEIGHTS_DIR / tag.file
    assert path.is_file() and sha256_file(path) == tag.sha256
    declared = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "*.pth" in declared["t2tedge.models.weights"]
    assert pretrained.WEIGHTS_DIR.parent.name == "models"  # the t2tedge.models package folder


def test_a_damaged_file_is_refused(tmp_path, monkeypatch):
    (tmp_path / "t2t_vit_7_imagenette.pth").write_bytes(b"not the weights")
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(CheckpointError, match="does not have the sha256 recorded for t2t_vit_7.imagenette"):
        get_pretrained("t2t_vit_7.imagenette").checkpoint()


def test_unknown_tags_name_the_known_ones():
    with pytest.raises(T2TEdgeError, match="unknown pretrained tag 't2t_vit_7.in22k'; known: t2t_vit_7.imagenette, "
                                           "t2t_vit_7.official"):
        create_model("t2t_vit_7.in22k")
    assert {"t2t_vit_7.imagenette", "mobilenet_v2_100.tf_in1k", "t2t_vit_12.official"} <= set(list_pretrained())


def test_commands_take_a_tag_without_checkpoint_or_num_classes(tmp_path, capsys):
    import onnx

    assert main(["export", "onnx", "t2t_vit_7.imagenette", "--out", str(tmp_path)]) == 0
    proto = onnx.load(str(tmp_path / "t2t_vit_7.onnx"))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["t2tedge.model"] == "t2t_vit_7"
    assert meta["t2tedge.weights"] == f"sha256:{get_pretrained('t2t_vit_7.imagenette').sha256}"
    assert proto.graph.output[0].type.tensor_type.shape.dim[-1].dim_value == 10
    assert main(["export", "onnx", "t2t_vit_7.imagenette", "--num-classes", "5", "--out", str(tmp_path)]) == 2
    assert "t2t_vit_7.imagenette has 10 classes; drop --num-classes 5" in capsys.readouterr().err
