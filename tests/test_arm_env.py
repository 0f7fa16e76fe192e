"""The pieces of `make arm-check` that need no emulator: the environment's package list, the /proc/cpuinfo shim,
and how a file's ARM logits are judged against x86."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest

from t2tedge.errors import DataError, T2TEdgeError
from t2tedge.harness.arm_check import verdict
from t2tedge.harness.arm_env import (CPUS, DEBIAN_ROOTS, NO_AARCH64_WHEEL, PYTHON, TORCH_WHEELS, WHEELS, ArmEnv,
                                     cpuinfo_text, flatc_script, parse_packages, recipe_text, resolve)

INDEX = """Package: python3.11
Version: 3.11.2-6
Depends: python3.11-minimal (= 3.11.2-6), libpython3.11-stdlib (= 3.11.2-6), media-types | mime-support
Filename: pool/main/p/python3.11/python3.11_3.11.2-6_arm64.deb
SHA256: aa

Package: python3.11-minimal
Version: 3.11.2-6
Pre-Depends: libc6 (>= 2.35)
Depends: libpython3.11-minimal (= 3.11.2-6), zlib1g (>= 1:1.2.0)
Filename: pool/main/p/python3.11/python3.11-minimal_3.11.2-6_arm64.deb
SHA256: bb

Package: libpython3.11-minimal
Version: 3.11.2-6
Filename: pool/main/p/python3.11/libpython3.11-minimal_3.11.2-6_arm64.deb
SHA256: cc

Package: libpython3.11-stdlib
Version: 3.11.2-6
Depends: libffi8 (>= 3.4), libc6:any
Filename: pool/main/p/python3.11/libpython3.11-stdlib_3.11.2-6_arm64.deb
SHA256: dd

Package: libc6
Version: 2.36-9
Filename: pool/main/g/glibc/libc6_2.36-9_arm64.deb
SHA256: ee

Package: zlib1g
Version: 1:1.2.13
Filename: pool/main/z/zlib/zlib1g_1.2.13_arm64.deb
SHA256: ff

Package: libffi8
Version: 3.4.4-1
Filename: pool/main/libf/libffi/libffi8_3.4.4-1_arm64.deb
SHA256: 00

