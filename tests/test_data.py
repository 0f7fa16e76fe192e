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


def test_phone_photos_and_16_bit_pngs_evaluate_like_their_upright_8_bit_twins(tmp_path, val_dir, weights_dir):
    """EXIF orientation is applied and 16-bit grey is scaled, so both give the top-1 of their plain twins (before,
    the sideways photos and the near-white 16-bit images were evaluated as they were stored)."""
    from t2tedge.harness.evaluate import evaluate
    from t2tedge.models import create_model
    from t2tedge.runtimes.torch_eager import TorchRuntime

    sources = discover(val_dir)[::163][:8]
    twins = {kind: tmp_path / kind for kind in ("upright", "rotated", "grey8", "grey16")}
    for sample in sources:
        wnid = sample.path.parent.name
        for folder in twins.values():
            (folder / wnid).mkdir(parents=True, exist_ok=True)
        with Image.open(sample.path) as img:
            rgb = img.convert("RGB")
        rgb.save(twins["upright"] / wnid / f"{sample.path.stem}.png")
        exif = Image.Exif()
        exif[0x0112] = 6  # "rotate 90 degrees clockwise to display", as a phone held upright writes it
        rgb.transpose(Image.Transpose.ROTATE_90).save(twins["rotated"] / wnid / f"{sample.path.stem}.png", exif=exif)
        grey = np.asarray(rgb.convert("L"))
        Image.fromarray(grey).save(twins["grey8"] / wnid / f"{sample.path.stem}.png")
        Image.fromarray(grey.astype(np.uint16) * 257).save(twins["grey16"] / wnid / f"{sample.path.stem}.png")
    assert Image.open(next((twins["grey16"]).rglob("*.png"))).mode.startswith("I")
    model = create_model("mobilenet_v2_100", checkpoint=weights_dir / "mobilenet_v2_1.0_imagenet_tfsame.pth")
    runtime = TorchRuntime.load(model)
    preprocess = get_spec("mobilenet_v2_100").preprocess
    results = {kind: evaluate(runtime, discover(folder), preprocess, progress=None) for kind, folder in twins.items()}
    assert results["upright"].top1 >= 0.5  # real weights, real photos: the comparison means something
    assert results["rotated"].top1 == results["upright"].top1
    assert (results["rotated"].predictions == results["upright"].predictions).all()
    assert results["grey16"].top1 == results["grey8"].top1
    assert (results["grey16"].predictions == results["grey8"].predictions).all()


def test_unreadable_calibration_images_are_skipped_while_enough_remain(tmp_path, sample_dir, capsys):
    from t2tedge.quantize.calibration import calibration_samples

    photos = tmp_path / "photos"
    photos.mkdir()
    for source in sorted(sample_dir.iterdir())[:6]:
        (photos / source.name).write_bytes(source.read_bytes())
    (photos / "n01440764_empty.jpg").write_bytes(b"")
    chosen = calibration_samples(photos, 7)
    assert len(chosen) == 6 and "skipped 1 unreadable calibration images of 7" in capsys.readouterr().err
    for i in range(6):
        (photos / f"n01440764_broken{i}.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="7 of 13 calibration images are unreadable, too few readable ones remain"):
        calibration_samples(photos, 13)


def test_imagenet_val_in_both_layouts_without_shared(tmp_path, monkeypatch):
    """A user's ImageNet val: 1000 class folders (their sorted wnids are the class order), or the flat folder with
    the devkit's ground truth given by path; no ../shared needed for either."""
    from PIL import Image

    from t2tedge.data import discover

    monkeypatch.setenv("T2TEDGE_SHARED", str(tmp_path / "no-shared"))
    folders = tmp_path / "val_folders"
    wnids = [f"n{i:08d}" for i in range(1000)]
    for wnid in (wnids[0], wnids[999]):
        (folders / wnid).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(folders / wnid / f"{wnid}_1.JPEG")
    for wnid in wnids[1:999]:
        (folders / wnid).mkdir()
    assert [(s.path.parent.name, s.label) for s in discover(folders)] == [(wnids[0], 0), (wnids[999], 999)]
    flat = tmp_path / "val_flat"
    flat.mkdir()
    for n in (1, 2):
        Image.new("RGB", (8, 8)).save(flat / f"ILSVRC2012_val_{n:08d}.JPEG")
    with pytest.raises(DataError, match="pass the devkit's ground truth"):
        discover(flat)
    truth = tmp_path / "val.txt"
    truth.write_text("ILSVRC2012_val_00000001.JPEG 65\nILSVRC2012_val_00000002.JPEG 970\n")
    assert [s.label for s in discover(flat, labels_file=truth)] == [65, 970]
