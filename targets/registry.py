"""The target registry: one descriptor per deployment target, read by every command and by Table 4.

A target is what a user ships a model to (a runtime on a phone, an edge box or a GPU server). Its
descriptor holds every fact the rest of the toolkit needs about it: the files its runtime runs and how they are
recognised, how our metadata is read from them, which files travel with one, the precisions it builds, its typed
load and export options, and its build function (model + precision + calibration -> the artifact on disk, the call
`t2tedge export` makes). Each built-in target is one module of this package that tells its whole story (validate,
build, verify, metadata) and ends with its `register(Target(...))`; converters stay in `export/`, quantizers in
`quantize/`, runners in `runtimes/`.

How a target makes its INT8 file is one field, `Target.int8_from`, and `int8_prerequisite` / `int8_request` are the
one rule every consumer (`export`, Table 4 in one process and on Ray, `parity`) follows: the plan-making target's
QDQ file is built once per model and calibration set, and the others start from it.

Imports no torch and no runtime library: `t2tedge profile` and bundles run on devices with only the runtime.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from t2tedge.data import DEFAULT_NUM_CALIB
from t2tedge.errors import DataError, T2TEdgeError, UsageError

# The one precision vocabulary of every command and every output.
PRECISIONS = ("fp32", "fp16", "w8", "int8")
PRECISION_MEANINGS = {
    "fp32": "float32 weights and arithmetic",
    "fp16": "float16 weights (and arithmetic where the runtime has it)",
    "w8": "int8 weights; activations float or quantized on the fly",
    "int8": "static int8 weights and activations, calibrated on real images",
}
# Precisions whose build calibrates on images: the only ones that take --calib / --num-calib (a target may add
# others that read real images, `Target.calibrated`: fp16 ONNX checks activation ranges on them).
CALIBRATED = ("int8",)

# How a target makes its INT8 file (`Target.int8_from`).
CALIBRATES = "calibrates"  # calibrates on images itself (ONNX Runtime's QDQ file holds the plan others apply)
APPLIES_PLAN = "applies the plan"  # applies the quantization plan written beside the ONNX Runtime QDQ file (--plan)
READS_QDQ = "reads the QDQ file"  # converts the ONNX Runtime QDQ file itself
INT8_SOURCES = (CALIBRATES, APPLIES_PLAN, READS_QDQ)


@dataclass(frozen=True)
class Option:
    """One typed option of a target: a keyword of its build or load function, and the CLI flag that sets it.
    `precisions`: the precisions it applies to (None: all)."""

    name: str
    help: str
    choices: tuple[str, ...] | None = None
    kind: type = str
    default: Any = None
    precisions: tuple[str, ...] | None = None
    flag_only: bool = False  # a switch (store_true)
    bounds: tuple[int, int | None] = (1, None)  # an int option's range

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


# The export option of every target whose INT8 build applies the plan (`int8_from=APPLIES_PLAN`).
PLAN_OPTION = Option("plan", "apply this quantization plan (MODEL_int8.plan.json, written beside every `export "
                             "onnxruntime --precision int8` file) instead of the one that build computes from --calib",
                     precisions=("int8",))


@dataclass(frozen=True)
class BuildRequest:
    """What a build function is given: model, precision, weights, calibration and where to write. `source` is an
    ONNX file to build from instead of the model's weights (targets with `from_onnx`). `exclude`: images never used
    for calibration (the images a grid evaluates on)."""

    model: str
    precision: str
    out_dir: Path
    checkpoint: Path | None = None
    source: Path | None = None
    calib: Path | None = None
    num_calib: int = DEFAULT_NUM_CALIB
    seed: int = 0
    num_classes: int = 1000
    exclude: tuple[Any, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    progress: bool = True

    @property
    def overrides(self) -> dict[str, int]:
        return {"num_classes": self.num_classes} if self.num_classes != 1000 else {}


def _no_companions(path: Path) -> tuple[Path, ...]:
    return ()


def _no_metadata(path: Path) -> dict[str, str]:
    return {}


@dataclass(frozen=True)
class Target:
    """A deployment target. `runtime` names its adapter in `t2tedge.runtimes`; `suffixes` are the files that
    adapter runs, the first being what `build` writes. `precisions` maps each precision of the vocabulary to None
    when the target builds it, else the reason it does not. `not_measured_here`: precisions it builds whose files
    mean nothing on this kind of host (Table 4 skips them with the reason). `reference`: the fp32 reference
    (torch), not a file users ship: no export command and no bundle."""

    name: str
    runtime: str
    summary: str
    suffixes: tuple[str, ...]
    precisions: Mapping[str, str | None]
    build: Callable[[BuildRequest], Path] | None = None
    read_metadata: Callable[[Path], dict[str, str]] = _no_metadata
    verify: Callable[[Path], None] | None = None
    companions: Callable[[Path], tuple[Path, ...]] = _no_companions
    load_options: tuple[Option, ...] = ()
    export_options: tuple[Option, ...] = ()
    validate: Callable[[BuildRequest], None] | None = None
    open_artifact: Callable[[Path], Any] | None = None
    summarize: Callable[[Path], str] | None = None  # what `export` says of a written file beyond its size
    profile_variants: tuple[Mapping[str, str], ...] = ({},)
    not_measured_here: Mapping[str, str] = field(default_factory=dict)
    default_precision: str = "fp32"
    from_onnx: bool = False
    # Its INT8 build writes the quantization plan the other targets apply (quantize/quantization_plan.py).
    computes_plan: bool = False
    int8_from: str = CALIBRATES  # one of INT8_SOURCES
    calibrated: tuple[str, ...] = CALIBRATED  # the precisions whose build reads --calib images
    reference: bool = False
    aliases: tuple[str, ...] = ()
    description: str = ""
    out_folder: str = ""  # `export`'s default --out is artifacts/OUT_FOLDER (default: the name)
    adapter: Callable[[], type] | None = None  # the Runtime class, for adapters outside t2tedge.runtimes

    def __post_init__(self) -> None:
        unknown = set(self.precisions) - set(PRECISIONS)
        if unknown:
            raise T2TEdgeError(f"target {self.name}: precisions {sorted(unknown)} are not in {PRECISIONS}")
        if self.default_precision not in self.builds:
            raise T2TEdgeError(f"target {self.name}: default precision {self.default_precision} is not built")
        if self.int8_from not in INT8_SOURCES:
            raise T2TEdgeError(f"target {self.name}: int8_from {self.int8_from!r} is not one of {INT8_SOURCES}")
        if self.int8_from == READS_QDQ and not self.from_onnx:
            raise T2TEdgeError(f"target {self.name}: it reads the QDQ file, so it must build from ONNX files")

    @property
    def builds(self) -> tuple[str, ...]:
        return tuple(p for p in PRECISIONS if p in self.precisions and self.precisions[p] is None)

    def why_not(self, precision: str) -> str | None:
        """None when this target builds `precision`; else one line saying why not."""
        if precision not in PRECISIONS:
            return f"unknown precision {precision!r}; the vocabulary is {', '.join(PRECISIONS)}"
        if precision in self.builds:
            return None
        reason = self.precisions.get(precision) or "not built by this target"
        return f"{self.name} builds {', '.join(self.builds)}, not {precision}: {reason}"

    @property
    def default_out(self) -> Path:
        return Path("artifacts") / (self.out_folder or self.name)

    def runs(self, path: Path) -> bool:
        return any(str(path).endswith(suffix) for suffix in self.suffixes)

    # Options -------------------------------------------------------------------------------------------------
    def check_load_options(self, options: Mapping[str, Any], where: str = "") -> None:
        """Refuse, in one line, a load option this target does not take or a value it does not know."""
        own = {o.name: o for o in self.load_options}
        for name, value in options.items():
            if name not in own:
                theirs = [t.name for t in targets().values() if any(o.name == name for o in t.load_options)]
                takes = ", ".join(o.flag for o in self.load_options) or "no runtime options"
                owner = f"an option of {', '.join(theirs)}" if theirs else "no option of any target"
                raise UsageError(f"{Option(name, '').flag} is {owner}, not of {self.name}{where}; {self.name} takes "
                                 f"{takes}")
            option = own[name]
            if option.choices and value not in option.choices:
                raise UsageError(f"{option.flag} {value} is not one of {', '.join(option.choices)} ({self.name})")

    def check_export_options(self, precision: str, options: Mapping[str, Any]) -> None:
        own = {o.name: o for o in self.export_options}
        for name, value in options.items():
            if name not in own:
                raise UsageError(f"{Option(name, '').flag} is no export option of {self.name}; it takes "
                                 f"{', '.join(o.flag for o in self.export_options) or 'none'}")
            option = own[name]
            if option.precisions and precision not in option.precisions:
                raise UsageError(f"{option.flag} applies to {self.name} --precision {' or '.join(option.precisions)}, "
                                 f"not {precision}")
            if option.choices and value not in option.choices:
                raise UsageError(f"{option.flag} {value} is not one of {', '.join(option.choices)} ({self.name})")

    def check_request(self, request: BuildRequest, given: Sequence[str] = ()) -> None:
        """Everything about a build request that can be refused before any work: the precision, the calibration
        options (`given`: those the user set), the export options, and the target's own rules."""
        if self.build is None:
            raise UsageError(f"{self.name} builds no files")
        reason = self.why_not(request.precision)
        if reason:
            raise UsageError(reason)
        if request.precision not in self.calibrated:
            for name in ("calib", "num_calib"):
                if name in given:
                    raise UsageError(f"{Option(name, '').flag} goes with --precision {' or '.join(self.calibrated)}; "
                                     f"{self.name} "
                                     f"{request.precision} needs no calibration")
        if request.options.get("plan"):
            for name in ("calib", "num_calib"):
                if name in given:
                    raise UsageError(f"{Option(name, '').flag} and --plan exclude each other: the plan holds its "
                                     f"calibration")
            if not Path(request.options["plan"]).is_file():
                raise DataError(f"quantization plan not found: {request.options['plan']}")
        if request.source is not None:
            if not self.from_onnx:
                raise UsageError(f"{self.name} builds from a model name, not from {request.source.name}")
            # An fp32 file converted to another precision that reads images (fp16's range check) takes --calib.
            converts_with_images = request.precision in self.calibrated and request.precision not in CALIBRATED
            for name in ("checkpoint", "num_classes") + (() if converts_with_images else ("calib", "num_calib")):
                if name in given:
                    raise UsageError(f"{Option(name, '').flag} goes with a model name; {request.source.name} already "
                                     f"holds its weights, classes and quantization")
        self.check_export_options(request.precision, request.options)
        if self.validate is not None:
            self.validate(request)

    # Running -------------------------------------------------------------------------------------------------
    def runtime_class(self):
        """The runtime adapter class; RuntimeUnavailable (one line) where it cannot run here."""
        from t2tedge.errors import RuntimeUnavailable

        if self.adapter is None:
            from t2tedge.runtimes import get_runtime

            return get_runtime(self.runtime)
        cls = self.adapter()
        reason = cls.unavailable_reason()
        if reason:
            raise RuntimeUnavailable(reason)
        return cls

    def unavailable_reason(self) -> str | None:
        """None when this host runs the target's files; else why not."""
        from t2tedge.errors import RuntimeUnavailable

        try:
            self.runtime_class()
        except RuntimeUnavailable as exc:
            return str(exc)
        except T2TEdgeError as exc:  # an adapter that does not import here
            return str(exc)
        return None

    def load(self, path: str | os.PathLike, threads: int | None = None, **options: Any):
        """The artifact at `path` loaded by this target's runtime, with options checked first."""
        self.check_load_options(options, f" ({Path(path).name})")
        artifact = self.open_artifact(Path(path)) if self.open_artifact else Path(path)
        return self.runtime_class().load(artifact, threads=threads, **options)

    def probe_blocks(self, path: str | os.PathLike, images: Any, family: str | None, threads: int | None = None):
        """The artifact at `path` run on `images` with every block's output exposed (`Runtime.probe_blocks`)."""
        artifact = self.open_artifact(Path(path)) if self.open_artifact else Path(path)
        return self.runtime_class().probe_blocks(artifact, images, family=family, threads=threads)

    def files(self, path: Path) -> tuple[Path, ...]:
        """The artifact and every file that travels with it (IR weights, sidecar metadata)."""
        return (path, *self.companions(path))

    def size_bytes(self, path: Path) -> int:
        """The size a user ships: the artifact and the files that travel with it (an IR's .bin, a sidecar)."""
        return sum(p.stat().st_size for f in self.files(path)
                   for p in (f.rglob("*") if f.is_dir() else [f]) if p.is_file())


