"""`t2tedge profile`, the ORT format and device bundles: one JSON cell that merges into Table 4."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from conftest import assert_matches_schema, assert_op_trace
from t2tedge.cli import main
from t2tedge.export import OnnxExportOptions, export_onnx
from t2tedge.harness.table4 import load_table, merge
from t2tedge.results import ProfileRecord
from t2tedge.runtimes.onnxruntime_cpu import OnnxRuntimeCPU


@pytest.fixture(scope="module")
def mnv2_onnx(tmp_path_factory, weights_dir):
    return export_onnx("mobilenet_v2_100", weights_dir / "mobilenet_v2_1.0_imagenet_tfsame.pth",
                       out_dir=tmp_path_factory.mktemp("profile"), options=OnnxExportOptions(dynamic_batch=True))


@pytest.fixture(scope="module")
def mnv2_ort(mnv2_onnx):
    assert main(["export", "ort", str(mnv2_onnx)]) == 0
    return mnv2_onnx.with_suffix(".ort")


def test_ort_format_gives_the_same_logits(mnv2_onnx, mnv2_ort):
    assert mnv2_ort.is_file() and mnv2_onnx.with_name(mnv2_onnx.stem + ".required_operators.config").is_file()
    batch = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    onnx_out = OnnxRuntimeCPU.load(mnv2_onnx).run(batch)
    ort_runtime = OnnxRuntimeCPU.load(mnv2_ort)
    assert np.abs(ort_runtime.run(batch) - onnx_out).max() < 1e-4
    assert ort_runtime.describe().details["format"] == "ort"


def test_profile_writes_a_record_that_merges_into_table4(mnv2_ort, val_dir, tmp_path, capsys):
    out = tmp_path / "cell.json"
    assert main(["profile", str(mnv2_ort), "--data", str(val_dir), "--limit", "16", "--runs", "5", "--warmup", "1",
                 "--out", str(out)]) == 0
    assert "batch-1 p50" in capsys.readouterr().out
    assert_matches_schema(json.loads(out.read_text()), ProfileRecord)
    cell = ProfileRecord.read(out).cell
    assert (cell.model, cell.runtime, cell.precision, cell.weights) == \
        ("mobilenet_v2_100", "onnxruntime", "fp32", "trained")
    assert cell.images == 16 and 0 <= cell.top1 <= 1 and len(cell.predictions) == 16
    latency = cell.latency_b1
    assert latency.runs == 5 and 0 < latency.min_ms <= latency.p50_ms <= latency.p99_ms
    assert cell.params == 3504872 and cell.artifact_bytes == mnv2_ort.stat().st_size


def test_two_processes_on_one_host_merge_as_one_machine(mnv2_ort, tmp_path):
    """Each profile runs in a process of its own with another hash seed; their records merge as one machine, the later
    run's cell replacing the earlier one's."""
    outs = [tmp_path / f"run{seed}.json" for seed in (1, 2)]
    for seed, out in zip((1, 2), outs):
        done = subprocess.run([sys.executable, "-m", "t2tedge.cli", "profile", str(mnv2_ort), "--runs", "2",
                               "--warmup", "1", "--out", str(out)], capture_output=True, text=True,
                              env={**os.environ, "PYTHONHASHSEED": str(seed)})
        assert done.returncode == 0, done.stderr
    records = [ProfileRecord.read(out) for out in outs]
    merged = merge([load_table(out) for out in outs])
    assert merged.machine == records[0].machine == records[1].machine and len(merged.cells) == 1
    assert merged.cells[0].latency_b1 == records[1].cell.latency_b1


def test_profile_errors(mnv2_onnx, tmp_path, capsys):
    assert main(["profile", str(tmp_path / "missing.onnx"), "--out", str(tmp_path)]) == 1
    assert "artifact not found" in capsys.readouterr().err
    (tmp_path / "weights.bin").write_bytes(b"x")
    assert main(["profile", str(tmp_path / "weights.bin"), "--out", str(tmp_path)]) == 1
    assert "cannot tell the runtime" in capsys.readouterr().err
    import onnxruntime as ort

    if "XnnpackExecutionProvider" not in ort.get_available_providers():
        assert main(["profile", str(mnv2_onnx), "--provider", "xnnpack", "--out", str(tmp_path)]) == 2
        assert "no XnnpackExecutionProvider" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.bin"]


def test_bundle_runs_its_profiler_without_the_installed_package(mnv2_ort, tmp_path):
    bundle = tmp_path / "device.tar.gz"
    assert main(["export", "bundle", str(mnv2_ort), "--out", str(bundle)]) == 0
    with tarfile.open(bundle) as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "device", filter="data")
    assert "profile.sh" in names and "artifacts/mobilenet_v2_100_dynbatch.ort" in names
    assert "t2tedge/harness/profile.py" in names and "t2tedge/runtimes/onnxruntime_cpu.py" in names
    manifest = json.loads((tmp_path / "device" / "manifest.json").read_text())
    assert manifest["artifacts"][0]["runtime"] == "onnxruntime"
    # On the device the bundle's own copy of the profiler runs (PYTHONPATH=.), not an installed t2tedge, and a
    # device has no torch: a `torch` package that refuses to import stands first on the path.
    (tmp_path / "device" / "torch").mkdir()
    (tmp_path / "device" / "torch" / "__init__.py").write_text("raise ImportError('no torch on this device')\n")
    env = {**os.environ, "PYTHON": sys.executable, "RUNS": "3"}
    done = subprocess.run(["sh", "profile.sh"], cwd=tmp_path / "device", env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    results = sorted((tmp_path / "device" / "results").glob("*.json"))
    assert results, done.stdout
    cell = ProfileRecord.read(results[0]).cell
    assert cell.latency_b1.runs == 3 and cell.model == "mobilenet_v2_100"
    assert cell.params is None and cell.macs is None  # counted with torch on the host, not here


def test_bundle_names_are_data_not_shell(mnv2_ort, tmp_path):
    """An artifact whose name holds a space and `$(...)` is profiled on the device, and the name runs nothing."""
    import shutil

    odd = tmp_path / "my model $(touch PWNED).ort"
    shutil.copy(mnv2_ort, odd)
    bundle = tmp_path / "odd.tar.gz"
    assert main(["export", "bundle", str(odd), "--out", str(bundle)]) == 0
    device = tmp_path / "device"
    with tarfile.open(bundle) as tar:
        tar.extractall(device, filter="data")
    env = {**os.environ, "PYTHON": sys.executable, "RUNS": "2"}
    done = subprocess.run(["sh", "profile.sh"], cwd=device, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not list(tmp_path.rglob("PWNED")) and not (device / "PWNED").exists()
    records = sorted((device / "results").glob("*.json"))
    assert records and ProfileRecord.read(records[0]).cell.artifact == odd.name


def test_bundle_script_fails_on_a_changed_artifact(mnv2_ort, tmp_path):
    """The device script checks each file against the manifest's size and sha256 and exits non-zero on a mismatch."""
    bundle = tmp_path / "b.tar.gz"
    assert main(["export", "bundle", str(mnv2_ort), "--out", str(bundle)]) == 0
    device = tmp_path / "device"
    with tarfile.open(bundle) as tar:
        tar.extractall(device, filter="data")
    artifact = device / "artifacts" / mnv2_ort.name
    artifact.write_bytes(artifact.read_bytes()[:-10])  # a copy cut short
    done = subprocess.run(["sh", "profile.sh"], cwd=device, env={**os.environ, "PYTHON": sys.executable, "RUNS": "2"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "missing or changed since the bundle was made" in done.stderr
    assert not list((device / "results").glob("*.json"))


def test_bundle_profiles_only_the_artifacts_only_names(mnv2_ort, tmp_path):
    """ONLY=NAME profiles that artifact of the bundle alone; a name the bundle lacks is a usage error (exit 2) that
    names what it holds and measures nothing."""
    import shutil

    second = tmp_path / "second.ort"
    shutil.copy(mnv2_ort, second)
    bundle = tmp_path / "b.tar.gz"
    assert main(["export", "bundle", str(mnv2_ort), str(second), "--out", str(bundle)]) == 0
    device = tmp_path / "device"
    with tarfile.open(bundle) as tar:
        tar.extractall(device, filter="data")
    env = {**os.environ, "PYTHON": sys.executable, "RUNS": "2", "WARMUP": "1"}
    done = subprocess.run(["sh", "profile.sh"], cwd=device, env={**env, "ONLY": "second.ort"}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert [ProfileRecord.read(r).cell.artifact for r in (device / "results").glob("*.json")] == ["second.ort"]
    shutil.rmtree(device / "results")
    done = subprocess.run(["sh", "profile.sh"], cwd=device, env={**env, "ONLY": "second.ort,third.ort"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"t2tedge: error: ONLY names third.ort, which this bundle does not hold; it holds "
                                   f"{mnv2_ort.name}, second.ort")
    assert not (device / "results").exists()


def test_bundle_rejects_unknown_artifacts(tmp_path, capsys):
    (tmp_path / "model.pt").write_bytes(b"x")
    assert main(["export", "bundle", str(tmp_path / "model.pt"), "--out", str(tmp_path / "b.tar.gz")]) == 1
    assert "cannot bundle model.pt" in capsys.readouterr().err
    assert not (tmp_path / "b.tar.gz").exists()


@pytest.fixture(scope="module")
def t2t_onnx(subject, tmp_path_factory):
    return export_onnx("t2t_vit_7", subject.checkpoint, out_dir=tmp_path_factory.mktemp("t2t_ops"),
                       num_classes=subject.num_classes)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_ops_profile_maps_t2t_vit_ops_to_its_blocks(t2t_onnx, runtime, tmp_path, capsys):
    if runtime == "openvino":
        pytest.importorskip("openvino", reason="the openvino extra is not installed")
    from t2tedge.results import OpProfileRecord

    out = tmp_path / "t2t.json"
    assert main(["profile", str(t2t_onnx), "--runtime", runtime, "--ops", "--runs", "5", "--warmup", "2",
                 "--threads", "2", "--out", str(out)]) == 0
    assert "blocks claim" in capsys.readouterr().out
    record = OpProfileRecord.read(out)
    assert_op_trace(record)
    blocks = {row.name for row in record.blocks}
    assert {"tokens_to_token.attention1", "tokens_to_token.attention2", "blocks.0.attn", "blocks.6.mlp",
            "head"} <= blocks, blocks
    assert {row.name for row in record.precisions} <= {"fp32", "convert"}
    assert out.with_suffix(".md").is_file()


def test_ops_profile_of_mobilenet_and_in_a_bundle_without_torch(mnv2_onnx, mnv2_ort, tmp_path):
    from t2tedge.harness.op_profile import profile_ops
    from t2tedge.results import OpProfileRecord

    record = profile_ops(mnv2_onnx, runs=5, warmup=2, threads=2)
    assert_op_trace(record)
    assert {"features.0", "features.17", "classifier.1"} <= {row.name for row in record.blocks}
    bundle = tmp_path / "device.tar.gz"
    assert main(["export", "bundle", str(mnv2_ort), "--out", str(bundle)]) == 0
    with tarfile.open(bundle) as tar:
        tar.extractall(tmp_path / "device", filter="data")
    (tmp_path / "device" / "torch").mkdir()
    (tmp_path / "device" / "torch" / "__init__.py").write_text("raise ImportError('no torch on this device')\n")
    env = {**os.environ, "PYTHON": sys.executable, "RUNS": "3", "OPS": "1"}
    done = subprocess.run(["sh", "profile.sh"], cwd=tmp_path / "device", env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    (ops,) = (tmp_path / "device" / "results").glob("*.ops.json")
    on_device = OpProfileRecord.read(ops)
    assert on_device.runs == 3 and on_device.model == "mobilenet_v2_100" and on_device.ops
