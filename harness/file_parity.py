"""Parity on the files users ship: `t2tedge parity FILE FILE... [--reference MODEL.TAG]`.

Each file runs as it is on disk through its target's runtime, on the same real images preprocessed as the files'
stamps say. Every pair of files is compared, and each file against the PyTorch reference when one is given, with
the tolerance of the pair's precisions (`pair_tolerance`). With `--blocks`, and for every pair past its tolerance,
both files run again with each block's output exposed by the runtime's own means (`Runtime.probe_blocks`); the
outputs are aligned by module path and layout, and the report names the first block where the pair parts ways and
the block that loses the most. The result is a typed record (`t2tedge.parity/1`); its views are in
`t2tedge.harness.parity_views`.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import numpy as np

from t2tedge import __version__
from t2tedge import metadata_keys as keys
from t2tedge.data import discover_images, load_batch, split
from t2tedge.errors import BlocksUnavailable, DataError, RuntimeUnavailable, T2TEdgeError, UsageError
from t2tedge.fileio import sha256_file
from t2tedge.harness.latency import machine_info
from t2tedge.batching import run_batched
from t2tedge.harness.comparison import SQNR_CAP_DB, TOLERANCES, capped_sqnr_db, compare_pair
from t2tedge.results import BlockScore, ParityFile, ParityPair, ParityRecord
from t2tedge.runtimes.base import BlockOutputs
from t2tedge.targets import Target, known_suffixes, target_for_file

# The cosine a block must keep in a pair whose tolerance bounds no cosine (fp32 bounds max |diff| of the logits).
FP32_BLOCK_COSINE = 0.9999
# Lossier precisions first: a pair takes the tolerance of its lossier file.
_LOSS_ORDER = ("int8", "w8", "bf16", "fp16", "fp32")
REFERENCE = "reference"
# Which pairs a run compares: every pair (and each file against the reference); each file against the reference
# only; the files of each runtime against each other (fp32 vs int8 per runtime), and each against the reference.
PAIRINGS = ("all", "reference", "runtime")


@dataclass(frozen=True)
class FileParitySettings:
    """`data`: images (any folder of photos; labels are not read); `limit` of them drawn with `seed`.
    `reference`: a model name or MODEL.TAG whose PyTorch model every file is compared with too, `checkpoint` its
    weights instead of the tag's. `tolerances`: overrides per tolerance key (fp32, int8, int8_vs_int8...).
    `blocks`: compare every pair block by block, on the first `block_images` images (pairs past their tolerance
    always are). `force`: compare files whose stamps name another model or class count. `pairs`: which pairs
    are compared (PAIRINGS)."""

    data: Path
    limit: int = 64
    seed: int = 0
    threads: int | None = None
    reference: str | None = None
    checkpoint: str | None = None
    tolerances: dict[str, dict[str, float]] = field(default_factory=dict)
    blocks: bool = False
    block_images: int = 16
    force: bool = False
    pairs: str = "all"


@dataclass
class _Entry:
    name: str
    path: Path | None
    target: Target | None
    meta: dict[str, Any]
    skipped: str | None = None
    runtime: Any = None
    logits: np.ndarray | None = None
    probes: BlockOutputs | None = None
    probe_error: str | None = None


def pair_tolerance(first: str, second: str) -> str:
    """The TOLERANCES key of two files' precisions: two INT8 files of one plan `int8_vs_int8`, else the lossier."""
    if first == second == "int8":
        return "int8_vs_int8"
    known = [p for p in _LOSS_ORDER if p in (first, second)]
    return known[0] if known else "fp32"


def parse_tolerances(text: str | None) -> dict[str, dict[str, float]]:
    """`--tolerance`: comma list of [KEY:]METRIC=VALUE, e.g. `int8:cosine=0.97,int8_vs_int8:top1_agreement=0.95`;
    without KEY the bound applies to every tolerance that has the metric."""
    overrides: dict[str, dict[str, float]] = {}
    if not text:
        return overrides
    metrics = sorted({m for bounds in TOLERANCES.values() for m in bounds} | {"mean_abs", "max_rel", "top5_overlap"})
    for item in (part.strip() for part in text.split(",") if part.strip()):
        head, _, value = item.partition("=")
        key, _, metric = head.rpartition(":")
        if metric not in metrics or (key and key not in TOLERANCES):
            raise UsageError(f"--tolerance {item!r}: expected [KEY:]METRIC=VALUE with KEY one of "
                             f"{', '.join(TOLERANCES)} and METRIC one of {', '.join(metrics)}")
        try:
            bound = float(value)
        except ValueError:
            raise UsageError(f"--tolerance {item!r}: {value!r} is not a number") from None
        for name in [key] if key else [k for k, bounds in TOLERANCES.items() if metric in bounds]:
            overrides.setdefault(name, {})[metric] = bound
    return overrides


