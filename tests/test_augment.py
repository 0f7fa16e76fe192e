"""Tensor batch augmentation: each op does what it says, within its stated bounds, reproducibly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from t2tedge.augment import color_jitter, mix_batch, random_erasing, random_resized_crop


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _coordinate_images(n: int, size: int) -> torch.Tensor:
    """Channel 0 holds the pixel's x centre / size, channel 1 its y centre, channel 2 the image index."""
    centres = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    images = torch.zeros(n, 3, size, size)
    images[:, 0] = centres.view(1, 1, size)
    images[:, 1] = centres.view(1, size, 1)
    images[:, 2] = torch.arange(n, dtype=torch.float32).view(n, 1, 1)
    return images


def test_full_crop_is_the_image_or_its_mirror():
    images = torch.rand(16, 3, 24, 24)
    out = random_resized_crop(images, 24, _gen(), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    same = (out - images).abs().amax((1, 2, 3)) < 1e-5
    mirrored = (out - images.flip(3)).abs().amax((1, 2, 3)) < 1e-5
    assert bool((same | mirrored).all())
    assert 0 < int(mirrored.sum()) < 16


def test_crop_boxes_respect_scale_and_ratio():
    size = 64
    images = _coordinate_images(200, size)
    out = random_resized_crop(images, 32, _gen(1), flip=False, scale=(0.25, 0.5), ratio=(0.75, 4 / 3))
    # Output pixel centres sample the box at (k + 0.5) / 32 of its extent, so the sampled
    # coordinate span is box * 31 / 32.
    width = (out[:, 0, 0, -1] - out[:, 0, 0, 0]) * 32 / 31
    height = (out[:, 1, -1, 0] - out[:, 1, 0, 0]) * 32 / 31
    area, aspect = width * height, width / height
    assert float(area.min()) > 0.25 - 1e-3 and float(area.max()) < 0.5 + 1e-3
    assert float(aspect.min()) > 0.75 - 1e-3 and float(aspect.max()) < 4 / 3 + 1e-3
    assert float(out[:, :2].min()) >= 0 and float(out[:, :2].max()) <= 1
    # Each output image comes from its own source only.
    assert torch.allclose(out[:, 2].mean((1, 2)), torch.arange(200, dtype=torch.float32), atol=1e-4)


def test_crop_is_reproducible_for_a_seed():
    images = torch.rand(8, 3, 20, 20)
    first = random_resized_crop(images, 16, _gen(5))
    assert torch.equal(first, random_resized_crop(images, 16, _gen(5)))
    assert not torch.equal(first, random_resized_crop(images, 16, _gen(6)))


def test_color_jitter_bounds():
    images = torch.rand(8, 3, 10, 10)
    assert torch.equal(color_jitter(images, 0.0, _gen()), images)
    out = color_jitter(images, 0.4, _gen())
    assert float(out.min()) >= 0 and float(out.max()) <= 1 and not torch.allclose(out, images)
    grey = torch.full((4, 3, 10, 10), 0.5)
    # A flat grey image only changes in brightness: its channels stay equal.
    out = color_jitter(grey, 0.4, _gen())
    assert torch.allclose(out[:, 0], out[:, 1]) and torch.allclose(out[:, 1], out[:, 2])


def test_random_erasing_replaces_one_rectangle():
    images = torch.full((32, 3, 40, 40), 7.0)
    assert torch.equal(random_erasing(images, 0.0, _gen()), images)
    out = random_erasing(images, 1.0, _gen())
    erased = (out != 7.0).all(1)
    fraction = erased.float().mean((1, 2))
    assert float(fraction.min()) > 0 and float(fraction.max()) <= 1 / 3 + 0.05
    rows, cols = erased.any(2), erased.any(1)
    # The erased pixels fill exactly the box spanned by their rows and columns.
    assert torch.equal(erased.sum((1, 2)), rows.sum(1) * cols.sum(1))


@pytest.mark.parametrize("mixup, cutmix", [(0.8, 0.0), (0.0, 1.0)])
def test_mixed_labels_match_mixed_pixels(mixup, cutmix):
    n = 8
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 16, 16).contiguous()
    targets = torch.eye(n)
    for step in range(5):
        mixed, soft = mix_batch(images, targets, mixup, cutmix, np.random.default_rng(step), _gen(step))
        assert torch.allclose(soft.sum(1), torch.ones(n))
        own = soft[torch.arange(n), torch.arange(n)]
        if cutmix:
            kept = (mixed[:, 0] == torch.arange(n, dtype=torch.float32).view(n, 1, 1)).float().mean((1, 2))
            # The label weight of an image's own class is the share of its pixels that stayed.
            assert torch.allclose(own, kept, atol=1e-6)
            assert float(own.min()) < 1
        else:
            # Mixup's pixels are the label-weighted mean of the indices.
            assert torch.allclose(mixed[:, 0, 0, 0], soft @ torch.arange(n, dtype=torch.float32), atol=1e-5)


def test_no_mixing_is_identity():
    images, targets = torch.rand(4, 3, 8, 8), torch.eye(4)
    out, soft = mix_batch(images, targets, 0.0, 0.0, np.random.default_rng(0), _gen())
    assert out is images and soft is targets
