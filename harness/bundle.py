"""`t2tedge export bundle`: artifacts + the profiler + a runner script, one .tar.gz to copy onto a device.

The device needs Python 3.10+, numpy, pillow, tqdm and the runtime library of its artifacts (onnxruntime,
coremltools on macOS, tensorrt on an NVIDIA box, openvino on an Intel box, ai-edge-litert); not torch and not this
package's install (ExecuTorch's Python runtime is the exception: the executorch package needs torch). The runner profiles every artifact the way `t2tedge profile` does here and leaves one
JSON per run in results/, ready for `t2tedge table4 --merge`.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import tarfile
import time
from pathlib import Path

from t2tedge import __version__
from t2tedge.errors import RuntimeUnavailable, T2TEdgeError
from t2tedge.fileio import atomic_path, sha256_file
from t2tedge.targets import Target, known_suffixes, target_for_file

PACKAGES = ("t2tedge", "t2tedge.cli", "t2tedge.models", "t2tedge.export", "t2tedge.quantize", "t2tedge.runtimes",
            "t2tedge.targets", "t2tedge.harness")

# The runner only starts Python: artifact names and options are data in manifest.json, never shell words.
RUNNER = """#!/bin/sh
# Profile every artifact of this bundle on this device (t2t-edge {version}).
# Needs python3 with numpy, pillow, tqdm and the runtime: onnxruntime | coremltools (macOS) | tensorrt | openvino
# | ai-edge-litert | executorch (with torch).
# Optional: DATA=/path/to/labelled/images for accuracy too; RUNS=50; WARMUP=10; THROUGHPUT_BATCH=8; THREADS=N;
# ONLY=NAME,NAME profiles only those artifacts; OPS=1 adds per-op profiles
# (NAME.ops.json, t2tedge.op-profile/1; `t2tedge profile --compare` draws them on the host).
cd "$(dirname "$0")" || exit 1
PYTHONPATH=. exec "${{PYTHON:-python3}}" -c 'import sys; from t2tedge.harness.bundle import run_bundle; sys.exit(run_bundle("."))'
"""


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, int(time.time())
    tar.addfile(info, io.BytesIO(data))


def bundle_target(path: Path) -> Target:
    try:
        target = target_for_file(path)
    except T2TEdgeError:
        target = None
    if target is None or target.reference:
        shipped = [s for s in known_suffixes() if s != ".pth"]
        raise T2TEdgeError(f"cannot bundle {path.name}: known artifact types are {', '.join(shipped)}")
    return target


def check_artifact(path: Path) -> Target:
    """Each artifact is parsed (not run) before it is packed: a truncated file, an IR without its .bin or a
    broken sidecar is refused here, not found on the device."""
    if not path.exists():
        raise T2TEdgeError(f"artifact not found: {path}")
    target = bundle_target(path)
    if path.is_file() and path.stat().st_size == 0:
        raise T2TEdgeError(f"{path} is empty; bundle the files t2tedge export wrote")
    for companion in target.files(path)[1:]:
        if not companion.exists() and companion.suffix == ".bin":
            raise T2TEdgeError(f"{path.name} needs {companion.name} beside it")
    if target.verify is not None:
        try:
            target.verify(path)
        except T2TEdgeError as exc:
            raise T2TEdgeError(f"cannot bundle {path.name}: {exc}") from None
    return target


def _file_entries(paths: list[Path], root: Path) -> list[dict]:
    entries = []
    for path in paths:
        for file in (sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]):
            entries.append({"path": f"artifacts/{file.relative_to(root).as_posix()}", "bytes": file.stat().st_size,
                            "sha256": sha256_file(file)})
    return entries


def make_bundle(artifacts: list[str | os.PathLike], destination: str | os.PathLike) -> Path:
    paths = [Path(a) for a in artifacts]
    targets = [check_artifact(path) for path in paths]
    names = [p.name for p in paths]
    if len(set(names)) != len(names):
        raise T2TEdgeError("two artifacts share a file name; rename one")
    destination = Path(destination)
    if not destination.name.endswith(".tar.gz"):
        raise T2TEdgeError(f"the bundle is a .tar.gz, not {destination.name}")
    manifest = {"t2tedge_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "artifacts": [{"name": p.name, "runtime": t.name,
                               "profiles": [dict(v) for v in t.profile_variants],
                               "files": _file_entries([f for f in t.files(p) if f.exists()], p.parent)}
                              for p, t in zip(paths, targets)]}
    with atomic_path(destination, suffix=".tar.gz") as tmp:
        with tarfile.open(tmp, "w:gz") as tar:
            for path, target in zip(paths, targets):
                for file in target.files(path):  # companions keep their place beside the artifact
                    if file.exists():
                        tar.add(file, arcname=f"artifacts/{file.relative_to(path.parent).as_posix()}")
            for package in PACKAGES:
                folder = Path(importlib.import_module(package).__path__[0])
                for source in sorted(folder.glob("*.py")):
                    tar.add(source, arcname=f"{package.replace('.', '/')}/{source.name}")
            _add_bytes(tar, "profile.sh", RUNNER.format(version=__version__).encode(), mode=0o755)
            _add_bytes(tar, "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
    return destination


def _record_name(name: str, options: dict[str, str]) -> str:
    words = [name, *options.values()]
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in "_".join(words)) + ".json"


def selected_artifacts(manifest: dict, only: str | None) -> list[dict]:
    """The manifest's artifacts named in `only` (comma-separated names, as ONLY= gives them), all when it is empty."""
    if not only:
        return list(manifest["artifacts"])
    names = [name.strip() for name in only.split(",") if name.strip()]
    known = {artifact["name"] for artifact in manifest["artifacts"]}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise T2TEdgeError(f"ONLY names {', '.join(unknown)}, which this bundle does not hold; it holds "
                           f"{', '.join(sorted(known))}")
    return [artifact for artifact in manifest["artifacts"] if artifact["name"] in names]


