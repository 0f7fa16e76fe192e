"""Dataset layouts, image conversion, unreadable files and the deterministic split."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from t2tedge.cli import main
from t2tedge.data import ImageDataset, discover, load_image, split
from t2tedge.errors import DataError
from t2tedge.models import get_spec


def test_layouts(val_dir, sample_dir):
    folder = discover(val_dir)
    flat = discover(sample_dir)
    assert len(folder) == 1300 and len(flat) == 1000
    assert {s.label for s in flat} == set(range(1000))  # one image per class, wnid order
    assert folder[0].label == 0 and folder[0].path.parent.name == "n01440764"


def test_flat_val_layout_with_labels_file(tmp_path, val_dir):
    truth = tmp_path / "truth.txt"
    lines = []
    for i, sample in enumerate(discover(val_dir)[:3]):
        target = tmp_path / "val" / sample.path.name
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(sample.path.read_bytes())
        lines.append(f"{sample.path.name} {sample.label}")
    truth.write_text("\n".join(lines))
    found = discover(tmp_path / "val", labels_file=truth)
    assert [s.label for s in found] == [int(line.split()[1]) for line in sorted(lines)]


def test_sorted_class_folders_for_small_heads(tmp_path):
    for name in ["b_class", "a_class"]:
        (tmp_path / name).mkdir()
        Image.new("RGB", (40, 30)).save(tmp_path / name / "x.png")
    samples = discover(tmp_path, num_classes=2)
    assert [(s.path.parent.name, s.label) for s in samples] == [("a_class", 0), ("b_class", 1)]
    with pytest.raises(DataError, match="not ImageNet wnids"):
        discover(tmp_path)


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "RGBA"])
def test_any_color_mode_becomes_rgb(tmp_path, mode):
    path = tmp_path / f"img_{mode}.png" if mode != "CMYK" else tmp_path / "img.jpg"
    Image.new(mode, (300, 260)).save(path)
    array = ImageDataset([type("S", (), {"path": path, "label": 0})()], get_spec("t2t_vit_7").preprocess)[0][0]
    assert array.shape == (3, 224, 224) and array.dtype == np.float32


def test_unreadable_image_names_the_file(tmp_path, capsys):
    (tmp_path / "n01440764").mkdir()
    bad = tmp_path / "n01440764" / "broken.JPEG"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError, match="broken.JPEG"):
        load_image(bad)
    assert main(["eval", "mobilenet_v2_100", "--data", str(tmp_path), "--checkpoint", "random"]) == 1
    assert "cannot read image" in capsys.readouterr().err


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no images found"):
        discover(tmp_path)


def test_split_is_deterministic_and_disjoint(val_dir):
    samples = discover(val_dir)
    a, rest = split(samples, 100, seed=3)
    b, _ = split(samples, 100, seed=3)
    assert a == b and len(a) == 100 and len(rest) == 1200
    assert not {s.path for s in a} & {s.path for s in rest}
    assert split(samples, 100, seed=4)[0] != a
