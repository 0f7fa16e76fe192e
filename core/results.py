"""What t2tedge writes as JSON, typed: dataclasses with one versioned JSON Schema each.

| class | schema id | file |
| --- | --- | --- |
| `Table4Result` (rows: `Table4Cell`) | `t2tedge.table4/1` | `table4.json` |
| `ProfileRecord` (one `Table4Cell`) | `t2tedge.profile/1` | what `t2tedge profile` writes; merges into a table |
| `OpProfileRecord` (rows: `OpTime`) | `t2tedge.op-profile/1` | what `t2tedge profile --ops` writes |
| `ParityRecord` (rows: `ParityPair`) | `t2tedge.parity/1` | what `t2tedge parity FILE... --json` writes |
| `ArmCheckRecord` (rows: `ArmParityRow`) | `t2tedge.arm-check/1` | what `make arm-check` writes |

The quantizer's records (its report, config, plan and the sidecar summary) build on the same `Record` in
`t2tedge.quantize.records`. `to_dict()` gives the JSON form; `from_dict()` checks it field by field and names the first field that is wrong.
The schema files in `docs/schemas/` are `json_schema(cls)` written out; a test keeps them equal to the classes, so
a field cannot change without the file (and, where old readers would break, the version) changing too. Needs only
the standard library: `t2tedge profile` runs on devices without torch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar, Union

from t2tedge.errors import T2TEdgeError

R = TypeVar("R", bound="Record")
SCHEMA_DRAFT = "https://json-schema.org/draft/2020-12/schema"


class ResultFormatError(T2TEdgeError):
    """A JSON result that does not match its class (a wrong type, a missing or unknown field, another schema)."""


class Record:
    """The JSON round trip shared by the result, config and plan dataclasses. Optional fields left at None are not
    written; a field with `metadata={"json": False}` is not part of the JSON form (a plan's arrays). A file a user
    writes by hand (a quantization config) may leave out its schema id (`SCHEMA_REQUIRED` False); another id is
    refused all the same."""

    SCHEMA: ClassVar[str | None] = None
    SCHEMA_REQUIRED: ClassVar[bool] = True

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema": self.SCHEMA} if self.SCHEMA else {}
        for item in _json_fields(self):
            value = getattr(self, item.name)
            if value is None and _optional(item):
                continue
            out[item.name] = _dump(value)
        return out

    @classmethod
    def from_dict(cls: type[R], data: Any, where: str | None = None) -> R:
        where = where or cls.__name__
        if not isinstance(data, dict):
            raise ResultFormatError(f"{where}: expected an object, got {type(data).__name__}")
        data = dict(data)
        if cls.SCHEMA is not None:
            found = data.pop("schema", None)
            if found != cls.SCHEMA and not (found is None and not cls.SCHEMA_REQUIRED):
                raise ResultFormatError(f"{where}: schema {found!r}, expected {cls.SCHEMA!r}")
        hints = typing.get_type_hints(cls)
        names = {item.name for item in _json_fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ResultFormatError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        values = {}
        for item in _json_fields(cls):
            if item.name in data:
                values[item.name] = _load(hints[item.name], data[item.name], f"{where}.{item.name}")
            elif _required(item):
                raise ResultFormatError(f"{where}: missing field {item.name!r}")
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n"

    @classmethod
    def read(cls: type[R], path: str | os.PathLike) -> R:
        return cls.from_dict(_read_json(path), where=Path(path).name)


def _read_json(path: str | os.PathLike) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultFormatError(f"cannot read {path}: {exc}") from None


def _json_fields(cls_or_record) -> list[dataclasses.Field]:
    return [item for item in dataclasses.fields(cls_or_record) if item.metadata.get("json", True)]


def _required(item: dataclasses.Field) -> bool:
    return item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING


def _optional(item: dataclasses.Field) -> bool:
    return item.default is None


def _dump(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    return value


def _union_args(hint: Any) -> tuple | None:
    if typing.get_origin(hint) in (Union, types.UnionType):
        return typing.get_args(hint)
    return None


def _load(hint: Any, value: Any, where: str) -> Any:
    if hint is Any:
        return value
    options = _union_args(hint)
    if options is not None:
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _load(option, value, where)
            except ResultFormatError as exc:
                errors.append(str(exc))
        raise ResultFormatError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {hint}")
    origin = typing.get_origin(hint)
    if origin is list:
        if not isinstance(value, list):
            raise ResultFormatError(f"{where}: expected a list, got {type(value).__name__}")
        (item,) = typing.get_args(hint)
        return [_load(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, list):
            raise ResultFormatError(f"{where}: expected a list, got {type(value).__name__}")
        items = typing.get_args(hint)
        if items[-1] is Ellipsis:
            return tuple(_load(items[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(items):
            raise ResultFormatError(f"{where}: expected {len(items)} values, got {len(value)}")
        return tuple(_load(item, v, f"{where}[{i}]") for i, (item, v) in enumerate(zip(items, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ResultFormatError(f"{where}: expected an object, got {type(value).__name__}")
        _, item = typing.get_args(hint)
        return {str(k): _load(item, v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(hint, type) and issubclass(hint, Record):
        return hint.from_dict(value, where)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ResultFormatError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ResultFormatError(f"{where}: expected an integer, got {value!r}")
    if hint in (str, bool) and not isinstance(value, hint):
        raise ResultFormatError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}


def json_schema(cls: type[Record]) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of `cls`'s `to_dict()` form, nested records under `$defs`."""
    definitions: dict[str, Any] = {}
    root = _object_schema(cls, definitions)
    schema = {"$schema": SCHEMA_DRAFT, "$id": f"urn:{cls.SCHEMA.replace('/', ':')}", "title": cls.__name__, **root}
    if definitions:
        schema["$defs"] = dict(sorted(definitions.items()))
    return schema


def _object_schema(cls: type[Record], definitions: dict[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    properties: dict[str, Any] = {}
    required = []
    if cls.SCHEMA:
        properties["schema"] = {"const": cls.SCHEMA}
        if cls.SCHEMA_REQUIRED:
            required.append("schema")
    for item in _json_fields(cls):
        properties[item.name] = _type_schema(hints[item.name], definitions)
        if not _optional(item):
            required.append(item.name)
    doc = " ".join((cls.__doc__ or "").split())
    return {"description": doc, "type": "object", "properties": properties, "required": required,
            "additionalProperties": False}


def _type_schema(hint: Any, definitions: dict[str, Any]) -> dict[str, Any]:
    if hint is Any:
        return {}
    options = _union_args(hint)
    if options is not None:
        return {"anyOf": [_type_schema(o, definitions) for o in options]}
    if hint is type(None):
        return {"type": "null"}
    origin = typing.get_origin(hint)
    if origin is list or (origin is tuple and typing.get_args(hint)[-1] is Ellipsis):
        return {"type": "array", "items": _type_schema(typing.get_args(hint)[0], definitions)}
    if origin is tuple:
        items = [_type_schema(item, definitions) for item in typing.get_args(hint)]
        return {"type": "array", "prefixItems": items, "minItems": len(items), "maxItems": len(items)}
    if origin is dict:
        return {"type": "object", "additionalProperties": _type_schema(typing.get_args(hint)[1], definitions)}
    if isinstance(hint, type) and issubclass(hint, Record):
        if hint.__name__ not in definitions:
            definitions[hint.__name__] = {}  # placeholder: a record that refers to itself stops here
            definitions[hint.__name__] = _object_schema(hint, definitions)
        return {"$ref": f"#/$defs/{hint.__name__}"}
    return {"type": _JSON_TYPES[hint]}


# ---- what every measurement carries -------------------------------------------------------------------------


@dataclass(frozen=True)
class MachineInfo(Record):
    """The host a measurement ran on. `hostname_hash`: a stable digest of the host name, so two runs on one host
    merge as one machine."""

    cpu: str
    cores: int | None
    system: str
    python: str
    hostname_hash: str


@dataclass
class LatencyStats(Record):
    """Milliseconds per call after `warmup` untimed calls, over `runs` timed ones."""

    min_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    runs: int
    warmup: int


@dataclass
class DataInfo(Record):
    """The images a result was measured on (`folder` None: latency only)."""

    folder: str | None
    images: int
    suite: str | None = None
    calibration: str | None = None


# ---- Table 4 and profile --------------------------------------------------------------------------------------


@dataclass
class Table4Cell(Record):
    """One model x runtime x precision. `status` "measured" fills the measurement fields; "skipped" gives `reason`.
    `delta_top1` and `top1_agreement` compare with `reference`, the same model's fp32 cell on the same machine.
    `weights`: trained, untrained (random: accuracy not comparable), none (no checkpoint for this suite) or unknown.
    `version`: the toolkit version that measured the cell (kept through merges of files from several versions)."""

    model: str
    runtime: str
    precision: str
    family: str | None
    weights: str
    status: str
    paper: dict[str, Any] | None = None
    reason: str | None = None
    artifact: str | None = None
    artifact_bytes: int | None = None
    artifact_sha256: str | None = None
    top1: float | None = None
    top5: float | None = None
    images: int | None = None
    predictions: list[int] | None = None
    latency_b1: LatencyStats | None = None
    throughput_b8_ips: float | None = None
    runtime_info: dict[str, Any] | None = None
    params: int | None = None
    macs: int | None = None
    cache_key: str | None = None
    cached: bool | None = None
    machine: MachineInfo | None = None
    delta_top1: float | None = None
    top1_agreement: float | None = None
    reference: str | None = None
    version: str | None = None

    @property
    def measured(self) -> bool:
        return self.status == "measured"


@dataclass
class Table4Result(Record):
    """A Table 4 grid as measured: `machine` is None when cells from several machines were merged (each cell then
    names its own)."""

    SCHEMA: ClassVar[str] = "t2tedge.table4/1"
    version: str
    machine: MachineInfo | None
    data: DataInfo | None
    cells: list[Table4Cell] = field(default_factory=list)


@dataclass
class ProfileRecord(Record):
    """One artifact profiled on one host by `t2tedge profile`: latency, and accuracy when images were given.
    `t2tedge table4 --merge` takes it as a one-cell table."""

    SCHEMA: ClassVar[str] = "t2tedge.profile/1"
    version: str
    machine: MachineInfo
    data: DataInfo
    cell: Table4Cell

    def as_table(self) -> Table4Result:
        return Table4Result(version=self.version, machine=self.machine, data=self.data, cells=[self.cell])


# ---- per-op profiles -------------------------------------------------------------------------------------------


@dataclass
class OpTime(Record):
    """One op as the runtime's profiler reports it: `ms` its mean time per traced run, `block` the model block it
    belongs to (None: no block claims it), `precision` fp32, fp16, bf16, int8, convert (quantize, dequantize,
    type conversion) or unknown."""

    name: str
    op_type: str
    block: str | None
    precision: str
    ms: float
    module_path: str = ""


@dataclass
class TimeShare(Record):
    """A rollup row: the ops of one block, op type or precision; `share` of the op time."""

    name: str
    ms: float
    share: float
    ops: int


@dataclass
class OpProfileRecord(Record):
    """`t2tedge profile ARTIFACT --ops`: start-up, memory and steady-state latency of one artifact, then every op's
    time from the runtime's own profiler over `runs` runs, with rollups by block, op type and precision.
    `op_timing` is "measured", or why the runtime reports no per-op times (then the op fields are empty and
    `runtime_info` holds what it does report). `wall_ms`: mean wall time of the profiled runs themselves;
    `outside_ops`: what their time outside the ops is. `import_ms`: importing the runtime library in a fresh
    Python process (apart from `load_ms`, the file's load and compile). Memory: the process's resident set, before load,
    its high-water mark over the load, and over the load and the timed runs."""

    SCHEMA: ClassVar[str] = "t2tedge.op-profile/1"
    version: str
    machine: MachineInfo
    model: str
    runtime: str
    runtime_version: str
    precision: str
    artifact: str
    artifact_bytes: int
    threads: int | None
    load_ms: float
    first_run_ms: float
    latency_b1: LatencyStats
    rss_before_load_mb: float
    load_peak_rss_mb: float
    peak_rss_mb: float
    op_timing: str
    runs: int
    family: str | None = None
    import_ms: float | None = None
    arena_mb: float | None = None
    profiler: str | None = None
    wall_ms: float | None = None
    op_sum_ms: float | None = None
    outside_ops: str = ""
    ops: list[OpTime] = field(default_factory=list)
    blocks: list[TimeShare] = field(default_factory=list)
    op_types: list[TimeShare] = field(default_factory=list)
    precisions: list[TimeShare] = field(default_factory=list)
    unclaimed: list[str] = field(default_factory=list)
    runtime_info: dict[str, Any] = field(default_factory=dict)


# ---- parity ------------------------------------------------------------------------------------------------------


@dataclass
class ParityFile(Record):
    """One file of `t2tedge parity FILE...` (or the reference, `runtime` torch): `status` "ran", or "skipped" with
    the `reason` (its runtime is not here). `blocks`: how its block outputs were read (`--blocks`), or why not."""

    name: str
    runtime: str
    precision: str
    status: str
    path: str | None = None
    sha256: str | None = None
    reason: str | None = None
    blocks: str | None = None
    runtime_info: dict[str, Any] = field(default_factory=dict)


@dataclass
class BlockScore(Record):
    """One block's output in both files of a pair, aligned by module path and layout: SQNR of the second against
    the first (capped at 150 dB: float32 rounding) and the worst per-image cosine; `note` says why there is no
    number (a runtime fused the block away, or the shapes cannot be aligned)."""

    block: str
    sqnr_db: float | None = None
    cosine: float | None = None
    note: str | None = None


@dataclass
class ParityPair(Record):
    """Two files' logits on the same images, with the tolerance of their precisions (`tolerance_key`, see
    `t2tedge.harness.comparison.TOLERANCES`); `blocks` when compared block by block: `first_divergent`, the first block
    past the tolerance's cosine, and `most_loss`, the block that adds the most error power (relative to the
    signal) to what the blocks before it passed on."""

    first: str
    second: str
    tolerance_key: str
    tolerance: dict[str, float]
    max_abs: float
    mean_abs: float
    max_rel: float
    cosine: float
    top1_agreement: float
    top5_overlap: float
    sqnr_db: float
    passed: bool
    failures: list[str] = field(default_factory=list)
    blocks: list[BlockScore] = field(default_factory=list)
    first_divergent: str | None = None
    most_loss: str | None = None


@dataclass
class ParityRecord(Record):
    """`t2tedge parity FILE...`: every pair of the files, and each file against the reference when one is given,
    on `images` images of `data`; `blocks`, every block of the model in the order it runs, when any pair was
    compared block by block (on the first `block_images` images)."""

    SCHEMA: ClassVar[str] = "t2tedge.parity/1"
    version: str
    machine: MachineInfo
    model: str
    data: str
    images: int
    files: list[ParityFile]
    pairs: list[ParityPair]
    passed: bool
    reference: str | None = None
    blocks: list[str] = field(default_factory=list)
    block_images: int | None = None


# ---- ARM kernels under emulation -----------------------------------------------------------------------------


@dataclass
class ArmParityRow(Record):
    """One file on one emulated ARM CPU against the same file on x86: `verdict` "bit-identical", "within
    tolerance", "broken", or "not run" (`note` says why)."""

    model: str
    file: str
    runtime: str
    precision: str
    cpu: str
    verdict: str
    max_abs: float | None = None
    top1_agreement: float | None = None
    cosine: float | None = None
    note: str | None = None


@dataclass
class ArmCheckRecord(Record):
    """`make arm-check`: every file on every emulated CPU against x86, the wheels the ARM environment holds and the
    runtimes it could not hold, the bundle's profiles in words, the wall time of each model x CPU."""

    SCHEMA: ClassVar[str] = "t2tedge.arm-check/1"
    version: str
    machine: MachineInfo
    data: str
    images: int
    cpus: list[str]
    wheels: list[str]
    no_aarch64_wheel: dict[str, str]
    seconds: dict[str, float]
    rows: list[ArmParityRow]
    profiles: list[str] = field(default_factory=list)


@dataclass
class AutoCandidate(Record):
    """One precision `export --precision auto` built and measured: batch-1 p50 of the file timed alone, top-1
    agreement with the target's fp32 file on the held-out images."""

    precision: str
    file: str
    bytes: int
    p50_ms: float | None = None
    ratio_to_fp32: float | None = None
    agreement: float | None = None
    meets_target: bool = False


@dataclass
class AutoPrecisionRecord(Record):
    """`t2tedge export TARGET MODEL --precision auto`: every candidate precision with its measured latency and
    agreement, and the one written (`chosen`: the fastest that meets `target_agreement`)."""

    SCHEMA: ClassVar[str] = "t2tedge.auto-precision/1"
    version: str
    machine: MachineInfo
    model: str
    target: str
    target_agreement: float
    images: int
    threads: int | None
    runs: int
    candidates: list[AutoCandidate]
    chosen: str


RESULT_TYPES: tuple[type[Record], ...] = (Table4Result, ProfileRecord, OpProfileRecord, ParityRecord, ArmCheckRecord,
                                          AutoPrecisionRecord)


def schema_file_name(cls: type[Record]) -> str:
    """docs/schemas/ file of a result class: `t2tedge.table4/1` -> `table4-1.schema.json`."""
    return cls.SCHEMA.removeprefix("t2tedge.").replace("/", "-") + ".schema.json"


def read_measurements(path: str | os.PathLike) -> Table4Result:
    """A `table4.json` or a `t2tedge profile` record, as a table (what `table4 --merge` combines)."""
    data = _read_json(path)
    schema = data.get("schema") if isinstance(data, dict) else None
    if schema == ProfileRecord.SCHEMA:
        return ProfileRecord.from_dict(data, Path(path).name).as_table()
    if schema == Table4Result.SCHEMA:
        return Table4Result.from_dict(data, Path(path).name)
    raise ResultFormatError(f"{path} is not a Table 4 result or profile record (schema {schema!r}; expected "
                            f"{Table4Result.SCHEMA} or {ProfileRecord.SCHEMA})")