def _stamp(meta: dict[str, Any], key: str) -> Any:
    value = meta.get(key)
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _class_count(meta: dict[str, Any]) -> int | None:
    """Classes of a file's `t2tedge.class_order` stamp: a list in sidecars, comma-joined in ONNX and IR."""
    value = _stamp(meta, keys.CLASS_ORDER)
    if isinstance(value, str):
        value = [label for label in value.split(",") if label]
    return len(value) if value else None


def stamped_images(folder: Path, limit: int, seed: int, preprocess: dict[str, Any]) -> np.ndarray:
    """`limit` images of `folder` (any photos; labels unread) drawn with `seed`, preprocessed as a file's
    `t2tedge.preprocess` stamp (`preprocess`, its JSON read) says: what every file of a comparison is fed."""
    samples, _ = split(discover_images(folder), limit, seed=seed)
    images, _ = load_batch(samples, SimpleNamespace(**preprocess))
    return images


def _without_companions(paths: list[Path]) -> list[Path]:
    """`paths` less the files that travel with another of them (an IR's .bin, a sidecar .json): `parity release/*`
    names them too."""
    companions = set()
    for path in paths:
        try:
            companions.update(p.resolve() for p in target_for_file(path).files(path)[1:])
        except T2TEdgeError:
            continue
    return [p for p in paths if p.resolve() not in companions]


def _inspect(path: Path) -> _Entry:
    try:
        target = target_for_file(path)
    except DataError:
        shipped = ", ".join(s for s in known_suffixes() if s != ".pth")
        raise UsageError(f"{path.name} is no model file parity runs ({shipped}); name the model files, e.g. "
                         f"release/*.onnx release/*.tflite") from None
    if target.reference:
        raise UsageError(f"{path.name} is a reference state dict, not a file users ship; name the reference with "
                         f"--reference MODEL.TAG or --checkpoint")
    if not path.exists():
        raise DataError(f"file not found: {path}")
    reason = target.unavailable_reason()
    if reason:
        return _Entry(path.name, path, target, {}, skipped=reason)
    try:
        meta = target.read_metadata(path)
    except T2TEdgeError:
        raise
    except Exception as exc:  # a damaged file: the runtime's reader raises its own types
        raise DataError(f"cannot read the metadata of {path.name}: {exc}") from None
    return _Entry(path.name, path, target, meta)


def _check_same_model(entries: Sequence[_Entry], force: bool) -> tuple[str, str | None, Any]:
    """(model, family, preprocessing) the files agree on; another model, class count or preprocessing is refused
    (the first two unless `force`)."""
    stamped = [e for e in entries if e.meta]
    if not stamped:
        reasons = "; ".join(f"{e.name}: {e.skipped}" for e in entries)
        raise RuntimeUnavailable(f"none of the files runs here ({reasons})")
    for entry in stamped:
        if not entry.meta.get(keys.MODEL) or not entry.meta.get(keys.PREPROCESS):
            raise DataError(f"{entry.name} carries no t2tedge.model / t2tedge.preprocess stamps: export it with "
                            f"`t2tedge export`, or compare it by model name (`t2tedge parity MODEL --onnx FILE`)")
    first = stamped[0]
    model, preprocess = first.meta[keys.MODEL], _stamp(first.meta, keys.PREPROCESS)
    classes = _class_count(first.meta)
    for entry in stamped[1:]:
        other_classes = _class_count(entry.meta)
        if entry.meta[keys.MODEL] != model and not force:
            raise DataError(f"{entry.name} holds {entry.meta[keys.MODEL]}, {first.name} holds {model}; compare files "
                            f"of one model (--force compares them anyway)")
        if other_classes != classes and not force:
            raise DataError(f"{entry.name} has {other_classes} classes, {first.name} {classes} (--force compares "
                            f"them anyway)")
        if _stamp(entry.meta, keys.PREPROCESS) != preprocess:
            raise DataError(f"{entry.name} and {first.name} stamp different preprocessing; the same images cannot "
                            f"feed both")
    return model, first.meta.get(keys.FAMILY), preprocess


