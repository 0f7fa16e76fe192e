"""The pieces of `make arm-check` that need no emulator: the environment's package list, the /proc/cpuinfo shim,
and how a file's ARM logits are judged against x86."""

from __future__ import annotations

from importlib.metadata import version

import numpy as np
import pytest

from t2tedge.errors import DataError, T2TEdgeError
from t2tedge.harness.arm_check import verdict
from t2tedge.harness.arm_env import (CPUS, DEBIAN_ROOTS, NO_AARCH64_WHEEL, PYTHON, WHEELS, ArmEnv, cpuinfo_text,
                                     parse_packages, resolve)

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
