"""Re-encode an image folder as small square WebP files, keeping its <class>/<image> layout.

For carrying a training set to a machine that takes a limited upload (Imagenette's 9469 training
images: 114 MB as shared, 49 MB at 192 px WebP quality 75). Only the training copy is compacted;
evaluation always reads the original images.

    .venv/bin/python scripts/compact_images.py ../shared/data/imagenette2/train /tmp/nette-train --size 192
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image


def compact(source: Path, dest: Path, size: int, quality: int, per_class: int | None) -> int:
    from t2tedge.data import IMAGE_SUFFIXES, load_image
    from t2tedge.fileio import atomic_path

    jobs = []
    for class_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        images = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for image in images[:per_class] if per_class else images:
            jobs.append((image, dest / class_dir.name / (image.stem + ".webp")))
    if not jobs:
        raise SystemExit(f"error: no <class>/<image> files under {source}")

    def encode(job: tuple[Path, Path]) -> int:
        image, target = job
        img = load_image(image).resize((size, size), Image.Resampling.BICUBIC)
        with atomic_path(target, suffix=".webp") as partial:
            img.save(partial, "WEBP", quality=quality, method=6)
        return target.stat().st_size

    with ThreadPoolExecutor() as pool:
        return sum(pool.map(encode, jobs))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--size", type=int, default=192, help="square side in pixels (default: %(default)s)")
    parser.add_argument("--quality", type=int, default=75, help="WebP quality (default: %(default)s)")
    parser.add_argument("--per-class", type=int, help="keep only the first N images of each class")
    args = parser.parse_args()
    total = compact(args.source, args.dest, args.size, args.quality, args.per_class)
    print(f"{args.dest}: {total / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