_TARGETS: dict[str, Target] = {}


def register(target: Target) -> Target:
    """Add a target (or replace one of the same name). Every command and the Table 4 grid see it from then on."""
    for other in _TARGETS.values():
        if other.name != target.name and set(other.aliases + (other.name,)) & set(target.aliases + (target.name,)):
            raise T2TEdgeError(f"target {target.name}: its name or aliases collide with {other.name}")
    _TARGETS[target.name] = target
    return target


def unregister(name: str) -> None:
    _TARGETS.pop(name, None)


# The built-in targets' modules, in the order commands list them; each registers itself when imported.
BUILTIN_MODULES = ("onnxruntime", "openvino", "tensorrt", "coreml", "litert", "executorch", "torch")
_BUILTIN_LOADED: list[bool] = []


def _ensure_builtin() -> None:
    if not _BUILTIN_LOADED:
        _BUILTIN_LOADED.append(True)
        import importlib

        for module in BUILTIN_MODULES:
            importlib.import_module(f"t2tedge.targets.{module}")


def targets() -> dict[str, Target]:
    """Every registered target by name, the built-in ones first."""
    _ensure_builtin()
    return dict(_TARGETS)


def get_target(name: str) -> Target:
    for target in targets().values():
        if name == target.name or name in target.aliases:
            return target
    raise UsageError(f"unknown target {name!r}; known: {', '.join(targets())}")