def run_bundle(root: str | os.PathLike) -> int:
    """On the device: check every file against the manifest (size and sha256), then profile each artifact (those
    ONLY names, if set) with each of its option sets, one record per run in results/. Returns 1 when a check or a
    measurement failed, 2 when ONLY names an artifact the bundle does not hold."""
    import sys

    from t2tedge.fileio import atomic_write_text
    from t2tedge.harness.measure import LatencySettings
    from t2tedge.harness.profile import profile_artifact

    root = Path(root)
    manifest = json.loads((root / "manifest.json").read_text())
    runs, threads, data = os.environ.get("RUNS", "50"), os.environ.get("THREADS"), os.environ.get("DATA")
    latency = LatencySettings(runs=int(runs), warmup=int(os.environ.get("WARMUP", "10")),
                              throughput_batch=int(os.environ.get("THROUGHPUT_BATCH", "8")))
    try:
        artifacts = selected_artifacts(manifest, os.environ.get("ONLY"))
    except T2TEdgeError as exc:
        print(f"t2tedge: error: {exc}", file=sys.stderr)
        return 2
    failures = 0
    (root / "results").mkdir(exist_ok=True)
    for artifact in artifacts:
        damaged = [f["path"] for f in artifact["files"] if not (root / f["path"]).is_file()
                   or (root / f["path"]).stat().st_size != f["bytes"] or sha256_file(root / f["path"]) != f["sha256"]]
        if damaged:
            print(f"t2tedge: error: {artifact['name']}: {', '.join(damaged)} missing or changed since the bundle was "
                  f"made; copy the bundle again", file=sys.stderr)
            failures += 1
            continue
        for options in artifact["profiles"]:
            print(f"== {artifact['name']} {' '.join(f'{k}={v}' for k, v in options.items())}".rstrip(), flush=True)
            try:
                record = profile_artifact(root / "artifacts" / artifact["name"], runtime=artifact["runtime"],
                                          data=data, settings=latency,
                                          threads=int(threads) if threads else None, **options)
            except RuntimeUnavailable as exc:  # this device lacks that runtime or provider: nothing measured, no failure
                print(f"   skipped: {exc}")
                continue
            except T2TEdgeError as exc:
                print(f"t2tedge: error: {exc}", file=sys.stderr)
                failures += 1
                continue
            atomic_write_text(root / "results" / _record_name(artifact["name"], options), record.to_json())
            if os.environ.get("OPS") == "1":
                from t2tedge.harness.op_profile import profile_ops

                try:
                    ops = profile_ops(root / "artifacts" / artifact["name"], runtime=artifact["runtime"],
                                      runs=int(runs), threads=int(threads) if threads else None, **options)
                except T2TEdgeError as exc:
                    print(f"t2tedge: error: {exc}", file=sys.stderr)
                    failures += 1
                    continue
                name = _record_name(artifact["name"], options).removesuffix(".json") + ".ops.json"
                atomic_write_text(root / "results" / name, ops.to_json())
    print(f"results in {(root / 'results').resolve()}; merge them on the host: t2tedge table4 --merge "
          f"results/table4.json <these files>")
    return 1 if failures else 0
