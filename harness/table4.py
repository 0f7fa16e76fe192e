"""The Table 4 grid: models x runtimes x precisions, each cell measured (accuracy, size, latency).

Results are data first (`table4.json`, one schema for every runtime so files from a Mac or a GPU box
merge), then views (`table4.md`, `table4.png`). Finished cells are cached by the content hash of
artifact + data + settings, so an interrupted run resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from t2tedge import __version__
from t2tedge.data import discover, evenly_spread
from t2tedge.errors import RuntimeUnavailable, T2TEdgeError
from t2tedge.fileio import atomic_write_text, publish_together, sha256_file
from t2tedge.harness.latency import machine_info
from t2tedge.harness.measure import LatencySettings, measure_runtime
# Re-exported: the grid's vocabulary lives in table4_grid so that it imports without torch.
from t2tedge.harness.table4_grid import (PRECISIONS, RUNTIMES, SUITES, SUPPORTED,  # noqa: F401
                                         TABLE4_MODELS, Suite)
from t2tedge.models import create_model, get_spec
from t2tedge.models.complexity import count_macs, count_params
from t2tedge.results import DataInfo, ResultFormatError, Table4Cell, Table4Result, read_measurements
from t2tedge.runtimes import get_runtime


@dataclass
class GridSettings:
    data: Path
    limit: int | None = None
    threads: int | None = None
    warmup: int = 10
    runs: int = 50
    throughput_batch: int = 8
    num_calib: int = 256
    suite: str = "imagenet"


def _hash_bytes(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


def _state_hash(model: torch.nn.Module) -> tuple[str, int]:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return _hash_bytes(buffer.getvalue()), buffer.tell()


class Grid:
    def __init__(self, models: Sequence[str], runtimes: Sequence[str], precisions: Sequence[str],
                 settings: GridSettings, out: Path, artifacts: Path | None = None) -> None:
        for name in models:
            get_spec(name)
        unknown = [r for r in runtimes if r not in RUNTIMES] + [p for p in precisions if p not in PRECISIONS]
        if unknown:
            raise T2TEdgeError(f"unknown runtime/precision {unknown}; runtimes: {', '.join(RUNTIMES)}, "
                               f"precisions: {', '.join(PRECISIONS)}")
        self.models, self.runtimes, self.precisions = list(models), list(runtimes), list(precisions)
        if settings.suite not in SUITES:
            raise T2TEdgeError(f"unknown suite {settings.suite!r}; choose {', '.join(SUITES)}")
        self.suite = SUITES[settings.suite]
        self.settings = settings
        self.out = out
        self.cache_dir = out / "cache"
        self.artifacts = artifacts or out / "artifacts"
        samples = discover(settings.data, num_classes=self.suite.num_classes)
        self.samples = evenly_spread(samples, settings.limit)
        self.data_hash = _hash_bytes("\n".join(str(s.path) for s in self.samples).encode())

    def cells(self) -> list[tuple[str, str, str]]:
        return [(m, r, p) for m in self.models for r in self.runtimes for p in self.precisions]

    def _artifact(self, model_name: str, runtime: str, precision: str, checkpoint: Path | None) -> tuple[Any, str, int]:
        """(artifact for the adapter, content hash, size on disk in bytes)."""
        overrides = self._overrides()
        if runtime == "torch":
            model = create_model(model_name, checkpoint=checkpoint, **overrides)
            digest, size = _state_hash(model)
            return model, digest, size
        if runtime in ("litert", "executorch"):
            return self._sidecar_artifact(runtime, model_name, precision, checkpoint)
        from t2tedge.export import OnnxExportOptions, export_onnx

        # Artifact names carry what they were made from, so a new checkpoint, toolkit version or quantization
        # default makes a new artifact instead of silently reusing a stale one.
        weights = sha256_file(checkpoint) if checkpoint else "untrained"
        fp32 = self.artifacts / "onnx" / f"{model_name}_dynbatch_{_hash_bytes(__version__.encode(), weights.encode())[:12]}.onnx"
        if not fp32.is_file():
            export_onnx(model_name, checkpoint, options=OnnxExportOptions(dynamic_batch=True), destination=fp32,
                        **overrides)
        if precision == "fp32":
            return self._runtime_form(runtime, fp32)
        from t2tedge.quantize import ImageCalibrationReader, calibration_samples, preset, quantize_onnx

        config = preset("onnxruntime")
        recipe = json.dumps({"config": config.to_dict(), "num_calib": self.settings.num_calib,
                             "calibration": str(self.suite.calibration_folder())}, sort_keys=True)
        int8 = self.artifacts / "int8" / f"{model_name}_int8_{_hash_bytes(fp32.name.encode(), recipe.encode())[:12]}.onnx"
        if not int8.is_file():
            calib = calibration_samples(self.suite.calibration_folder(), self.settings.num_calib, exclude=self.samples)
            quantize_onnx(fp32, int8, ImageCalibrationReader(calib, get_spec(model_name).preprocess, batch=16,
                                                             progress=f"calibrate {model_name}"), config)
        return self._runtime_form(runtime, int8)

    @staticmethod
    def _runtime_form(runtime: str, onnx_file: Path) -> tuple[Path, str, int]:
        """The file a runtime's cell runs: ONNX Runtime's is the `t2tedge optimize` form of the ONNX file (its
        contrib-op fusions are what an app shipping our ORT file gets), the others take the ONNX file itself."""
        if runtime == "onnxruntime":
            from t2tedge.export.ort_optimize import optimize_for_onnxruntime, optimized_path

            optimized = optimized_path(onnx_file)
            if not optimized.is_file():
                optimize_for_onnxruntime(onnx_file, optimized)
            onnx_file = optimized
        return onnx_file, sha256_file(onnx_file), onnx_file.stat().st_size

    def _sidecar_artifact(self, runtime: str, model_name: str, precision: str,
                          checkpoint: Path | None) -> tuple[Path, str, int]:
        """A LiteRT `.tflite` or ExecuTorch `.pte` (with its sidecar), named after what it was made from."""
        if runtime == "litert":
            from t2tedge.quantize.litert_ptq import export_litert_model as export
            suffix, variant, options = ".tflite", precision, {}
        else:
            from t2tedge.quantize.executorch_ptq import export_executorch_model as export
            from t2tedge.quantize.executorch_ptq import int8_variant

            # ExecuTorch's int8 cell is the int8 program we recommend for the family (T2T-ViT: w8).
            suffix, options = ".pte", {"progress": False}
            variant = int8_variant(get_spec(model_name).family) if precision == "int8" else precision
        weights = sha256_file(checkpoint) if checkpoint else "untrained"
        recipe = json.dumps({"precision": variant, "num_calib": self.settings.num_calib, "version": __version__,
                             "calibration": str(self.suite.calibration_folder()), "weights": weights}, sort_keys=True)
        path = self.artifacts / runtime / f"{model_name}_{variant}_{_hash_bytes(recipe.encode())[:12]}{suffix}"
        if not path.is_file():
            export(model_name, checkpoint, precision=variant, calib=self.suite.calibration_folder(),
                   num_calib=self.settings.num_calib, exclude=self.samples, destination=path, **options,
                   **self._overrides())
        return path, sha256_file(path), path.stat().st_size

    def _overrides(self) -> dict[str, int]:
        return {"num_classes": self.suite.num_classes} if self.suite.num_classes != 1000 else {}

    def run_cell(self, model_name: str, runtime: str, precision: str) -> Table4Cell:
        spec = get_spec(model_name)
        checkpoint = self.suite.checkpoint(model_name)
        missing = self.suite.missing_weights(model_name)
        weights = "trained" if checkpoint else "none" if missing else "untrained"
        cell: dict[str, Any] = {"model": model_name, "runtime": runtime, "precision": precision,
                                "family": spec.family, "weights": weights,
                                "paper": vars(spec.paper) if spec.paper else None}
        reason = SUPPORTED.get((runtime, precision), "") or missing
        try:
            cls = get_runtime(runtime)
        except RuntimeUnavailable as exc:
            reason = str(exc)
        if reason or (runtime, precision) not in SUPPORTED:
            return Table4Cell(**cell, status="skipped",
                              reason=reason or f"{runtime} {precision} is measured on its device (see docs/profiling.md)")
        artifact, artifact_hash, size = self._artifact(model_name, runtime, precision, checkpoint)
        settings = {k: str(v) for k, v in vars(self.settings).items()}
        key = _hash_bytes(artifact_hash.encode(), self.data_hash.encode(), json.dumps(
            {"cell": [model_name, runtime, precision], "settings": settings, "version": __version__},
            sort_keys=True).encode())
        cached = self.cache_dir / f"{key}.json"
        if cached.is_file():
            try:
                return dataclasses.replace(Table4Cell.read(cached), cached=True)
            except ResultFormatError:
                pass  # written by an older toolkit: measured again
        instance = cls.load(artifact, threads=self.settings.threads)
        latency = LatencySettings(self.settings.warmup, self.settings.runs, self.settings.throughput_batch)
        cell.update(measure_runtime(instance, self.samples, spec.preprocess, latency,
                                    progress=f"{model_name} {runtime} {precision}"))
        reference_model = create_model(model_name, **self._overrides())
        cell.update({
            "status": "measured", "params": count_params(reference_model),
            "macs": count_macs(reference_model, spec.preprocess.crop),
            "artifact_bytes": size, "artifact_sha256": artifact_hash, "cache_key": key,
            **({"artifact": Path(artifact).name} if isinstance(artifact, (str, Path)) else {}),
        })
        measured = Table4Cell(**cell)
        atomic_write_text(cached, measured.to_json())
        return dataclasses.replace(measured, cached=False)

    def run(self) -> Table4Result:
        from tqdm import tqdm

        cells = []
        for model_name, runtime, precision in tqdm(self.cells(), desc="table4", unit="cell"):
            cells.append(self.run_cell(model_name, runtime, precision))
        data = DataInfo(folder=str(self.settings.data), images=len(self.samples), suite=self.suite.name,
                        calibration=str(self.suite.calibration_folder()))
        return finish(Table4Result(version=__version__, machine=machine_info(), data=data, cells=cells))


def finish(table: Table4Result) -> Table4Result:
    """Derived columns: delta top-1 and top-1 agreement against the same model's fp32 on the same machine."""
    for cell in table.cells:
        cell.machine = cell.machine or table.machine
    for cell in table.cells:
        if not cell.measured or cell.predictions is None:
            continue
        peers = [c for c in table.cells if c.measured and c.model == cell.model and c.precision == "fp32"
                 and c.machine == cell.machine and c.predictions is not None
                 and len(c.predictions) == len(cell.predictions)]
        reference = next((c for c in peers if c.runtime == "torch"), peers[0] if peers else None)
        if reference is not None:
            cell.delta_top1 = cell.top1 - reference.top1
            cell.top1_agreement = float(np.mean(np.asarray(cell.predictions) == np.asarray(reference.predictions)))
            cell.reference = f"{reference.runtime} fp32"
    return table


