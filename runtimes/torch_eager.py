"""PyTorch eager execution: the reference every other runtime is compared with."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from t2tedge.runtimes.base import Runtime, RuntimeDescription


class TorchRuntime(Runtime):
    name = "torch"
    consumes = "torch"

    def __init__(self, model: torch.nn.Module, threads: int | None, channels_last: bool) -> None:
        self.model = model.eval()
        self.threads = threads
        self.channels_last = channels_last

    @classmethod
    def load(cls, artifact: torch.nn.Module, *, threads: int | None = None, channels_last: bool | None = None,
             **options: Any) -> "TorchRuntime":
        """`channels_last`: hand torch each batch in NHWC memory order. By default on for convolutional networks
        (most parameters in Conv2d): torch's CPU convolutions, depthwise ones above all, ran MobileNetV1/V2
        1.4-1.6x faster that way at batch 50 on 2 cores, and T2T-ViT no differently. Logits move by ~1e-5."""
        if threads:
            torch.set_num_threads(threads)
        if channels_last is None:
            channels_last = is_convolutional(artifact)
        return cls(artifact, threads, channels_last)

    def run(self, batch: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if self.channels_last and tensor.dim() == 4:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return self.model(tensor).numpy()

    def describe(self) -> RuntimeDescription:
        return RuntimeDescription(runtime=self.name, version=torch.__version__, precision="fp32", device="cpu",
                                  threads=self.threads or torch.get_num_threads(),
                                  details={"form": _model_form(self.model),
                                           "memory_format": "channels_last" if self.channels_last else "contiguous"})


def is_convolutional(model: torch.nn.Module) -> bool:
    """Most of the model's parameters sit in 2-D convolutions (the MobileNets; not T2T-ViT)."""
    conv = sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.Conv2d) for p in m.parameters(False))
    return conv * 2 > sum(p.numel() for p in model.parameters())


def _model_form(model: torch.nn.Module) -> str:
    forms = {getattr(m, "export_form") for m in model.modules() if hasattr(m, "export_form")}
    return "export" if forms == {True} else "reference"