def _reference_model(settings: FileParitySettings, model: str, preprocess: Any, classes: int | None,
                     stamped_weights: str | None):
    """The PyTorch reference of `settings.reference` (a tag's weights, else `checkpoint`, else the model's default
    weights as `t2tedge export` takes them), after checking it fits the files."""
    from dataclasses import asdict, is_dataclass

    from t2tedge.models import create_model, default_checkpoint, get_spec
    from t2tedge.models.registry import RANDOM_INIT_SEED
    from t2tedge.models.pretrained import get_pretrained, split_tag

    name, tag = split_tag(settings.reference)
    spec = get_spec(settings.reference)
    ref_classes = get_pretrained(settings.reference).num_classes if tag else None
    if name != model and not settings.force:
        raise DataError(f"--reference {settings.reference} is {name}, the files hold {model} (--force compares "
                        f"them anyway)")
    if classes and ref_classes and classes != ref_classes and not settings.force:
        raise DataError(f"--reference {settings.reference} has {ref_classes} classes, the files {classes}")
    ours = asdict(spec.preprocess) if is_dataclass(spec.preprocess) else dict(vars(spec.preprocess))
    differs = sorted(k for k, v in preprocess.items() if k in ours and _normal(ours[k]) != _normal(v))
    if differs:
        raise DataError(f"--reference {settings.reference} preprocesses images otherwise than the files stamp "
                        f"({', '.join(f'{k}: {ours[k]} vs {preprocess[k]}' for k in differs)}); the same images "
                        f"cannot feed both")
    checkpoint = (get_pretrained(settings.reference).checkpoint() if tag and settings.checkpoint is None
                  else default_checkpoint(name, settings.checkpoint))
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise DataError(f"--checkpoint {checkpoint}: no such file")
    weights = (f"sha256:{sha256_file(checkpoint)}" if checkpoint is not None
               else f"untrained (random init, seed {RANDOM_INIT_SEED})")
    if stamped_weights and stamped_weights != weights and not settings.force:
        raise DataError(f"--reference {settings.reference} has weights {weights[:19]}..., the files were exported from "
                        f"{stamped_weights[:19]}... (--checkpoint names the files' weights; --force compares anyway)")
    wanted = ref_classes or classes
    return create_model(name, checkpoint=checkpoint, **({"num_classes": wanted} if wanted and wanted != 1000 else {}))


def _normal(value: Any) -> Any:
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else value


