"""PyTorch eager execution: the reference every other runtime is compared with."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from t2tedge.runtimes.base import Runtime, RuntimeDescription


class TorchRuntime(Runtime):
    name = "torch"
    consumes = "torch"

    def __init__(self, model: torch.nn.Module, threads: int | None) -> None:
        self.model = model.eval()
        self.threads = threads

    @classmethod
    def load(cls, artifact: torch.nn.Module, *, threads: int | None = None, **options: Any) -> "TorchRuntime":
        if threads:
            torch.set_num_threads(threads)
        return cls(artifact, threads)

    def run(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).numpy()

    def describe(self) -> RuntimeDescription:
        return RuntimeDescription(runtime=self.name, version=torch.__version__, precision="fp32", device="cpu",
                                  threads=self.threads or torch.get_num_threads(),
                                  details={"form": _model_form(self.model)})


def _model_form(model: torch.nn.Module) -> str:
    forms = {getattr(m, "export_form") for m in model.modules() if hasattr(m, "export_form")}
    return "export" if forms == {True} else "reference"