Package: media-types
Version: 10.0.0
Filename: pool/main/m/media-types/media-types_10.0.0_all.deb
SHA256: 11
"""


def test_the_package_list_follows_dependencies_and_skips_what_no_program_loads():
    packages = parse_packages(INDEX)
    assert packages["python3.11-minimal"].depends == ("libc6", "libpython3.11-minimal", "zlib1g")
    assert packages["libpython3.11-stdlib"].depends == ("libffi8", "libc6")  # ":any" and versions dropped
    chosen = [p.name for p in resolve(packages, ["python3.11"])]
    assert chosen == ["libc6", "libffi8", "libpython3.11-minimal", "libpython3.11-stdlib", "python3.11",
                      "python3.11-minimal", "zlib1g"]  # media-types (the first alternative) is in DEBIAN_SKIP
    assert resolve(packages, ["python3.11"])[0].filename == "pool/main/g/glibc/libc6_2.36-9_arm64.deb"
    with pytest.raises(DataError, match="no package libfoo"):
        resolve(packages, ["libfoo"])


def test_the_recipe_is_python_311_and_the_host_runtime_versions():
    assert f"python{PYTHON}" in DEBIAN_ROOTS and "libstdc++6" in DEBIAN_ROOTS
    pins = dict(w.split("==") for w in WHEELS if "==" in w)
    assert pins["onnxruntime"] == version("onnxruntime")  # ARM runs the version x86 runs: differences are the kernels'
    assert {"numpy", "pillow", "tqdm"} <= set(WHEELS)
    assert f"ai-edge-litert=={version('ai-edge-litert')}" in NO_AARCH64_WHEEL and "openvino==2026.4.1" in NO_AARCH64_WHEEL
    # ExecuTorch runs on ARM at another version than the host's, with the CPU build of torch it was built on, and the
    # page says so; torch is never among the wheels every runtime's process sees.
    assert f"executorch=={version('executorch')}" in NO_AARCH64_WHEEL
    assert TORCH_WHEELS[:2] == ("torch==2.10.0", "executorch==1.1.0")
    assert not any(w.split("==")[0] in {"torch", "executorch"} for w in WHEELS)
    env = ArmEnv(Path("/opt/arm"))
    assert env.python_path("executorch") == "/opt/arm/site:/opt/arm/site-torch"
    assert env.python_path("onnxruntime") == env.python_path("litert") == "/opt/arm/site"


def _fake_env(root: Path, built: str | None) -> ArmEnv:
    """An environment whose qemu is a shell script printing its arguments and what it was given to pass on."""
    env = ArmEnv(root)
    env.qemu.parent.mkdir(parents=True)
    env.qemu.write_text('#!/bin/sh\necho "qemu $*"\necho "flatc=$FLATC_EXECUTABLE only=$ONLY"\n')
    env.qemu.chmod(0o755)
    env.python.parent.mkdir(parents=True)
    env.python.write_text("")
    if built is not None:
        (env.root / ".built").write_text(built)
    return env


def test_an_environment_of_another_recipe_is_built_again(tmp_path):
    assert _fake_env(tmp_path / "same", recipe_text()).ready()
    assert not _fake_env(tmp_path / "old", recipe_text().replace("site-torch:", "")).ready()
    assert not _fake_env(tmp_path / "none", None).ready()


def test_qemu_gets_the_cpu_its_cpuinfo_and_a_flatc_it_can_start(tmp_path):
    """ExecuTorch's program reader starts `flatc` as a child process: the host runs the script FLATC_EXECUTABLE
    names, which starts the wheel's aarch64 flatc under qemu with the sysroot."""
    import subprocess

    env = _fake_env(tmp_path / "env", recipe_text())
    env.flatc.parent.mkdir()
    env.flatc.write_text(flatc_script(env))
    env.flatc.chmod(0o755)
    done = env.run("cortex-a76", ["-c", "pass"], cwd=tmp_path, env={"ONLY": "m.pte"})
    assert done.stdout.splitlines() == [f"qemu -L {env.sysroot} -cpu cortex-a76 {env.python} -c pass",
                                        f"flatc={env.flatc} only=m.pte"]
    assert (env.sysroot / "proc" / "cpuinfo").read_text() == cpuinfo_text("cortex-a76")
    flatc = subprocess.run([str(env.flatc), "--json", "a b.bin"], capture_output=True, text=True, check=True)
    wheel_flatc = env.torch_site / "executorch" / "data" / "bin" / "flatc"
    assert flatc.stdout.splitlines()[0] == f"qemu -L {env.sysroot} {wheel_flatc} --json a b.bin"


def test_the_cpuinfo_shim_says_what_each_core_has():
    a53, a76 = cpuinfo_text("cortex-a53", cores=2), cpuinfo_text("cortex-a76", cores=4)
    assert a53.count("processor\t:") == 2 and a76.count("processor\t:") == 4
    assert "CPU part\t: 0xd03" in a53 and "CPU part\t: 0xd0b" in a76
    features = next(line.split(":", 1)[1].split() for line in a76.splitlines() if line.startswith("Features"))
    assert "asimddp" in features and "asimddp" not in a53  # the dot product: int8 GEMM's fast path
    assert set(CPUS) == {"cortex-a53", "cortex-a76"}


def test_an_unknown_cpu_is_refused_before_qemu_starts(tmp_path):
    with pytest.raises(T2TEdgeError, match="unknown CPU model 'cortex-x9'"):
        ArmEnv(tmp_path).run("cortex-x9", ["-c", "pass"], cwd=tmp_path)


def test_the_verdict_of_arm_logits_against_x86():
    rng = np.random.default_rng(0)
    x86 = rng.normal(size=(8, 10)).astype(np.float32)
    assert verdict(x86, x86.copy(), "fp32")[0] == "bit-identical"
    assert verdict(x86, x86 + 1e-6, "fp32")[0] == "within tolerance"
    assert verdict(x86, x86 + 1e-3, "fp32")[0] == "broken"  # fp32 kernels may differ by rounding, not 1e-3
    noisy = x86 + rng.normal(scale=0.05, size=x86.shape).astype(np.float32)
    assert verdict(x86, noisy, "int8")[0] == "within tolerance"  # two INT8 runs of one file: int8_vs_int8
    assert verdict(x86, -x86, "int8")[0] == "broken"


