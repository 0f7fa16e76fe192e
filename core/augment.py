"""Batch augmentation on tensors, so a GPU trainer is not held back by per-image CPU decoding.

Every op takes a float batch (N, 3, H, W) on any device and a `torch.Generator` on that device, so
a run is reproducible for a seed on CPU (the smoke tests) and on CUDA alike. Pixel ops work on
[0, 1] values; `random_erasing` and the mixes work on normalised ones, as timm orders them.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from t2tedge.data import Sample, load_image

CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


def preload_images(samples: Sequence[Sample], size: int, workers: int = 4) -> torch.Tensor:
    """Decode every image once, squashed to size x size: a uint8 (N, 3, size, size) tensor.

    Squashing keeps the whole frame for random-resized-crop to choose from (Imagenette as shared here
    is already square); 9469 images at 192 px take 1 GB.
    """
    from tqdm import tqdm

    def decode(sample: Sample) -> np.ndarray:
        img = load_image(sample.path)
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BICUBIC)
        return np.array(img, dtype=np.uint8).transpose(2, 0, 1)

    out = torch.empty((len(samples), 3, size, size), dtype=torch.uint8)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for i, array in enumerate(tqdm(pool.map(decode, samples), total=len(samples), desc="decoding",
                                       leave=False)):
            out[i] = torch.from_numpy(array)
    return out


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen, device=gen.device)


def random_resized_crop(batch: torch.Tensor, size: int, gen: torch.Generator, flip: bool = True,
                        scale: tuple[float, float] = CROP_SCALE,
                        ratio: tuple[float, float] = CROP_RATIO) -> torch.Tensor:
    """Inception-style crop (area fraction in `scale`, log-uniform aspect in `ratio`) and a random
    horizontal flip, resampled bilinearly to size x size in one `grid_sample`.

    Like torchvision, ten draws are tried per image and the first that fits is kept; an image with
    none falls back to its central square.
    """
    n, _, height, width = batch.shape
    tries = 10
    area = _uniform(n * tries, *scale, gen).view(n, tries) * (height * width)
    log_ratio = _uniform(n * tries, math.log(ratio[0]), math.log(ratio[1]), gen).view(n, tries).exp()
    crop_w, crop_h = (area * log_ratio).sqrt(), (area / log_ratio).sqrt()
    fits = (crop_w <= width) & (crop_h <= height)
    first = torch.where(fits.any(1), fits.float().argmax(1), torch.zeros_like(fits[:, 0], dtype=torch.long))
    pick = first.unsqueeze(1)
    side = float(min(height, width))
    any_fit = fits.any(1)
    crop_w = torch.where(any_fit, crop_w.gather(1, pick).squeeze(1), torch.full_like(crop_w[:, 0], side))
    crop_h = torch.where(any_fit, crop_h.gather(1, pick).squeeze(1), torch.full_like(crop_h[:, 0], side))
    centre_x = crop_w / 2 + (width - crop_w) * torch.rand(n, generator=gen, device=gen.device)
    centre_y = crop_h / 2 + (height - crop_h) * torch.rand(n, generator=gen, device=gen.device)
    centre_x = torch.where(any_fit, centre_x, torch.full_like(centre_x, width / 2))
    centre_y = torch.where(any_fit, centre_y, torch.full_like(centre_y, height / 2))
    mirror = torch.ones(n, device=batch.device)
    if flip:
        mirror = torch.where(torch.rand(n, generator=gen, device=gen.device) < 0.5, -mirror, mirror)
    # affine_grid maps output [-1, 1] to input [-1, 1] (align_corners=False: pixel edges).
    theta = torch.zeros(n, 2, 3, device=batch.device)
    theta[:, 0, 0] = crop_w / width * mirror
    theta[:, 0, 2] = 2 * centre_x / width - 1
    theta[:, 1, 1] = crop_h / height
    theta[:, 1, 2] = 2 * centre_y / height - 1
    grid = F.affine_grid(theta.to(batch.dtype), [n, batch.shape[1], size, size], align_corners=False)
    return F.grid_sample(batch, grid, mode="bilinear", padding_mode="border", align_corners=False)


def color_jitter(batch: torch.Tensor, strength: float, gen: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation, each scaled by a factor in [1 - s, 1 + s]; [0, 1] in and out."""
    if strength <= 0:
        return batch
    n = batch.shape[0]
    factors = [_uniform(n, max(0.0, 1 - strength), 1 + strength, gen).view(n, 1, 1, 1) for _ in range(3)]
    luma = torch.tensor([0.299, 0.587, 0.114], device=batch.device, dtype=batch.dtype).view(1, 3, 1, 1)
    out = batch * factors[0]
    grey_mean = (out * luma).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    out = (out - grey_mean) * factors[1] + grey_mean
    grey = (out * luma).sum(1, keepdim=True)
    out = (out - grey) * factors[2] + grey
    return out.clamp_(0, 1)


def random_erasing(batch: torch.Tensor, probability: float, gen: torch.Generator,
                   area: tuple[float, float] = (0.02, 1 / 3)) -> torch.Tensor:
    """One rectangle per chosen image replaced by N(0, 1) noise (on normalised values, as timm's 'pixel' mode)."""
    if probability <= 0:
        return batch
    n, _, height, width = batch.shape
    chosen = torch.rand(n, generator=gen, device=gen.device) < probability
    target = _uniform(n, *area, gen) * height * width
    aspect = _uniform(n, math.log(0.3), math.log(1 / 0.3), gen).exp()
    rect_h = (target * aspect).sqrt().clamp(1, height)
    rect_w = (target / aspect).sqrt().clamp(1, width)
    top = (height - rect_h) * torch.rand(n, generator=gen, device=gen.device)
    left = (width - rect_w) * torch.rand(n, generator=gen, device=gen.device)
    rows = torch.arange(height, device=batch.device).view(1, height, 1)
    cols = torch.arange(width, device=batch.device).view(1, 1, width)
    inside = ((rows >= top.view(n, 1, 1)) & (rows < (top + rect_h).view(n, 1, 1))
              & (cols >= left.view(n, 1, 1)) & (cols < (left + rect_w).view(n, 1, 1)) & chosen.view(n, 1, 1))
    noise = torch.randn(batch.shape, generator=gen, device=gen.device, dtype=batch.dtype)
    return torch.where(inside.unsqueeze(1), noise, batch)


def mix_batch(images: torch.Tensor, targets: torch.Tensor, mixup: float, cutmix: float,
              rng: np.random.Generator, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or CutMix with a shuffled copy of the batch (one of the two, evenly, when both are on).

    Scalar draws (which mix, its weight, the box) come from `rng`, the pairing from `gen`.
    CutMix's label weight is the pasted box's actual area after clipping to the image.
    """
    if mixup <= 0 and cutmix <= 0:
        return images, targets
    use_cutmix = cutmix > 0 and (mixup <= 0 or rng.random() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = float(rng.beta(alpha, alpha))
    perm = torch.randperm(images.shape[0], generator=gen, device=gen.device)
    if not use_cutmix:
        return lam * images + (1 - lam) * images[perm], lam * targets + (1 - lam) * targets[perm]
    _, _, height, width = images.shape
    cut = math.sqrt(1 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    images = images.clone()
    images[:, :, top:bottom, left:right] = images[perm, :, top:bottom, left:right]
    lam = 1 - (bottom - top) * (right - left) / (height * width)
    return images, lam * targets + (1 - lam) * targets[perm]
