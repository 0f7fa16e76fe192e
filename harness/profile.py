"""`t2tedge profile ARTIFACT`: the latency protocol on this host for one exported artifact.

Writes a `ProfileRecord` (`t2tedge.profile/1`): one Table 4 cell with its machine, so a file measured on a Mac, a
phone host or a GPU box merges into the grid with `t2tedge table4 --merge`. Needs no torch: it runs where only the runtime
library (onnxruntime, coremltools, tensorrt, openvino, ai-edge-litert) and numpy/pillow are installed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from t2tedge import __version__
from t2tedge import metadata_keys as keys
from t2tedge.data import discover
from t2tedge.errors import T2TEdgeError
from t2tedge.fileio import sha256_file
from t2tedge.harness.latency import machine_info
from t2tedge.harness.measure import LatencySettings, measure_runtime
from t2tedge.results import DataInfo, ProfileRecord, Table4Cell
from t2tedge.targets import Target, target_for_file, target_for_runtime


def artifact_target(path: Path, runtime: str | None = None) -> Target:
    """The target whose runtime runs `path`: the one named by `runtime`, else the one its suffix names."""
    return target_for_runtime(runtime) if runtime else target_for_file(path)


def profile_artifact(path: str | os.PathLike, runtime: str | None = None, model: str | None = None,
                     data: str | os.PathLike | None = None, limit: int | None = None,
                     settings: LatencySettings = LatencySettings(), threads: int | None = None,
                     force: bool = False, **load_options: Any) -> ProfileRecord:
    """Measure `path` with its runtime; accuracy too when `data` is given. A `model` other than the one stamped in
    the artifact is an error unless `force`."""
    path = Path(path)
    target = artifact_target(path, runtime)
    target.check_load_options(load_options, f" ({path.name})")
    if not path.exists():
        raise T2TEdgeError(f"artifact not found: {path}")
    meta = target.read_metadata(path)
    stamped = meta.get(keys.MODEL)
    if model and stamped and model != stamped and not force:
        raise T2TEdgeError(f"{path.name} holds {stamped}, but --model names {model}; drop --model, or pass --force "
                           f"to record it as {model} anyway")
    model = model or stamped
    if not model:
        raise T2TEdgeError(f"{path.name} carries no t2tedge.model metadata; pass --model NAME")
    spec = _spec(model)
    if keys.PREPROCESS in meta:
        preprocess = SimpleNamespace(**json.loads(meta[keys.PREPROCESS]))
    elif spec is not None:
        preprocess = spec.preprocess
    else:
        raise T2TEdgeError(f"{path.name} carries no t2tedge.preprocess metadata and torch is not installed")
    samples = discover(data)[:limit] if data else []
    instance = target.load(path, threads=threads, **load_options)
    described_precision = instance.describe().precision
    weights = meta.get(keys.WEIGHTS, "")
    cell: dict[str, Any] = {
        "model": model, "runtime": target.name, "version": __version__, "family": meta.get(keys.FAMILY) or (spec and spec.family),
        "precision": meta.get(keys.PRECISION) or described_precision,
        "weights": "untrained" if weights.startswith("untrained") else "trained" if weights else "unknown",
        "paper": vars(spec.paper) if spec and spec.paper else None, "status": "measured",
        "artifact": path.name, "artifact_bytes": target.size_bytes(path),
        "artifact_sha256": sha256_file(path) if path.is_file() else None,
    }
    cell.update(measure_runtime(instance, samples, preprocess, settings, progress=f"profile {path.name}"))
    cell["params"], cell["macs"] = _complexity(model, preprocess.crop)
    return ProfileRecord(version=__version__, machine=machine_info(),
                         data=DataInfo(folder=str(data) if data else None, images=len(samples)), cell=Table4Cell(**cell))


def _spec(model: str):
    """The registry entry where torch is installed (the registry builds torch modules), else None."""
    try:
        from t2tedge.models.registry import get_spec
    except ImportError:
        return None
    return get_spec(model)


def _complexity(model: str, crop: int) -> tuple[int | None, int | None]:
    """Params and MACs where torch is installed; a device without it leaves them to the merged host cell."""
    try:
        from t2tedge.models import create_model
        from t2tedge.models.complexity import count_macs, count_params
    except ImportError:
        return None, None
    network = create_model(model)
    return count_params(network), count_macs(network, crop)