def test_records_made_under_emulation_name_their_cpu_as_emulated(monkeypatch):
    from t2tedge.harness.latency import EMULATED, machine_info

    real = machine_info()
    monkeypatch.setenv(EMULATED, "cortex-a53 under qemu-user on the host")
    emulated = machine_info()
    assert emulated.cpu == "cortex-a53 under qemu-user on the host (emulated)"
    assert emulated != real  # Table 4 keys cells by machine: an emulated cell never replaces a real one


def test_a_row_judged_against_a_stand_in_says_so_in_the_page():
    """An INT8 .ort file is judged against its source .onnx on an x86 CPU whose int8 products saturate: the page
    must say which file gave the x86 logits, beside the numbers."""
    from t2tedge.harness.arm_check import render_markdown
    from t2tedge.harness.latency import machine_info
    from t2tedge.results import ArmCheckRecord, ArmParityRow

    note = "x86 logits from m_int8.onnx (this x86 CPU's int8 dot products saturate on the file as it is)"
    rows = [ArmParityRow(model="m", file="m_int8.ort", runtime="ort", precision="int8", cpu="cortex-a76",
                         verdict="within tolerance", max_abs=0.01, top1_agreement=1.0, cosine=0.999, note=note),
            ArmParityRow(model="m", file="m.ort", runtime="ort", precision="fp32", cpu="cortex-a76",
                         verdict="bit-identical", max_abs=0.0, top1_agreement=1.0, cosine=1.0)]
    record = ArmCheckRecord(version="0", machine=machine_info(), data="val", images=2, cpus=["cortex-a76"],
                            wheels=[], no_aarch64_wheel={}, seconds={}, rows=rows)
    page = render_markdown(record)
    assert f"- `m_int8.ort` on cortex-a76: {note}" in page and page.count("x86 logits from") == 1


def test_a_runtime_that_kills_its_process_costs_only_its_own_rows(tmp_path):
    """One emulated process per runtime, ONLY naming its files: the ExecuTorch process dying of an instruction the
    CPU lacks leaves the ONNX Runtime file's logits, and its files are reported with the reason."""
    import io
    import json
    import subprocess
    import tarfile

    from t2tedge.harness.arm_check import ArmCheckSettings, _bundle_on_arm

    manifest = {"artifacts": [{"name": "m.onnx", "runtime": "onnxruntime"}, {"name": "m.pte", "runtime": "executorch"},
                              {"name": "m_int8.pte", "runtime": "executorch"}]}
    bundle = tmp_path / "m.tar.gz"
    with tarfile.open(bundle, "w:gz") as tar:
        data = json.dumps(manifest).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    calls = []

    class StubEnv:
        def python_path(self, runtime):
            return f"site-for-{runtime}"

        def run(self, cpu, argv, cwd, env=None, timeout=None):
            calls.append((cpu, env["ONLY"], env["PYTHONPATH"]))
            if "m.pte" in env["ONLY"]:
                return subprocess.CompletedProcess(argv, -4, "", "qemu: uncaught target signal 4 (Illegal instruction)")
            for name in env["ONLY"].split(","):
                np.save(cwd / "logits" / f"{name}.npy", np.ones((2, 3), np.float32))
            return subprocess.CompletedProcess(argv, 0, "logits\n", "")

    settings = ArmCheckSettings(data=tmp_path, limit=2, cpus=("cortex-a53",))
    run = _bundle_on_arm(StubEnv(), bundle, np.zeros((2, 3, 8, 8), np.float32), "cortex-a53", settings, tmp_path / "w",
                         say=lambda line: None)
    assert calls == [("cortex-a53", "m.onnx", ".:site-for-onnxruntime"),
                     ("cortex-a53", "m.pte,m_int8.pte", ".:site-for-executorch")]
    assert list(run.logits) == ["m.onnx"]
    assert run.failed == {name: "its executorch process on cortex-a53 ended: qemu: uncaught target signal 4 (Illegal "
                                "instruction)" for name in ("m.pte", "m_int8.pte")}
