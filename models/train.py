"""A small, plain trainer for the registry's models (AdamW, warm-up + cosine, label smoothing).

Writes checkpoints in the official T2T-ViT release layout ({"state_dict": ..., "state_dict_ema": ...})
so every other command loads them like a downloaded release file. Resumable; deterministic for a seed.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from t2tedge.augment import (CROP_RATIO, CROP_SCALE, color_jitter, mix_batch, preload_images, random_erasing,
                             random_resized_crop)
from t2tedge.data import Sample, discover, evenly_spread, load_image, normalize, preprocess
from t2tedge.errors import CheckpointError, DataError
from t2tedge.fileio import atomic_path
from t2tedge.models import create_model, get_spec
from t2tedge.models.checkpoint import read_state_dict


@dataclass
class TrainConfig:
    model: str
    data: str
    epochs: int = 100
    img_size: int = 224
    batch: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 5
    label_smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    color_jitter: float = 0.0
    random_erase: float = 0.0
    ema_decay: float = 0.0
    amp: bool = False
    seed: int = 0
    workers: int = 2
    max_steps_per_epoch: int | None = None
    limit: int | None = None
    drop_path: float = 0.1
    preload: int | None = None
    eval_every: int = 1
    save_every: int = 1


def _random_resized_crop(img: Image.Image, size: int, rng: random.Random) -> Image.Image:
    width, height = img.size
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*CROP_SCALE)
        ratio = math.exp(rng.uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
        w, h = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            return img.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + w, top + h))
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return img.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side))


def augment(sample: Sample, size: int, seed: int) -> np.ndarray:
    """Random resized crop + horizontal flip, seeded per (run, epoch, image) so threads cannot reorder it.

    Returns float32 CHW in [0, 1]; the batch-level ops and normalisation follow on the training device.
    """
    rng = random.Random(seed)
    img = _random_resized_crop(load_image(sample.path), size, rng)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return normalize(img, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def steps_per_epoch(images: int, cfg: TrainConfig) -> int:
    steps = images // cfg.batch
    return min(steps, cfg.max_steps_per_epoch) if cfg.max_steps_per_epoch else steps


def _epoch_order(count: int, cfg: TrainConfig, epoch: int) -> list[list[int]]:
    order = list(range(count))
    random.Random(cfg.seed * 100003 + epoch).shuffle(order)
    return [order[step * cfg.batch:(step + 1) * cfg.batch] for step in range(steps_per_epoch(count, cfg))]


def decoded_batches(samples: list[Sample], cfg: TrainConfig, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Crops decoded per image on CPU threads: [0, 1] float batches and labels."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, cfg.workers)) as pool:
        for idx in _epoch_order(len(samples), cfg, epoch):
            seeds = [hash((cfg.seed, epoch, i)) & 0x7FFFFFFF for i in idx]
            arrays = list(pool.map(lambda a: augment(samples[a[0]], cfg.img_size, a[1]), zip(idx, seeds)))
            yield torch.from_numpy(np.stack(arrays)), torch.tensor([samples[i].label for i in idx])


def preloaded_batches(images: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig,
                      epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Crops cut from images decoded once and held on the training device: [0, 1] float batches."""
    gen = torch.Generator(device=images.device).manual_seed(cfg.seed * 100003 + epoch)
    for idx in _epoch_order(len(images), cfg, epoch):
        index = torch.tensor(idx, device=images.device)
        batch = images.index_select(0, index).float().div_(255)
        yield random_resized_crop(batch, cfg.img_size, gen), labels.index_select(0, index)


