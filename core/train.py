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

from t2tedge.data import Sample, discover, load_image, normalize, preprocess
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
    ema_decay: float = 0.0
    amp: bool = False
    seed: int = 0
    workers: int = 2
    max_steps_per_epoch: int | None = None
    limit: int | None = None
    drop_path: float = 0.1


def _random_resized_crop(img: Image.Image, size: int, rng: random.Random) -> Image.Image:
    width, height = img.size
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(0.08, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            return img.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + w, top + h))
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return img.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side))


def augment(sample: Sample, size: int, mean, std, seed: int) -> np.ndarray:
    """Random resized crop + horizontal flip, seeded per (run, epoch, image) so threads cannot reorder it."""
    rng = random.Random(seed)
    img = _random_resized_crop(load_image(sample.path), size, rng)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return normalize(img, mean, std)


def steps_per_epoch(images: int, cfg: TrainConfig) -> int:
    steps = images // cfg.batch
    return min(steps, cfg.max_steps_per_epoch) if cfg.max_steps_per_epoch else steps


def train_batches(samples: list[Sample], cfg: TrainConfig, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    from concurrent.futures import ThreadPoolExecutor

    spec = get_spec(cfg.model).preprocess
    order = list(range(len(samples)))
    random.Random(cfg.seed * 100003 + epoch).shuffle(order)
    steps = steps_per_epoch(len(order), cfg)
    with ThreadPoolExecutor(max_workers=max(1, cfg.workers)) as pool:
        for step in range(steps):
            idx = order[step * cfg.batch:(step + 1) * cfg.batch]
            seeds = [hash((cfg.seed, epoch, i)) & 0x7FFFFFFF for i in idx]
            arrays = list(pool.map(lambda a: augment(samples[a[0]], cfg.img_size, spec.mean, spec.std, a[1]),
                                   zip(idx, seeds)))
            yield torch.from_numpy(np.stack(arrays)), torch.tensor([samples[i].label for i in idx])


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


@torch.no_grad()
def evaluate_top1(model: torch.nn.Module, samples: list[Sample], cfg: TrainConfig, device: torch.device) -> float:
    from dataclasses import replace

    pre = get_spec(cfg.model).preprocess
    pre = replace(pre, crop=cfg.img_size, resize=int(round(cfg.img_size * pre.resize / pre.crop)))
    model.eval()
    correct = 0
    for start in range(0, len(samples), cfg.batch):
        chunk = samples[start:start + cfg.batch]
        images = torch.from_numpy(np.stack([preprocess(load_image(s.path), pre) for s in chunk])).to(device)
        correct += int((model(images).argmax(1).cpu() == torch.tensor([s.label for s in chunk])).sum())
    return correct / len(samples)


def train(cfg: TrainConfig, out: str | os.PathLike, val_data: str | os.PathLike | None = None,
          resume: bool = True, save_fp16: bool = False, log=print) -> dict:
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    num_classes = class_count(cfg.data)
    samples = discover(cfg.data, num_classes=num_classes)
    if cfg.limit:
        samples = samples[:: max(1, len(samples) // cfg.limit)][: cfg.limit]
    if len(samples) < cfg.batch:
        raise DataError(f"{cfg.data}: {len(samples)} images is fewer than one batch of {cfg.batch}")
    val = discover(val_data, num_classes=num_classes) if val_data else []
    overrides = {"num_classes": num_classes}
    if cfg.model.startswith("t2t_vit"):
        overrides.update(img_size=cfg.img_size, drop_path_rate=cfg.drop_path)
    model = create_model(cfg.model, seed=cfg.seed, **overrides).to(device)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim > 1 and "pos_embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()} if cfg.ema_decay else None
    out = Path(out)
    start_epoch, history = 0, []
    if resume and out.is_file():
        state = torch.load(out, map_location="cpu", weights_only=True)
        if state.get("train_config", {}).get("model") != cfg.model:
            raise CheckpointError(f"{out} was trained for another model; pass a new --out or --no-resume")
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and "state_dict_ema" in state:
            ema = {k: v.to(device) for k, v in state["state_dict_ema"].items()}
        start_epoch, history = state["epoch"] + 1, state.get("history", [])
        log(f"resuming {out} at epoch {start_epoch}")
    steps = steps_per_epoch(len(samples), cfg)
    total, warmup = cfg.epochs * steps, cfg.warmup_epochs * steps
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        bar = tqdm(train_batches(samples, cfg, epoch), total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   leave=False)
        losses = []
        for step, (images, labels) in enumerate(bar):
            global_step = epoch * steps + step
            for group in optimizer.param_groups:
                group["lr"] = lr_at(global_step, total, warmup, cfg.lr)
            images, labels = images.to(device, non_blocking=True), labels.to(device)
            targets = F.one_hot(labels, num_classes).float()
            if cfg.mixup > 0:
                lam = float(np.random.default_rng(cfg.seed + global_step).beta(cfg.mixup, cfg.mixup))
                perm = torch.randperm(images.shape[0], device=device)
                images = lam * images + (1 - lam) * images[perm]
                targets = lam * targets + (1 - lam) * targets[perm]
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                logits = model(images)
            loss = F.cross_entropy(logits.float(), targets, label_smoothing=cfg.label_smoothing)
            if not torch.isfinite(loss):
                raise RuntimeError(f"loss became {loss.item()} at epoch {epoch + 1} step {step}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            scaler.step(optimizer)
            scaler.update()
            if ema is not None:
                with torch.no_grad():
                    for k, v in model.state_dict().items():
                        ema[k].copy_(ema[k] * cfg.ema_decay + v * (1 - cfg.ema_decay) if v.is_floating_point() else v)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        record = {"epoch": epoch + 1, "loss": float(np.mean(losses))}
        if val:
            record["val_top1"] = evaluate_top1(model, val, cfg, device)
        history.append(record)
        log(" ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
        state = {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                 "optimizer": optimizer.state_dict(), "epoch": epoch, "history": history,
                 "train_config": asdict(cfg), "num_classes": num_classes}
        if ema is not None:
            state["state_dict_ema"] = {k: v.cpu() for k, v in ema.items()}
        with atomic_path(out, suffix=".pth") as tmp:
            torch.save(state, tmp)
    if save_fp16:
        release = read_state_dict(out)  # the EMA weights when there are any, as the official release ships
        compact = {k: v.half() if v.is_floating_point() else v for k, v in release.items()}
        with atomic_path(out.with_suffix(".fp16.pth"), suffix=".pth") as tmp:
            torch.save({"state_dict_ema" if ema is not None else "state_dict": compact}, tmp)
    return {"checkpoint": str(out), "history": history, "num_classes": num_classes}
