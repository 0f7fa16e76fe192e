"""The quantizer's typed records (on `t2tedge.results.Record`, one versioned JSON Schema each in docs/schemas):

| class | schema id | file |
| --- | --- | --- |
| `QuantizeReport` | `t2tedge.quantize-report/3` | `MODEL_int8[_target].json` beside the INT8 model |
| `QuantizationSummary` | `t2tedge.quantization/1` | `t2tedge.quantization` in a LiteRT or ExecuTorch sidecar |

The config (`t2tedge.quant-config/1`, quantize/config.py) and the plan (`t2tedge.quant-plan/2`,
quantize/quantization_plan.py) are records of the same kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from t2tedge.quantize.config import QuantConfig
from t2tedge.results import Record


@dataclass
class CalibrationInfo(Record):
    """The calibration subset: `images` drawn from `folder` with `seed`."""

    folder: str
    images: int
    seed: int


@dataclass
class LayerSqnrReport(Record):
    """Each quantized layer's output SQNR against fp32 on `images` images; `flagged`: layers under `threshold_db`."""

    threshold_db: float
    images: int
    scored_on: str
    layers: list[dict[str, Any]]
    flagged: list[str]


@dataclass
class CalibrationCacheInfo(Record):
    """The TensorRT calibration cache written beside a `--target tensorrt` model, how many tensors it gives ranges
    for, and what reads it (TensorRT 10's implicit INT8 only: TensorRT 11 reads no cache)."""

    path: str
    tensors: int
    reader: str


@dataclass
class PlanReference(Record):
    """Where the quantization plan of an INT8 file was written, and how many layers it plans."""

    path: str
    layers: int


@dataclass
class PlanUse(Record):
    """How a target applied a quantization plan: the plan's source file and calibration, its layer count, and how
    many of them the target applied (`deviations`: what it could not honour, layer by layer)."""

    source: str
    calibration: CalibrationInfo
    layers: int
    layers_applied: int | None = None
    deviations: list[dict[str, str]] | None = None


@dataclass
class QuantizationSummary(Record):
    """What a quantized LiteRT or ExecuTorch file computes in which arithmetic, written into its sidecar
    (`t2tedge.quantization`): op type -> count for `int8` (static), `int8_dynamic` (activations quantized at run
    time) and `float` ops, LiteRT's int8 <-> float `conversion` ops, the quantizer's recipe where one was written,
    the calibration images of a file that calibrated itself, or the plan it applied."""

    SCHEMA: ClassVar[str] = "t2tedge.quantization/1"
    precision: str
    quantizer: str
    int8_ops: dict[str, int]
    int8_dynamic_ops: dict[str, int]
    float_ops: dict[str, int]
    conversion_ops: dict[str, int] | None = None
    recipe: list[dict[str, Any]] | None = None
    calibration: CalibrationInfo | None = None
    plan: PlanUse | None = None


@dataclass
class QuantizeReport(Record):
    """What `t2tedge quantize` made: which nodes run INT8 and how, how each quantized layer scores, what was
    calibrated on, and (with a search) the sensitivity ranking and the nodes kept float to reach an agreement
    target."""

    SCHEMA: ClassVar[str] = "t2tedge.quantize-report/3"
    model: str
    destination: str
    target: str
    config: QuantConfig
    calibration: CalibrationInfo
    quantized_nodes: list[str]
    float_nodes: list[str]
    method: str
    weight_granularity: str
    weight_rounding: str
    gptq_rounded_nodes: int
    activation_dtype: str
    bias_correction: dict[str, Any]
    pixel_grid_input: dict[str, Any]
    int8_outputs_kept_float: list[str]
    int8_pooling: list[str]
    float_nodes_behind_dequantize: list[str]
    ort_disabled_optimizers: list[str]
    layer_sqnr: LayerSqnrReport
    # Only for --target tensorrt: TensorRT 10's implicit INT8 reads it (TensorRT 11 builds the QDQ file itself).
    trt_calibration_cache: CalibrationCacheInfo | None = None
    # The target-neutral plan read out of this file, which the other targets' INT8 builds apply.
    plan: PlanReference | None = None
    held_out_images: int | None = None
    all_int8: dict[str, Any] | None = None
    sensitivity: list[dict[str, Any]] | None = None
    mixed_precision: dict[str, Any] | None = None