def run_file_parity(paths: Sequence[str | os.PathLike], settings: FileParitySettings,
                    progress: Callable[[str], None] | None = None) -> ParityRecord:
    """Compare the files at `paths` (and the reference) on the same images; see the module docstring."""
    say = progress or (lambda message: None)
    paths = _without_companions([Path(p) for p in paths])
    if len(paths) + (1 if settings.reference else 0) < 2:
        raise UsageError("parity compares two files or more, or one file with --reference MODEL.TAG")
    if len({p.resolve() for p in paths}) != len(paths):
        raise UsageError("a file is named twice")
    if settings.pairs not in PAIRINGS:
        raise UsageError(f"unknown pairing {settings.pairs!r}; choose {', '.join(PAIRINGS)}")
    if settings.pairs == "reference" and not settings.reference:
        raise UsageError("--pairs reference compares each file with the reference; add --reference MODEL.TAG")
    if settings.checkpoint is not None and not settings.reference:
        raise UsageError("--checkpoint gives the reference's weights; add --reference MODEL")
    entries = [_inspect(p) for p in paths]
    for depth in range(1, max(len(p.parts) for p in paths) + 1):  # one file name in two folders: add folders
        names = ["/".join(e.path.parts[-depth:]) for e in entries]
        if len(set(names)) == len(names):
            for entry, name in zip(entries, names):
                entry.name = name
            break
    model, family, preprocess = _check_same_model(entries, settings.force)
    classes = next((_class_count(e.meta) for e in entries if e.meta), None)
    if settings.reference:
        from t2tedge.runtimes.torch_eager import TorchRuntime

        reference = _Entry(REFERENCE, None, None, {keys.PRECISION: "fp32"})
        weights = next((e.meta.get(keys.WEIGHTS) for e in entries if e.meta.get(keys.WEIGHTS)), None)
        reference.runtime = TorchRuntime.load(_reference_model(settings, model, preprocess, classes, weights),
                                              threads=settings.threads)
        entries.insert(0, reference)
    runnable = [e for e in entries if not e.skipped]
    if len(runnable) < 2:
        skipped = "; ".join(f"{e.name}: {e.skipped}" for e in entries if e.skipped)
        raise RuntimeUnavailable(f"fewer than two of the files run here ({skipped})")
    if not any(_paired(a, b, settings.pairs) for a, b in itertools.combinations(runnable, 2)):
        raise UsageError(f"--pairs {settings.pairs}: no two of these files make a pair (no runtime has two files here)")
    images = stamped_images(settings.data, settings.limit, settings.seed, preprocess)
    for entry in entries:
        if entry.skipped:
            continue
        say(f"running {entry.name} on {len(images)} images")
        if entry.runtime is None:
            entry.runtime = entry.target.load(entry.path, threads=settings.threads)
        entry.logits = run_batched(entry.runtime, images, 1)
    ran = [e for e in entries if e.logits is not None]
    pairs = [_compare_pair(a, b, settings) for a, b in itertools.combinations(ran, 2) if _paired(a, b, settings.pairs)]
    wanted = {name for p in pairs if settings.blocks or not p.passed for name in (p.first, p.second)}
    block_images = images[:settings.block_images]
    for entry in (e for e in ran if e.name in wanted):
        say(f"reading block outputs of {entry.name} on {len(block_images)} images")
        _probe(entry, block_images, family, settings.threads)
    order = _block_order([e for e in ran if e.probes is not None])
    for pair in pairs:
        if settings.blocks or not pair.passed:
            first, second = (next(e for e in ran if e.name == n) for n in (pair.first, pair.second))
            _compare_blocks(pair, first, second, order)
    return ParityRecord(
        version=__version__, machine=machine_info(), model=model, data=str(settings.data), images=len(images),
        files=[_file_record(e) for e in entries], pairs=pairs, passed=all(p.passed for p in pairs),
        reference=settings.reference, blocks=order if wanted else [],
        block_images=len(block_images) if wanted else None)


def _paired(first: _Entry, second: _Entry, pairing: str) -> bool:
    if first.target is None or pairing == "all":  # the reference comes first; every file meets it
        return True
    return pairing == "runtime" and first.target.name == second.target.name


def _precision(entry: _Entry) -> str:
    return str(entry.meta.get(keys.PRECISION) or (entry.runtime.describe().precision if entry.runtime else "fp32"))


def _compare_pair(first: _Entry, second: _Entry, settings: FileParitySettings) -> ParityPair:
    key = pair_tolerance(_precision(first), _precision(second))
    return compare_pair(first.name, second.name, first.logits, second.logits, key,
                        {**TOLERANCES[key], **settings.tolerances.get(key, {})})


def _probe(entry: _Entry, images: np.ndarray, family: str | None, threads: int | None) -> None:
    if entry.target is None:
        entry.probes = _reference_probes(entry.runtime.model, images, family)
        return
    try:
        entry.probes = entry.target.probe_blocks(entry.path, images, family, threads=threads)
    except BlocksUnavailable as exc:
        entry.probe_error = str(exc)


def _reference_probes(model, images: np.ndarray, family: str | None) -> BlockOutputs:
    """Forward hooks on every module that is a block (`probe_of` its own path); not on the ones that pass their input
    on in eval mode (Dropout, Identity), which no exported file keeps."""
    import torch

    from t2tedge.op_blocks import probe_of

    captured: dict[str, list[np.ndarray]] = {}
    handles = []
    for name, module in model.named_modules():
        if name and probe_of(name, family) == name and not isinstance(module, (torch.nn.Dropout, torch.nn.Identity)):
            def hook(module, inputs, output, name=name):
                if isinstance(output, torch.Tensor):
                    captured.setdefault(name, []).append(output.detach().float().numpy().copy())
            handles.append(module.register_forward_hook(hook))
    try:
        with torch.inference_mode():
            for i in range(len(images)):
                model(torch.from_numpy(np.ascontiguousarray(images[i:i + 1])))
    finally:
        for handle in handles:
            handle.remove()
    return BlockOutputs("forward hooks on the PyTorch modules", {k: np.concatenate(v) for k, v in captured.items()})


