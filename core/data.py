"""Image datasets in the layouts ImageNet tooling uses, with a model's own preprocessing.

Layouts (auto-detected):
- image folder: ROOT/<class>/<image> (ImageNet val as ImageFolder, Imagenette);
- flat wnid-prefixed: ROOT/<wnid>_<anything>.JPEG (imagenet-sample);
- flat ImageNet val: ROOT/ILSVRC2012_val_*.JPEG with a ground-truth file "<file> <index>".
Labels are indices in the standard 1000-class wnid order unless `num_classes` asks for the
dataset's own sorted class folders (e.g. a 10-class Imagenette head).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from t2tedge.errors import DataError, UsageError
from t2tedge.paths import shared_path, synset_words_file

# Calibration images drawn when a command is not told how many (--num-calib).
DEFAULT_NUM_CALIB = 256

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
_INTERPOLATION = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                  "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


def imagenet_wnids() -> list[str]:
    path = synset_words_file()
    if not path.is_file():
        raise DataError(f"ImageNet class list not found at {path} (set T2TEDGE_SHARED)")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def imagenet_class_names() -> list[str]:
    """Readable, unique class labels in class-index order: each synset's first name (wnid added where two clash)."""
    path = synset_words_file()
    if not path.is_file():
        raise DataError(f"ImageNet class list not found at {path} (set T2TEDGE_SHARED)")
    entries = [line.split(maxsplit=1) for line in path.read_text().splitlines() if line.strip()]
    firsts = [words.split(",")[0].strip() for _, words in entries]
    return [f"{name} ({wnid})" if firsts.count(name) > 1 else name for (wnid, _), name in zip(entries, firsts)]


def _visible(path: Path) -> bool:
    """Not a hidden or system file: macOS's ._* AppleDouble files and .DS_Store end in image suffixes too."""
    return not path.name.startswith(".")


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _visible(p) and p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _require_folder(root: Path, what: str) -> None:
    """A folder the user named: a file there is a usage error (exit 2), nothing there a data error."""
    if root.is_file():
        raise UsageError(f"{root} is a file, not an {what}" if what[0] in "aeiou" else f"{root} is a file, not a {what}")
    if not root.is_dir():
        raise DataError(f"{what} not found: {root}")


def discover_images(root: str | Path) -> list[Sample]:
    """Every image under `root`, recursively, labels unknown (-1): what calibration needs from a user's photos.
    Hidden files and folders are skipped."""
    root = Path(root)
    _require_folder(root, "image folder")
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                    and all(_visible(Path(part)) for part in p.relative_to(root).parts))
    if not images:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {root}")
    return [Sample(p, -1) for p in images]


def _default_ground_truth() -> Path:
    return shared_path("data", "imagenet-meta", "ILSVRC2012_val_ground_truth_caffe.txt")


def discover(root: str | Path, num_classes: int = 1000, labels_file: str | Path | None = None) -> list[Sample]:
    """List (image, label) pairs under `root`, sorted by path."""
    root = Path(root)
    _require_folder(root, "data folder")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and _visible(p))
    if class_dirs:
        if num_classes == 1000 and len(class_dirs) == 1000 and not synset_words_file().is_file():
            # The whole ImageNet val in class folders: their sorted wnids are the standard class order itself.
            index = {d.name: i for i, d in enumerate(class_dirs)}
        elif num_classes == 1000:
            index = {w: i for i, w in enumerate(imagenet_wnids())}
            unknown = [d.name for d in class_dirs if d.name not in index]
            if unknown:
                raise DataError(f"{root}: class folders {unknown[:3]} are not ImageNet wnids; pass --num-classes "
                                f"{len(class_dirs)} to label folders in sorted order")
        else:
            if len(class_dirs) != num_classes:
                raise DataError(f"{root}: {len(class_dirs)} class folders but num_classes={num_classes}")
            index = {d.name: i for i, d in enumerate(class_dirs)}
        samples = [Sample(p, index[d.name]) for d in class_dirs for p in _images_in(d)]
    else:
        images = _images_in(root)
        if images and all(p.name.startswith("ILSVRC2012_val_") for p in images):
            truth_path = Path(labels_file) if labels_file else _default_ground_truth()
            if not truth_path.is_file():
                raise DataError(f"labels file for flat ImageNet val not found: {truth_path}; pass the devkit's ground "
                                f"truth (lines 'ILSVRC2012_val_00000001.JPEG INDEX') with --labels FILE")
            truth = dict(line.split() for line in truth_path.read_text().splitlines() if line.strip())
            missing = [p.name for p in images if p.name not in truth]
            if missing:
                raise DataError(f"{truth_path}: no label for {missing[0]}")
            samples = [Sample(p, int(truth[p.name])) for p in images]
        else:
            index = {w: i for i, w in enumerate(imagenet_wnids())}
            samples = []
            for p in images:
                wnid = p.name.split("_", 1)[0]
                if wnid not in index:
                    raise DataError(f"{p}: file name does not start with an ImageNet wnid")
                samples.append(Sample(p, index[wnid]))
    if not samples:
        raise DataError(f"no images found in {root}")
    return samples


