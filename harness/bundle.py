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
from t2tedge.errors import DataError, T2TEdgeError
from t2tedge.fileio import atomic_path, sha256_file
from t2tedge.harness.profile import RUNTIME_BY_SUFFIX
from t2tedge.sidecar import sidecar_path

PACKAGES = ("t2tedge", "t2tedge.cli", "t2tedge.models", "t2tedge.export", "t2tedge.quantize", "t2tedge.runtimes", "t2tedge.harness")

RUNNER = """#!/bin/sh
# Profile every artifact of this bundle on this device (t2t-edge {version}).
# Needs python3 with numpy, pillow, tqdm and the runtime: onnxruntime | coremltools (macOS) | tensorrt | openvino
# | ai-edge-litert | executorch (with torch).
# Optional: DATA=/path/to/labelled/images for accuracy too; RUNS=50; THREADS=N.
set -e
cd "$(dirname "$0")"
PY=${{PYTHON:-python3}}
mkdir -p results
profile() {{
  name=$1; shift
  echo "== $name $*"
  PYTHONPATH=. "$PY" -m t2tedge.cli profile "artifacts/$name" --runs "${{RUNS:-50}}" \\
    ${{DATA:+--data "$DATA"}} ${{THREADS:+--threads "$THREADS"}} "$@" \\
    --out "results/$(echo "$name $*" | tr -c 'A-Za-z0-9_.-' '_').json" || echo "   (skipped: see the error above)"
}}
{commands}
echo "results in $(pwd)/results; merge them on the host: t2tedge table4 --merge results/table4.json <these files>"
"""


def _runner_commands(names: list[str]) -> str:
    lines = []
    for name in names:
        runtime = RUNTIME_BY_SUFFIX[Path(name).suffix]
        if runtime == "coreml":
            # Load vs predict time per compute unit: the Neural Engine and the CPU differ most.
            lines += [f"profile {name} --compute-units {units}" for units in ("ALL", "CPU_AND_NE", "CPU_ONLY")]
        elif runtime == "openvino":
            # OpenVINO's CPU default is bf16 where the CPU has it; measure what each precision costs and buys.
            lines += [f"profile {name} --precision-hint {hint}" for hint in ("f32", "bf16")]
        elif runtime == "onnxruntime":
            lines += [f"profile {name}", f"profile {name} --provider xnnpack"]
        else:
            lines.append(f"profile {name}")
    return "\n".join(lines)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, int(time.time())
    tar.addfile(info, io.BytesIO(data))


def check_artifact(path: Path) -> None:
    """A cheap look inside each artifact, so a bundle never carries a text file named .onnx to a device."""
    if not path.exists():
        raise T2TEdgeError(f"artifact not found: {path}")
    if path.suffix not in RUNTIME_BY_SUFFIX:
        raise T2TEdgeError(f"cannot bundle {path.name}: known artifact types are {', '.join(RUNTIME_BY_SUFFIX)}")
    problem = None
    if path.suffix == ".mlpackage":
        problem = None if (path / "Manifest.json").is_file() else "an .mlpackage folder with a Manifest.json"
    elif not path.is_file() or path.stat().st_size == 0:
        problem = "a non-empty file"
    elif path.suffix == ".onnx":
        from t2tedge.export.onnx_export import load_onnx_graph

        try:
            load_onnx_graph(path)
        except DataError:
            problem = "an ONNX model"
    elif path.suffix == ".ort":
        problem = None if path.read_bytes()[4:8] == b"ORTM" else "an ORT-format model (onnxruntime's 'ORTM' flatbuffer)"
    elif path.suffix == ".xml":
        head = path.read_bytes()[:4096]
        problem = None if b"<net" in head else "OpenVINO IR (an XML <net>)"
        if problem is None and not path.with_suffix(".bin").is_file():
            raise T2TEdgeError(f"OpenVINO IR {path.name} needs its weights {path.with_suffix('.bin').name} beside it")
    elif path.suffix == ".tflite":
        problem = None if path.read_bytes()[4:8] == b"TFL3" else "a LiteRT model (a 'TFL3' flatbuffer)"
    elif path.suffix == ".pte":
        problem = None if path.read_bytes()[4:6] == b"ET" else "an ExecuTorch program (an 'ET' flatbuffer)"
    if problem:
        raise T2TEdgeError(f"{path} is not {problem}; bundle the files t2tedge export wrote")


def make_bundle(artifacts: list[str | os.PathLike], destination: str | os.PathLike) -> Path:
    paths = [Path(a) for a in artifacts]
    for path in paths:
        check_artifact(path)
    names = [p.name for p in paths]
    if len(set(names)) != len(names):
        raise T2TEdgeError("two artifacts share a file name; rename one")
    destination = Path(destination)
    if not destination.name.endswith(".tar.gz"):
        raise T2TEdgeError(f"the bundle is a .tar.gz, not {destination.name}")
    manifest = {"t2tedge_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "artifacts": [{"name": p.name, "runtime": RUNTIME_BY_SUFFIX[p.suffix],
                               "sha256": sha256_file(p) if p.is_file() else None} for p in paths]}
    with atomic_path(destination, suffix=".tar.gz") as tmp:
        with tarfile.open(tmp, "w:gz") as tar:
            for path in paths:
                tar.add(path, arcname=f"artifacts/{path.name}")
                if path.suffix == ".xml":
                    tar.add(path.with_suffix(".bin"), arcname=f"artifacts/{path.with_suffix('.bin').name}")
                if sidecar_path(path).is_file():
                    tar.add(sidecar_path(path), arcname=f"artifacts/{sidecar_path(path).name}")
            for package in PACKAGES:
                folder = Path(importlib.import_module(package).__path__[0])
                for source in sorted(folder.glob("*.py")):
                    tar.add(source, arcname=f"{package.replace('.', '/')}/{source.name}")
            _add_bytes(tar, "profile.sh", RUNNER.format(version=__version__, commands=_runner_commands(names)).encode(),
                       mode=0o755)
            _add_bytes(tar, "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
    return destination