def target_for_file(path: str | os.PathLike) -> Target:
    """The target whose runtime runs `path`, from its name (the first registered wins: ONNX Runtime for .onnx)."""
    for target in targets().values():
        if target.runs(Path(path)):
            return target
    raise DataError(f"cannot tell the runtime of {Path(path).name}; known suffixes: {', '.join(known_suffixes())} "
                    f"(or pass --runtime)")


def plan_target() -> Target:
    """The target whose INT8 build computes the quantization plan."""
    return next(t for t in targets().values() if t.computes_plan)


def int8_prerequisite(target: Target, request: BuildRequest) -> Target | None:
    """The target whose INT8 file `request` must start from (the plan-making target), or None: the one place that
    decides which builds read another's file. None for every precision but int8, for targets that calibrate
    themselves, and for requests that already hold their source (a QDQ file, or `--plan FILE`)."""
    if request.precision != "int8" or target.int8_from == CALIBRATES:
        return None
    if request.source is not None or request.options.get("plan"):
        return None
    return plan_target()


def applied_plan(request: BuildRequest):
    """The QuantPlan an APPLIES_PLAN target's int8 build applies (`--plan`, or the one the INT8 chain gave it); None
    for every other precision."""
    if request.precision != "int8":
        return None
    from t2tedge.quantize.quantization_plan import load_plan

    return load_plan(request.options["plan"])