def evenly_spread(samples: Sequence[Sample], limit: int | None) -> list[Sample]:
    """At most `limit` samples taken at an even stride, so a limit on a class-sorted folder covers every class."""
    if not limit or limit >= len(samples):
        return list(samples)
    return list(samples[:: len(samples) // limit][:limit])


def split(samples: Sequence[Sample], first: int, seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """Deterministic disjoint split: `first` samples drawn with `seed`, and the rest (both path-sorted)."""
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    chosen = set(order[:first])
    picked = [s for i, s in enumerate(samples) if i in chosen]
    rest = [s for i, s in enumerate(samples) if i not in chosen]
    return picked, rest


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB with each mode's full range mapped to 0..255: `convert("RGB")` clips 16-bit grey (modes I;16 and I) to
    white instead of scaling it."""
    if img.mode.startswith("I;16") or img.mode == "I":
        grey = np.asarray(img, dtype=np.float64) / 257.0  # 65535 / 255
        img = Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8), mode="L")
    elif img.mode == "F":
        grey = np.asarray(img, dtype=np.float64)
        scale = 255.0 if grey.size and grey.max() <= 1.0 else 1.0
        img = Image.fromarray(np.clip(np.rint(grey * scale), 0, 255).astype(np.uint8), mode="L")
    return img.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Open an image as upright RGB: the EXIF orientation a phone camera writes is applied, and grayscale, 16-bit,
    CMYK and palette images are converted with their full range; one-line error otherwise."""
    try:
        with Image.open(path) as img:
            img.load()
            return _to_rgb(ImageOps.exif_transpose(img))
    except Image.DecompressionBombError as exc:
        raise DataError(f"image {path} is too large to decode safely ({exc}); downscale it") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


def readable_samples(samples: Sequence[Sample], what: str = "images",
                     warn=None) -> list[Sample]:
    """The samples whose files decode, in order. Unreadable ones are skipped with one warning (their count and the
    first path) while at least half remain; otherwise one error line."""
    import sys

    kept, bad = [], []
    for sample in samples:
        try:
            load_image(sample.path)
            kept.append(sample)
        except DataError as exc:
            bad.append(str(exc))
    if bad:
        if len(kept) * 2 < len(samples) or not kept:
            raise DataError(f"{len(bad)} of {len(samples)} {what} are unreadable, too few readable ones remain "
                            f"(first: {bad[0]})")
        (warn or (lambda text: print(text, file=sys.stderr)))(
            f"warning: skipped {len(bad)} unreadable {what} of {len(samples)} (first: {bad[0]})")
    return kept


def preprocess(img: Image.Image, cfg) -> np.ndarray:
    """Resize shorter side, center crop, normalise: returns float32 CHW."""
    try:
        interp = _INTERPOLATION[cfg.interpolation]
    except KeyError:
        raise DataError(f"unknown interpolation {cfg.interpolation!r}") from None
    width, height = img.size
    scale = cfg.resize / min(width, height)
    new_w, new_h = max(cfg.crop, round(width * scale)), max(cfg.crop, round(height * scale))
    img = img.resize((new_w, new_h), interp)
    left, top = int(round((new_w - cfg.crop) / 2.0)), int(round((new_h - cfg.crop) / 2.0))
    return normalize(img.crop((left, top, left + cfg.crop, top + cfg.crop)), cfg.mean, cfg.std)


def normalize(img: Image.Image, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """RGB image -> float32 CHW, scaled to [0, 1] then (x - mean) / std."""
    array = np.asarray(img, dtype=np.float32) / 255.0
    array = (array - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1))


class ImageDataset:
    """Indexable (CHW float32 array, label) pairs; works with torch's DataLoader."""

    def __init__(self, samples: Sequence[Sample], cfg) -> None:
        self.samples = list(samples)
        self.cfg = cfg

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        sample = self.samples[i]
        return preprocess(load_image(sample.path), self.cfg), sample.label


def iter_batches(dataset: ImageDataset, batch_size: int, workers: int = 2,
                 progress: str | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (images NCHW float32, labels int64) batches in order, decoding in worker threads."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    bar = tqdm(total=len(dataset), desc=progress, unit="img", disable=progress is None, leave=False)
    # PIL decodes and resizes without the GIL, so threads are enough and keep errors in this process.
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for start in range(0, len(dataset), batch_size):
                items = list(pool.map(dataset.__getitem__, range(start, min(start + batch_size, len(dataset)))))
                bar.update(len(items))
                yield np.stack([x for x, _ in items]), np.asarray([y for _, y in items], dtype=np.int64)
    finally:
        bar.close()  # also on an error, so the error line does not follow a half-drawn bar


def load_batch(samples: Sequence[Sample], cfg) -> tuple[np.ndarray, np.ndarray]:
    dataset = ImageDataset(samples, cfg)
    return next(iter_batches(dataset, batch_size=max(1, len(dataset))))