def _block_order(probed: Sequence[_Entry]) -> list[str]:
    """Every block any file exposes or names, in the order the model runs them: the files' own orders merged, the
    longest first, each block new to the list placed after the last block before it that the list has."""
    order: list[str] = []
    for blocks in sorted((e.probes.blocks() for e in probed), key=len, reverse=True):
        for index, name in enumerate(blocks):
            if name not in order:
                before = next((order.index(n) for n in reversed(blocks[:index]) if n in order), -1)
                order.insert(before + 1, name)
    return order


def aligned(first: np.ndarray, second: np.ndarray) -> np.ndarray | None:
    """`second` laid out as `first` (images first): as it is, or with its other axes permuted (NHWC vs NCHW, tokens
    vs channels) when exactly one permutation fits; None when none does, or several would."""
    if first.shape == second.shape:
        return second
    if first.ndim != second.ndim or first.shape[0] != second.shape[0]:
        return None
    fits = [axes for axes in itertools.permutations(range(1, second.ndim))
            if tuple(second.shape[a] for a in axes) == first.shape[1:]]
    return np.transpose(second, (0, *fits[0])) if len(fits) == 1 else None


def _compare_blocks(pair: ParityPair, first: _Entry, second: _Entry, order: Sequence[str]) -> None:
    bound = pair.tolerance.get("cosine", FP32_BLOCK_COSINE)
    scores = []
    for block in order:
        scores.append(_block_score(block, first, second))
    pair.blocks = scores
    pair.first_divergent = next((s.block for s in scores if s.cosine is not None and s.cosine < bound), None)
    # The error a block adds: the rise of the noise-to-signal power ratio across it (linear, so a block that turns
    # 29 dB into 14 dB outweighs the first quantized block turning exact into 26 dB).
    previous, added = 0.0, {}
    for score in scores:
        if score.sqnr_db is None:
            continue
        ratio = 10 ** (-score.sqnr_db / 10)
        added[score.block] = ratio - previous
        previous = ratio
    worst = max(added.items(), key=lambda item: item[1], default=None)
    # One measured block (a file whose runtime exposes only its output) says nothing about where the error came from.
    pair.most_loss = worst[0] if len(added) > 1 and worst[1] > 10 ** (-SQNR_CAP_DB / 10) else None


def _why_not(entry: _Entry, block: str) -> str | None:
    if entry.probes is None:
        return f"{entry.name}: {entry.probe_error or 'block outputs not read'}"
    if block in entry.probes.hidden:
        return f"{entry.name}: {entry.probes.hidden[block]}"
    if block not in entry.probes.outputs:
        return f"{entry.name}: not in the file (fused away or folded into another block)"
    return None


def _block_score(block: str, first: _Entry, second: _Entry) -> BlockScore:
    note = _why_not(first, block) or _why_not(second, block)
    if note:
        return BlockScore(block=block, note=note)
    a = first.probes.outputs[block]
    b = aligned(a, second.probes.outputs[block])
    if b is None:
        return BlockScore(block=block, note=f"shapes {list(a.shape)} and {list(second.probes.outputs[block].shape)} "
                                            f"do not align")
    flat_a, flat_b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    cos = np.sum(flat_a * flat_b, 1) / (np.linalg.norm(flat_a, axis=1) * np.linalg.norm(flat_b, axis=1) + 1e-30)
    return BlockScore(block=block, sqnr_db=round(capped_sqnr_db(flat_a, flat_b), 3), cosine=float(cos.min()))


def _file_record(entry: _Entry) -> ParityFile:
    if entry.target is None:
        return ParityFile(name=entry.name, runtime="torch", precision="fp32", status="ran",
                          runtime_info=entry.runtime.describe().to_dict(),
                          blocks=entry.probes.means if entry.probes else None)
    if entry.skipped:
        # Its stamps are read by its runtime, which is not here.
        return ParityFile(name=entry.name, runtime=entry.target.name, precision="unknown", status="skipped",
                          path=str(entry.path), reason=entry.skipped)
    return ParityFile(name=entry.name, runtime=entry.target.name, precision=_precision(entry), status="ran",
                      path=str(entry.path), sha256=sha256_file(entry.path) if entry.path.is_file() else None,
                      runtime_info=entry.runtime.describe().to_dict(),
                      blocks=entry.probes.means if entry.probes else entry.probe_error)