def int8_origin(target: Target) -> str:
    """How `target`'s INT8 file is made, in words (parity's report)."""
    if target.computes_plan:
        return "the plan's own QDQ file"
    return {CALIBRATES: "calibrates on its own: this target does not start from the plan",
            APPLIES_PLAN: "applies the plan (--plan)", READS_QDQ: "built from the plan's QDQ file"}[target.int8_from]


def int8_request(target: Target, request: BuildRequest, qdq: Path) -> BuildRequest:
    """`request` completed with the plan-making target's QDQ file `qdq`: the file itself for a target that reads
    it, the plan written beside it for one that applies plans."""
    if target.int8_from == READS_QDQ:
        return replace(request, source=Path(qdq), checkpoint=None)
    from t2tedge.quantize.quantization_plan import plan_path_for

    return replace(request, options={**request.options, "plan": str(plan_path_for(Path(qdq)))})


def build_artifact(target: Target, request: BuildRequest) -> Path:
    """What `t2tedge export` does with a checked request: build the INT8 prerequisite first (in a staging folder of
    the output, removed afterwards) where the target needs one, then the target's own file."""
    from t2tedge.fileio import staging_dir

    before = int8_prerequisite(target, request)
    if before is None:
        return target.build(request)
    with staging_dir(request.out_dir, before.name) as tmp:
        shared = {name: value for name, value in request.options.items()
                  if any(option.name == name for option in before.export_options)}  # an --opset, say
        first = replace(request, out_dir=tmp, options=shared)
        before.check_request(first)
        return target.build(int8_request(target, request, build_artifact(before, first)))


def target_for_runtime(runtime: str) -> Target:
    """The target a runtime adapter name belongs to (the first registered with that runtime)."""
    for target in targets().values():
        if target.runtime == runtime or target.name == runtime:
            return target
    raise UsageError(f"unknown runtime {runtime!r}; known: {', '.join(t.runtime for t in targets().values())}")


def known_suffixes() -> list[str]:
    return list(dict.fromkeys(s for t in targets().values() for s in t.suffixes))


def all_load_options() -> dict[str, Option]:
    """Every load option of every target by name, choices merged (the flags `profile`, `eval` and `parity` offer;
    each target then refuses those it does not take)."""
    options: dict[str, Option] = {}
    for target in targets().values():
        for option in target.load_options:
            seen = options.get(option.name)
            if seen is not None:
                if not (seen.choices and option.choices):
                    continue
                option = replace(seen, choices=tuple(dict.fromkeys(seen.choices + option.choices)))
            options[option.name] = option
    return options
