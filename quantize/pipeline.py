"""`quantize_model`: the whole INT8 pipeline behind `t2tedge quantize`, as a library function.

Export (or take) the fp32 ONNX file, calibrate on real images, optionally search which nodes stay float for a
target agreement, quantize, score each quantized layer's SQNR on held-out images, write the quantization plan and
the TensorRT calibration cache. It writes into the folder it is given; publishing the set together is the caller's
(`t2tedge.targets.onnx_fed.publish_quantized`).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from t2tedge import metadata_keys as keys
from t2tedge.data import DEFAULT_NUM_CALIB, Sample, discover_images, load_batch, readable_samples, split
from t2tedge.errors import DataError
from t2tedge.models import get_spec
from t2tedge.quantize.calibration import ImageCalibrationReader, calibration_samples
from t2tedge.quantize.config import QuantConfig, with_int8_products
from t2tedge.quantize.quantization_plan import arrays_path, plan_from_qdq, plan_path_for
from t2tedge.quantize.ptq import quantize_onnx
from t2tedge.quantize.records import (CalibrationCacheInfo, CalibrationInfo, LayerSqnrReport, PlanReference,
                                      QuantizeReport)

LAYER_SQNR_IMAGES = 8
# TensorRT 10's implicit INT8 reads this cache; TensorRT 11 removed implicit INT8 and reads none.
TRT10_CACHE_SUFFIX = ".trt10.cache"
TRT10_CACHE_READER = ("TensorRT 10 implicit INT8 only (trtexec --int8 --calib=FILE, or t2tedge export tensorrt FP32.onnx "
                      "--precision int8 --calib-cache FILE); TensorRT 11 reads no cache and builds the QDQ file")


@dataclass(frozen=True)
class SearchSettings:
    """Mixed precision: `sensitivity` scores every node on `num_heldout` held-out images; `target_agreement` keeps
    the most sensitive nodes float (at most `max_float`, default 10% of them) until agreement reaches it."""

    sensitivity: bool = False
    target_agreement: float | None = None
    max_float: int | None = None
    num_heldout: int = 200

    @property
    def searching(self) -> bool:
        return self.sensitivity or self.target_agreement is not None


def output_name(model_name: str, target: str) -> str:
    return f"{model_name}_int8{'' if target == 'onnxruntime' else '_' + target}.onnx"


def held_out_images(calib: Path, calibration: Sequence[Sample], preprocess, count: int, seed: int,
                    searching: bool = False):
    """(images, count, scored on held-out images): images from the calibration folder, disjoint from the calibration
    subset; for the layer report alone, the calibration images when the folder has no others."""
    used = {s.path for s in calibration}
    rest = [s for s in discover_images(calib) if s.path not in used]
    if not rest and searching:
        raise DataError(f"{calib}: no images left for held-out scoring after {len(calibration)} calibration "
                        f"images; lower --num-calib or add images")
    pool = rest or list(calibration)
    held_out, _ = split(pool, min(count, len(pool)), seed=seed + 1)
    held_out = readable_samples(held_out, "held-out images", warn=lambda text: None)
    images, _ = load_batch(held_out, preprocess)
    return images, len(held_out), bool(rest)


def report_layer_sqnr(quantized_nodes: Sequence[str], fp32: Path, out: Path, images, threshold_db: float,
                      held_out: bool, log: Callable[[str], None]) -> LayerSqnrReport:
    from t2tedge.quantize.layer_sqnr import layer_sqnr

    rows = layer_sqnr(fp32, out, quantized_nodes, images, threshold_db)
    flagged = [r["node"] for r in rows if r["flagged"]]
    if flagged:
        log(f"warning: {len(flagged)} layer(s) below {threshold_db:g} dB SQNR vs fp32 (first: {flagged[0]}); "
            f"see layer_sqnr in the report")
    return LayerSqnrReport(threshold_db=threshold_db, images=len(images), layers=rows, flagged=flagged,
                           scored_on="held-out images" if held_out else "calibration images (--calib has no others)")


def search_mixed_precision(fp32: Path, out: Path, reader, config: QuantConfig, held_out, workdir: Path,
                           search: SearchSettings, say: Callable[[str], None]) -> tuple[dict[str, Any], QuantConfig]:
    """Sensitivity per node on held-out images (disjoint from calibration), then the float fallback search."""
    from t2tedge.quantize.sensitivity import PTQSession, analyse, mixed_precision

    images, count, _ = held_out
    session = PTQSession(fp32, reader, config, images, workdir=workdir / "search")
    ranking = analyse(session)
    result: dict[str, Any] = {"held_out_images": count, "all_int8": session.full.to_dict(), "sensitivity": ranking}
    say(f"all INT8: {session.full.describe()} on held-out images; most sensitive nodes:")
    for row in ranking[:10]:
        say(f"  {row['node']:<60} float -> agreement {100 * row['float_top1_agreement']:.1f}%, "
            f"SQNR +{row['sqnr_gain_db']:.2f} dB")
    if search.target_agreement:
        budget = search.max_float if search.max_float is not None else max(1, len(ranking) // 10)
        config, kept, achieved = mixed_precision(session, ranking, search.target_agreement, max_float=budget)
        reached = achieved.top1_agreement >= search.target_agreement
        resolved = achieved.resolves(search.target_agreement)
        result["mixed_precision"] = {"target_agreement": search.target_agreement, "kept_float": kept,
                                     "max_float": budget, **achieved.to_dict(), "reached": reached,
                                     "resolved_by_held_out": resolved}
        outcome = "reached" if reached else f"NOT reached within {budget} float nodes"
        say(f"mixed precision: {len(kept)} node(s) kept float -> {achieved.describe()} "
            f"(target {100 * search.target_agreement:.1f}%: {outcome})")
        if not resolved:
            say(f"note: the target lies within one standard error of what {count} held-out images measure, so "
                f"on other images the model may fall on either side of it; --num-heldout sets how many "
                f"(at most those of --calib not used for calibration)")
    report = quantize_onnx(fp32, out, None, config, ranges_cache=session.ranges)
    session.close()
    report.update(result)
    return report, config


def requantization_ranges(fp32: Path, qdq: Path, reader, config: QuantConfig, workdir: Path
                          ) -> dict[str, tuple[float, float]]:
    """For each int8 layer whose output the QDQ file keeps float, the range a target that requantizes every output
    (XNNPACK in LiteRT and ExecuTorch) quantizes it on, keyed by the layer's output tensor:
    - after its bias Add: calibrated like every other range (`config.method`, asymmetric);
    - a layer without a bias (T2T-ViT's qkv): the min-max range of its output. Its clipped stand-in (the symmetric
      amax of the clipped range) cut the q/k values the Performer's exp amplifies: requantizing the 7 qkv outputs
      on it cost 0.6 pt of top-1 agreement (T2T-ViT-7 subject, 800 Imagenette val images, ONNX Runtime with the
      Q/DQ pairs XNNPACK would insert: benchmarks/requantization_cost.py), on min-max nothing."""
    import json

    from onnxruntime.quantization.calibrate import load_tensors_data

    from t2tedge.export.onnx_export import read_metadata
    from t2tedge.onnx_graph import consumers
    from t2tedge.quantize.ranges import write_ranges

    kept_float = json.loads(read_metadata(str(qdq)).get(keys.FLOAT_OUTPUT_RANGES, "{}"))
    if not kept_float or reader is None:
        return {}
    readers = consumers(onnx.load(str(fp32), load_external_data=False).graph)
    after_bias = {name: readers[name][0].output[0] for name in kept_float
                  if len(readers.get(name, [])) == 1 and readers[name][0].op_type == "Add"}
    without_bias = [name for name in kept_float if name not in after_bias]

    def calibrated(op_types: list[str], method: str, file: str) -> dict:
        if hasattr(reader, "rewind"):
            reader.rewind()
        with contextlib.redirect_stdout(io.StringIO()):  # ORT's calibrator prints a line per window
            write_ranges(fp32, reader, op_types, workdir / file, method, symmetric=False,
                         percentile=config.percentile)
        return load_tensors_data(workdir / file).data

    def low_high(data) -> tuple[float, float]:
        return float(np.min(data.range_value[0])), float(np.max(data.range_value[1]))

    found: dict[str, tuple[float, float]] = {}
    if after_bias:
        ranges = calibrated(["Add"], config.method, "requantization_ranges.json")
        found.update({name: low_high(ranges[out]) for name, out in after_bias.items() if out in ranges})
    if without_bias:
        ranges = calibrated(["MatMul", "Gemm"], "minmax", "requantization_ranges_minmax.json")
        found.update({name: low_high(ranges[name]) for name in without_bias if name in ranges})
    return found


def write_plan(qdq: Path, destination: Path, model_name: str, checkpoint, *, calibration: CalibrationInfo,
               recipe: QuantConfig, requantization: dict[str, tuple[float, float]] | None = None,
               **overrides: Any) -> int:
    """Read the plan out of the QDQ file `qdq`, in the module names of `model_name`, and save it at `destination`
    (and its arrays beside it). Returns how many layers it plans."""
    from t2tedge.export.common import build_model
    from t2tedge.export.onnx_export import read_metadata

    model, _ = build_model(model_name, checkpoint, **overrides)
    weights = read_metadata(str(qdq)).get(keys.WEIGHTS, "")
    plan = plan_from_qdq(qdq, model.eval(), model_name=model_name, weights=weights, calibration=calibration,
                         recipe=recipe, requantization=requantization)
    plan.save(destination)
    return len(plan.layers)


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


@dataclass(frozen=True)
class QuantizeSettings:
    """How `quantize_model` calibrates and what it keeps float. `calib`: the image folder calibration draws
    `num_calib` images from with `seed`, never any of `never_calibrate_on` (a grid's evaluation images). `onnx_path`:
    an fp32 export of ours to quantize (else the model is exported with `checkpoint` and `export_options`, by default
    those of `t2tedge export onnx`: static batch 1, so the INT8 file has the fp32 file's shapes). `keep_float`: op
    types or node names kept float (they win over `int8_products`). `int8_products`: which products of two activations
    are quantized (config.INT8_PRODUCTS; None: as `config` says). `target`: the runtime whose scheme `config` follows
    (names the file)."""

    calib: Path
    num_calib: int = DEFAULT_NUM_CALIB
    seed: int = 0
    target: str = "onnxruntime"
    onnx_path: Path | None = None
    checkpoint: Path | None = None
    keep_float: tuple[str, ...] = ()
    int8_products: str | None = None
    search: SearchSettings = SearchSettings()
    sqnr_threshold: float = 10.0
    export_options: Any = None
    never_calibrate_on: tuple[Sample, ...] = ()


def quantize_model(model_name: str, config: QuantConfig, out_dir: str | os.PathLike, settings: QuantizeSettings, *,
                   published_in: str | os.PathLike | None = None, say: Callable[[str], None] = print,
                   warn: Callable[[str], None] = _warn, **overrides: Any) -> tuple[Path, QuantizeReport]:
    """Write `out_dir/MODEL_int8[_target].onnx` with its JSON report and plan (and, for target tensorrt, the
    calibration cache TensorRT 10's implicit INT8 reads, `.trt10.cache`). Writes straight into `out_dir` (a caller
    that publishes stages it, `published_in` being where the files go, which the report names). Returns
    (model path, report)."""
    from t2tedge.export import OnnxExportOptions, export_onnx
    from t2tedge.quantize.tensorrt_checks import write_calibration_cache

    spec = get_spec(model_name)
    calib, out_dir = Path(settings.calib), Path(out_dir)
    final_dir = Path(published_in) if published_in is not None else out_dir
    search = settings.search
    samples = calibration_samples(calib, settings.num_calib, seed=settings.seed, exclude=settings.never_calibrate_on)
    if len(samples) < settings.num_calib:
        warn(f"note: calibrating on all {len(samples)} images under {calib} (--num-calib {settings.num_calib} asked "
             f"for more)")
    name = output_name(model_name, settings.target)
    out = out_dir / name
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="quantize-", dir=out_dir) as scratch:
        tmp = Path(scratch)
        fp32 = Path(settings.onnx_path) if settings.onnx_path is not None else export_onnx(
            model_name, settings.checkpoint, out_dir=tmp, options=settings.export_options or OnnxExportOptions(),
            **overrides)
        graph = onnx.load(str(fp32), load_external_data=False).graph
        if settings.int8_products is not None:
            config = with_int8_products(config, settings.int8_products, graph)
        if settings.keep_float:
            config = config.with_float(list(settings.keep_float), graph, strict=True)
        batch = 16 if graph.input[0].type.tensor_type.shape.dim[0].dim_param else 1
        reader = ImageCalibrationReader(samples, spec.preprocess, batch=batch, progress=f"calibrate {model_name}")
        held_out = held_out_images(calib, samples, spec.preprocess,
                                   search.num_heldout if search.searching else LAYER_SQNR_IMAGES, settings.seed,
                                   search.searching)
        if search.searching:
            quantized, config = search_mixed_precision(fp32, out, reader, config, held_out, tmp, search, say)
        else:
            quantized = quantize_onnx(fp32, out, reader, config)
        layers = report_layer_sqnr(quantized["quantized_nodes"], fp32, out, held_out[0][:LAYER_SQNR_IMAGES],
                                   settings.sqnr_threshold, held_out[2], warn)
        cache_info = None
        if settings.target == "tensorrt":
            cache = out.with_suffix(TRT10_CACHE_SUFFIX)
            cache_info = CalibrationCacheInfo(path=str(final_dir / cache.name),
                                              tensors=write_calibration_cache(out, cache), reader=TRT10_CACHE_READER)
        plan_file = plan_path_for(out)
        requantization = requantization_ranges(fp32, out, reader, config, tmp)
        calibration = CalibrationInfo(folder=str(calib), images=len(samples), seed=settings.seed)
        layers_planned = write_plan(out, plan_file, model_name, settings.checkpoint, calibration=calibration,
                                    recipe=config, requantization=requantization, **overrides)
    report = QuantizeReport(**{
        **quantized, "model": model_name, "destination": str(final_dir / name), "target": settings.target,
        "config": config, "calibration": calibration, "layer_sqnr": layers, "trt_calibration_cache": cache_info,
        "plan": PlanReference(path=str(final_dir / plan_file.name), layers=layers_planned)})
    out.with_suffix(".json").write_text(report.to_json())
    return out, report


def written_files(out: Path) -> list[Path]:
    """Every file `quantize_model` wrote for the model file `out`: model, report, plan and its arrays, and the
    TensorRT 10 cache where there is one."""
    plan_file = plan_path_for(out)
    found = [out, out.with_suffix(".json"), plan_file, arrays_path(plan_file), out.with_suffix(TRT10_CACHE_SUFFIX)]
    return [path for path in found if path.is_file()]