def finish_batch(images: torch.Tensor, labels: torch.Tensor, num_classes: int, cfg: TrainConfig, mean, std,
                 gen: torch.Generator, global_step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour jitter, normalisation, random erasing and mixup/CutMix: the batch-level ops both sources share."""
    images = color_jitter(images, cfg.color_jitter, gen)
    mean_t = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    images = random_erasing((images - mean_t) / std_t, cfg.random_erase, gen)
    targets = F.one_hot(labels, num_classes).float()
    rng = np.random.default_rng(cfg.seed + global_step)
    return mix_batch(images, targets, cfg.mixup, cfg.cutmix, rng, gen)


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * progress))


def class_count(data: str | os.PathLike) -> int:
    folders = [p for p in Path(data).iterdir() if p.is_dir()] if Path(data).is_dir() else []
    if not folders:
        raise DataError(f"training needs class folders: {data}/<class>/<image>")
    return len(folders)


def evaluation_images(samples: list[Sample], cfg: TrainConfig) -> torch.Tensor:
    """The validation images through the model's own eval preprocessing (at the training size), once."""
    from concurrent.futures import ThreadPoolExecutor
    from dataclasses import replace

    pre = get_spec(cfg.model).preprocess
    pre = replace(pre, crop=cfg.img_size, resize=int(round(cfg.img_size * pre.resize / pre.crop)))
    with ThreadPoolExecutor(max_workers=max(1, cfg.workers)) as pool:
        arrays = list(pool.map(lambda s: preprocess(load_image(s.path), pre), samples))
    return torch.from_numpy(np.stack(arrays))


@torch.no_grad()
def evaluate_top1(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int,
                  amp_dtype: torch.dtype | None = None) -> float:
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            predicted = model(chunk).argmax(1)
        correct += int((predicted.cpu() == labels[start:start + batch]).sum())
    return correct / len(images)


def _amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if not cfg.amp or device.type != "cuda":
        return None
    # bf16 has fp32's range, so no loss scaling; fp16 with a GradScaler on GPUs without it.
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def train(cfg: TrainConfig, out: str | os.PathLike, val_data: str | os.PathLike | None = None,
          resume: bool = True, save_fp16: bool = False, log=print) -> dict:
    import copy
    import time

    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    num_classes = class_count(cfg.data)
    samples = discover(cfg.data, num_classes=num_classes)
    samples = evenly_spread(samples, cfg.limit)
    if len(samples) < cfg.batch:
        raise DataError(f"{cfg.data}: {len(samples)} images is fewer than one batch of {cfg.batch}")
    val = discover(val_data, num_classes=num_classes) if val_data else []
    val_images = evaluation_images(val, cfg) if val else None
    val_labels = torch.tensor([s.label for s in val])
    if cfg.preload:
        train_images = preload_images(samples, cfg.preload, cfg.workers).to(device)
        train_labels = torch.tensor([s.label for s in samples], device=device)
    overrides = {"num_classes": num_classes}
    if cfg.model.startswith("t2t_vit"):
        overrides.update(img_size=cfg.img_size, drop_path_rate=cfg.drop_path)
    model = create_model(cfg.model, seed=cfg.seed, **overrides).to(device)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim > 1 and "pos_embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    ema = copy.deepcopy(model).eval().requires_grad_(False) if cfg.ema_decay else None
    out = Path(out)
    start_epoch, history = 0, []
    if resume and out.is_file():
        state = torch.load(out, map_location="cpu", weights_only=True)
        if state.get("train_config", {}).get("model") != cfg.model:
            raise CheckpointError(f"{out} was trained for another model; pass a new --out or --no-resume")
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and "state_dict_ema" in state:
            ema.load_state_dict(state["state_dict_ema"])
        start_epoch, history = state["epoch"] + 1, state.get("history", [])
        log(f"resuming {out} at epoch {start_epoch}")
    steps = steps_per_epoch(len(samples), cfg)
    total, warmup = cfg.epochs * steps, cfg.warmup_epochs * steps
    amp_dtype = _amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    mean, std = get_spec(cfg.model).preprocess.mean, get_spec(cfg.model).preprocess.std
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        began = time.perf_counter()
        batches = (preloaded_batches(train_images, train_labels, cfg, epoch) if cfg.preload
                   else decoded_batches(samples, cfg, epoch))
        bar = tqdm(batches, total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False)
        gen = torch.Generator(device=device).manual_seed(cfg.seed * 100003 + epoch + 1)
        losses: list[torch.Tensor] = []
        for step, (images, labels) in enumerate(bar):
            global_step = epoch * steps + step
            for group in optimizer.param_groups:
                group["lr"] = lr_at(global_step, total, warmup, cfg.lr)
            images, labels = images.to(device, non_blocking=True), labels.to(device)
            images, targets = finish_batch(images, labels, num_classes, cfg, mean, std, gen, global_step)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = model(images)
            loss = F.cross_entropy(logits.float(), targets, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            scaler.step(optimizer)
            scaler.update()
            if ema is not None:
                _update_ema(ema, model, cfg.ema_decay)
            losses.append(loss.detach())
            if step % 20 == 0 or step == steps - 1:
                # Reading the loss waits for the GPU, so only every 20 steps.
                recent = float(torch.stack(losses[-20:]).mean())
                if not math.isfinite(recent):
                    raise RuntimeError(f"loss became {recent} at epoch {epoch + 1} step {step}")
                bar.set_postfix(loss=f"{recent:.3f}")
        record = {"epoch": epoch + 1, "loss": float(torch.stack(losses).mean()),
                  "seconds": round(time.perf_counter() - began, 2)}
        if val and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            record["val_top1"] = evaluate_top1(model, val_images, val_labels, cfg.batch, amp_dtype)
            if ema is not None:
                record["val_top1_ema"] = evaluate_top1(ema, val_images, val_labels, cfg.batch, amp_dtype)
        history.append(record)
        log(" ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
        if (epoch + 1) % cfg.save_every and epoch + 1 != cfg.epochs:
            continue
        state = {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                 "optimizer": optimizer.state_dict(), "epoch": epoch, "history": history,
                 "train_config": asdict(cfg), "num_classes": num_classes}
        if ema is not None:
            state["state_dict_ema"] = {k: v.cpu() for k, v in ema.state_dict().items()}
        with atomic_path(out, suffix=".pth") as tmp:
            torch.save(state, tmp)
    if save_fp16:
        release = read_state_dict(out)  # the EMA weights when there are any, as the official release ships
        compact = {k: v.half() if v.is_floating_point() else v for k, v in release.items()}
        with atomic_path(out.with_suffix(".fp16.pth"), suffix=".pth") as tmp:
            torch.save({"state_dict_ema" if ema is not None else "state_dict": compact}, tmp)
    return {"checkpoint": str(out), "history": history, "num_classes": num_classes}


@torch.no_grad()
def _update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    params = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(list(ema.parameters()), params, 1 - decay)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers()):
        ema_buffer.copy_(buffer)
