"""Reading checkpoints in the official T2T-ViT release format (and plain state dicts), strictly."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn

from t2tedge.errors import CheckpointError, first_line

# Wrapper keys of the official release (`state_dict_ema` from timm's EMA), training scripts and others.
WRAPPER_KEYS = ("state_dict_ema", "state_dict", "model_ema", "model")
_SHOWN_KEYS = 3
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a checkpoint file as a flat {name: tensor} dict, unwrapping release wrappers and `module.`."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a file; pass the .pth / .pth.tar file in it")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        # timm training scripts save their argparse.Namespace beside the weights; it carries no code.
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged or foreign file can fail anywhere inside the unpickler
        text = _ANSI.sub("", str(exc)).strip()
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if "Weights only load failed" in text:
            what = f" ({refused.group(1)})" if refused else ""
            raise CheckpointError(f"checkpoint {path} holds Python objects{what} besides tensors, which t2tedge does "
                                  f"not unpickle (running them could run code); re-save only its state dict, e.g. "
                                  f"torch.save(model.state_dict(), 'weights.pth')") from None
        if "PytorchStreamReader" in text or "central directory" in text:
            raise CheckpointError(f"checkpoint {path} is truncated or damaged ({path.stat().st_size} bytes, not a "
                                  f"complete torch archive); copy or download it again") from None
        # The first sentence, whole: torch's messages run on for paragraphs.
        raise CheckpointError(f"cannot read checkpoint {path}: {first_line(exc, text=text.split('. ')[0])}") from None
    return unwrap_state_dict(obj, source=str(path))


def unwrap_state_dict(obj: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{source}: no state dict found (expected one of {', '.join(WRAPPER_KEYS)} or a bare dict)")
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: entry {key!r} is {type(value).__name__}, not a tensor")
        state[key[len("module."):] if key.startswith("module.") else key] = value
    return state


def _first(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN_KEYS])
    return shown + (f" (+{len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else "")


def _classifier_hint(model: nn.Module, state: Mapping[str, torch.Tensor], mismatched: list[str]) -> str:
    """When only the last Linear differs, the checkpoint is a fine-tune with another class count: say which."""
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears or {k.rsplit(".", 1)[0] for k in mismatched} != {linears[-1]}:
        return ""
    return f" (a {state[linears[-1] + '.weight'].shape[0]}-class classifier: pass --num-classes to match)"


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint",
                     model_name: str = "model") -> None:
    """Raise CheckpointError naming the first offending keys unless `state` fits `model` exactly."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_first(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_first(unexpected)}")
        raise CheckpointError(f"{source} does not fit {model_name}: " + "; ".join(parts))
    mismatched = [k for k, v in expected.items() if tuple(state[k].shape) != tuple(v.shape)]
    if mismatched:
        shown = _first([f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in mismatched])
        raise CheckpointError(f"{source} does not fit {model_name}: shape mismatch (checkpoint vs model): "
                              f"{shown}{_classifier_hint(model, state, mismatched)}")
    wrong_type = [f"{k} ({state[k].dtype})" for k, v in expected.items()
                  if v.is_floating_point() and not state[k].is_floating_point()]
    if wrong_type:
        raise CheckpointError(f"{source}: integer tensors where {model_name} has float weights: {_first(wrong_type)}")
    non_finite = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if non_finite:
        raise CheckpointError(f"{source}: non-finite values (NaN/Inf) in {_first(non_finite)}")


def load_checkpoint(model: nn.Module, path: str | os.PathLike, model_name: str = "model") -> nn.Module:
    state = read_state_dict(path)
    check_state_dict(model, state, source=str(path), model_name=model_name)
    # Weights may be stored in fp16 (compact releases); the model computes in its own dtype.
    reference = model.state_dict()
    state = {k: v.to(reference[k].dtype) if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    return model