def merge(tables: Sequence[Table4Result]) -> Table4Result:
    """One table from several runs (this machine, a Mac, a GPU box); a later file wins for the same cell. Two runs
    on one host are one machine: `MachineInfo.hostname_hash` is a stable digest."""
    cells: dict[tuple, Table4Cell] = {}
    for table in tables:
        for cell in table.cells:
            cell = dataclasses.replace(cell, machine=cell.machine or table.machine)
            cells[(cell.model, cell.runtime, cell.precision, cell.machine)] = cell
    machines = {c.machine for c in cells.values()}
    return finish(Table4Result(version=__version__, machine=next(iter(machines)) if len(machines) == 1 else None,
                               data=tables[-1].data, cells=list(cells.values())))


def write_outputs(table: Table4Result, out: Path) -> dict[str, Path]:
    from t2tedge.harness.table4_views import render_markdown, render_plot

    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "table4.json", "md": out / "table4.md", "png": out / "table4.png"}
    # The data and its views are one set: staged beside them and moved in together, never a new JSON beside an
    # old plot.
    with tempfile.TemporaryDirectory(prefix=".t2tedge-table4-", dir=out) as tmp:
        staged = {kind: Path(tmp) / path.name for kind, path in paths.items()}
        staged["json"].write_text(table.to_json())
        staged["md"].write_text(render_markdown(table))
        render_plot(table, staged["png"])
        publish_together({staged[kind]: paths[kind] for kind in paths})
    return paths


def load_table(path: str | os.PathLike) -> Table4Result:
    """A `table4.json`, or a `t2tedge profile` record as a one-cell table."""
    return read_measurements(path)
