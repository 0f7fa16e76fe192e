"""An aarch64 Python environment on an x86 Linux host, run under qemu-user: our files on ARM kernels, no device.

`make arm-check` builds it once under `.arm-env/` in the project (ignored by git) from the package registries:

- Debian bookworm's arm64 packages: Python 3.11 and the C and C++ runtime the wheels need, resolved from Debian's
  package index (the index checked against the suite's Release file, each .deb against the index, by sha256) and
  unpacked with `dpkg -x` into a sysroot;
- PyPI's manylinux aarch64 wheels: numpy, pillow, tqdm and every runtime that publishes one for Python 3.11
  (`WHEELS`; ExecuTorch with the CPU build of torch it runs on, `TORCH_WHEELS`, in a folder of its own that only
  the runtimes in `TORCH_RUNTIMES` see; `NO_AARCH64_WHEEL` names what ARM cannot run at this project's pins),
  installed by this host's pip with `--platform`, then compiled to bytecode by this host's Python 3.11 (bytecode
  is the same on every CPU; compiling torch's modules under emulation at each start would take minutes);
- Debian's amd64 qemu-user-static, unpacked the same way (no root, nothing installed on the host).

qemu-user runs the sysroot's python3.11 with `-L sysroot` (every absolute path the program opens is looked up in the
sysroot first) and `-cpu MODEL`, so the runtimes see that CPU's features through the auxiliary vector. ONNX
Runtime also reads `/proc/cpuinfo`, which qemu 7.2 passes through from the x86 host: `cpuinfo_text` writes the
emulated CPU's into the sysroot (`sysroot/proc/cpuinfo`), where `-L` finds it first. qemu 7.2's SME emulation
returns wrong XNNPACK int8 results on `-cpu max`; the CPU models here have no SME. ExecuTorch's program reader
starts the aarch64 `flatc` of its wheel as a child process, which the host kernel cannot run without qemu (no
binfmt_misc here): `FLATC_EXECUTABLE` names a host script that runs it under qemu.
"""

from __future__ import annotations

import compileall
import hashlib
import lzma
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from t2tedge.errors import DataError, T2TEdgeError

DEBIAN_MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
# What the sysroot needs: Python 3.11 (bookworm's, the ABI of the cp311 wheels) and the C++ runtime and OpenMP
# the runtimes' wheels link. Their dependencies are resolved from the index.
DEBIAN_ROOTS = ("python3.11", "libpython3.11-stdlib", "libstdc++6", "libgcc-s1", "libgomp1")
# Packages the resolver never follows: what a chroot needs to boot or administer, never what a program loads.
DEBIAN_SKIP = frozenset({"debconf", "dpkg", "install-info", "media-types", "tzdata", "mime-support", "readline-common",
                         "debianutils", "base-files", "netbase", "perl-base", "libc-bin", "gcc-12-base"})
QEMU_PACKAGE = "qemu-user-static"
PYTHON = "3.11"
PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_27_aarch64", "manylinux_2_28_aarch64",
             "manylinux_2_31_aarch64", "manylinux_2_34_aarch64", "manylinux_2_35_aarch64")
# The aarch64 wheels installed, pinned to this project's versions where the project pins them.
WHEELS = ("numpy", "pillow", "tqdm", "onnx", "onnxruntime==1.32.0", "ai-edge-litert==1.4.0")
# ExecuTorch's Python runtime links torch's libraries. torch 2.10.0 is the last CPU build of torch on PyPI for
# aarch64 (from 2.11 its aarch64 wheel is a CUDA build: libtorch_cpu links libcudart and libcupti), and executorch
# 1.1.0 the last release built on it. Installed without dependency resolution, because pip evaluates environment
# markers against this x86-64 host and would pull torch's CUDA packages; what their imports need is listed. They
# live apart (site-torch/), on the path of the runtimes that need them only: torch's aarch64 build uses
# instructions cortex-a53 (Armv8.0) lacks (SIGILL at import), and the bundle's profile imports torch wherever it
# can, to count MACs.
TORCH_WHEELS = ("torch==2.10.0", "executorch==1.1.0", "typing-extensions", "filelock", "sympy", "mpmath", "networkx",
                "jinja2", "markupsafe", "fsspec", "packaging", "pyyaml", "ruamel.yaml", "tabulate", "flatbuffers")
TORCH_RUNTIMES = ("executorch",)
# Runtimes at this project's pins that ARM cannot run: PyPI has no aarch64 Linux wheel of that version for Python
# 3.11, or one that needs CUDA (checked 2026-12-07); what runs instead, if anything.
NO_AARCH64_WHEEL = {
    "ai-edge-litert==2.3.0": "aarch64 Linux wheels stop at 1.4.0 (2.x ships x86-64 Linux and macOS only): ARM runs "
                             "1.4.0, so a LiteRT difference may be the version's as well as the kernels'",
    "openvino==2026.4.1": "aarch64 Linux wheels stop at 2025.2.0, which cannot read 2026.x IR",
    "executorch==1.5.1": "its aarch64 wheel needs torch 2.13, whose aarch64 wheel on PyPI is a CUDA build: ARM "
                         "runs executorch 1.1.0 on torch 2.10.0 (the last CPU build), which loads 1.5.1's programs; "
                         "a difference may be the version's as well as the kernels'",
}
# Two phone cores: without and with the Armv8.2 dot-product instructions (int8 GEMM's fast path).
CPUS = {
    "cortex-a53": {"part": "0xd03", "variant": "0x0", "revision": "4", "architecture": "8",
                   "features": "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"},
    "cortex-a76": {"part": "0xd0b", "variant": "0x4", "revision": "1", "architecture": "8",
                   "features": "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc "
                               "dcpop asimddp ssbs"},
}


@dataclass(frozen=True)
class DebianPackage:
    name: str
    version: str
    filename: str
    sha256: str
    depends: tuple[str, ...]


def parse_packages(text: str) -> dict[str, DebianPackage]:
    """Debian's Packages index (one stanza per package) -> name -> package; `depends` keeps the first alternative
    of each Depends and Pre-Depends entry, without versions or architecture qualifiers."""
    packages = {}
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith((" ", "\t")) and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if "Package" not in fields or "Filename" not in fields:
            continue
        depends = []
        for field in ("Pre-Depends", "Depends"):
            for entry in filter(None, (e.strip() for e in fields.get(field, "").split(","))):
                first = entry.split("|")[0].strip()
                depends.append(re.split(r"[\s(:]", first, maxsplit=1)[0])
        packages[fields["Package"]] = DebianPackage(fields["Package"], fields.get("Version", ""), fields["Filename"],
                                                    fields.get("SHA256", ""), tuple(depends))
    return packages


def resolve(packages: Mapping[str, DebianPackage], roots: Iterable[str] = DEBIAN_ROOTS,
            skip: frozenset[str] = DEBIAN_SKIP) -> list[DebianPackage]:
    """`roots` and everything they depend on (but `skip`), in a stable order; a name the index lacks (a virtual
    package) is skipped too, a root it lacks is an error."""
    chosen: dict[str, DebianPackage] = {}
    pending = list(roots)
    for root in roots:
        if root not in packages:
            raise DataError(f"Debian {SUITE} arm64 has no package {root}")
    while pending:
        name = pending.pop(0)
        if name in chosen or name in skip or name not in packages:
            continue
        chosen[name] = packages[name]
        pending.extend(packages[name].depends)
    return sorted(chosen.values(), key=lambda p: p.name)


def cpuinfo_text(cpu: str, cores: int = 2) -> str:
    """/proc/cpuinfo as an aarch64 Linux kernel writes it for `cores` cores of `cpu` (a key of CPUS)."""
    spec = CPUS[cpu]
    block = ("processor\t: {n}\nBogoMIPS\t: 48.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
             "CPU architecture: {architecture}\nCPU variant\t: {variant}\nCPU part\t: {part}\n"
             "CPU revision\t: {revision}\n")
    return "\n".join(block.format(n=n, **spec) for n in range(cores)) + "\n"


def _fetch(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            return response.read()
    except OSError as exc:
        raise T2TEdgeError(f"cannot download {url}: {exc}") from None


def _checked(data: bytes, sha256: str, what: str) -> bytes:
    if hashlib.sha256(data).hexdigest() != sha256:
        raise DataError(f"{what}: sha256 differs from Debian's index; the download is damaged or tampered with")
    return data


def debian_index(arch: str, cache: Path) -> dict[str, DebianPackage]:
    """Debian's main Packages index of `arch`, checked against the suite's Release file (sha256)."""
    release = _fetch(f"{DEBIAN_MIRROR}/dists/{SUITE}/Release").decode()
    member = f"main/binary-{arch}/Packages.xz"
    match = re.search(rf"^ ([0-9a-f]{{64}})\s+\d+\s+{re.escape(member)}$", release.split("SHA256:")[1], re.M)
    if not match:
        raise DataError(f"Debian's {SUITE} Release lists no {member}")
    data = _checked(_fetch(f"{DEBIAN_MIRROR}/dists/{SUITE}/{member}"), match.group(1), member)
    return parse_packages(lzma.decompress(data).decode())


def _unpack_debs(packages: Iterable[DebianPackage], into: Path, cache: Path, say) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    for package in packages:
        deb = cache / Path(package.filename).name
        if not deb.is_file() or hashlib.sha256(deb.read_bytes()).hexdigest() != package.sha256:
            say(f"download {package.name} {package.version}")
            deb.write_bytes(_checked(_fetch(f"{DEBIAN_MIRROR}/{package.filename}"), package.sha256, package.name))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(into)], check=True)


@dataclass(frozen=True)
class ArmEnv:
    """A built environment: `qemu` (qemu-aarch64-static), `sysroot` (the arm64 userland), `site` (the wheels)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).resolve())  # qemu runs in other folders

    @property
    def qemu(self) -> Path:
        return self.root / "qemu" / "usr" / "bin" / "qemu-aarch64-static"

    @property
    def sysroot(self) -> Path:
        return self.root / "sysroot"

    @property
    def site(self) -> Path:
        return self.root / "site"

    @property
    def python(self) -> Path:
        return self.sysroot / "usr" / "bin" / f"python{PYTHON}"

    @property
    def torch_site(self) -> Path:
        return self.root / "site-torch"

    def python_path(self, runtime: str) -> str:
        """The wheel folders a process running `runtime` imports from."""
        return f"{self.site}:{self.torch_site}" if runtime in TORCH_RUNTIMES else str(self.site)

    @property
    def flatc(self) -> Path:
        return self.root / "bin" / "flatc"

    def ready(self) -> bool:
        """Built, and built from this recipe: an environment of another package list is built again."""
        marker = self.root / ".built"
        return (marker.is_file() and marker.read_text() == recipe_text() and self.qemu.is_file()
                and self.python.is_file())

    def run(self, cpu: str, argv: list[str], cwd: Path, env: Mapping[str, str] | None = None,
            timeout: float | None = None) -> subprocess.CompletedProcess:
        """Run the sysroot's Python with `argv` under qemu as `cpu`, its /proc/cpuinfo written first."""
        if cpu not in CPUS:
            raise T2TEdgeError(f"unknown CPU model {cpu!r}; choose {', '.join(CPUS)}")
        proc = self.sysroot / "proc"
        proc.mkdir(exist_ok=True)
        (proc / "cpuinfo").write_text(cpuinfo_text(cpu))
        environment = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "LANG": "C.UTF-8", "PYTHONPATH": str(self.site),
                       "PYTHONDONTWRITEBYTECODE": "1", "FLATC_EXECUTABLE": str(self.flatc), **(env or {})}
        return subprocess.run([str(self.qemu), "-L", str(self.sysroot), "-cpu", cpu, str(self.python), *argv],
                              cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout)


def recipe_text() -> str:
    """What `.built` holds: the package lists the environment was built from, by folder."""
    return "\n".join(("sysroot:", *DEBIAN_ROOTS, "site:", *WHEELS, "site-torch:", *TORCH_WHEELS)) + "\n"


def flatc_script(env: ArmEnv) -> str:
    """A host shell script that runs the aarch64 `flatc` of ExecuTorch's wheel under qemu."""
    flatc = env.torch_site / "executorch" / "data" / "bin" / "flatc"
    return (f"#!/bin/sh\nexec {shlex.quote(str(env.qemu))} -L {shlex.quote(str(env.sysroot))} "
            f"{shlex.quote(str(flatc))} \"$@\"\n")


def build_env(root: str | os.PathLike, say=print) -> ArmEnv:
    """Build (or reuse) the environment under `root`; see the module docstring."""
    env = ArmEnv(Path(root))
    if env.ready():
        return env
    if shutil.which("dpkg-deb") is None:
        raise T2TEdgeError("dpkg-deb is not here (a Debian or Ubuntu host builds the ARM environment)")
    cache = env.root / "downloads"
    for folder in (env.sysroot, env.site, env.torch_site, env.root / "qemu", env.flatc.parent):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    say(f"Debian {SUITE} arm64: Python {PYTHON} and its libraries")
    _unpack_debs(resolve(debian_index("arm64", cache)), env.sysroot, cache, say)
    say("Debian amd64: qemu-user-static")
    _unpack_debs(resolve(debian_index("amd64", cache), [QEMU_PACKAGE], frozenset(DEBIAN_SKIP) | {"libc6"}),
                 env.root / "qemu", cache, say)
    say(f"PyPI aarch64 wheels: {', '.join(WHEELS)}")
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--no-warn-conflicts",
           "--only-binary=:all:", "--python-version", PYTHON, *platforms]
    subprocess.run([*pip, "--target", str(env.site), *WHEELS], check=True)
    say(f"PyPI aarch64 wheels without dependency resolution: {', '.join(TORCH_WHEELS[:2])} and what they import")
    subprocess.run([*pip, "--no-deps", "--target", str(env.torch_site), *TORCH_WHEELS], check=True)
    env.flatc.write_text(flatc_script(env))
    env.flatc.chmod(0o755)
    if sys.version_info[:2] == tuple(int(n) for n in PYTHON.split(".")):
        say("bytecode of the wheels and the standard library (compiled here, not under emulation)")
        for folder in (env.site, env.torch_site, env.sysroot / "usr" / "lib" / f"python{PYTHON}"):
            compileall.compile_dir(folder, quiet=2, workers=0)
    (env.root / ".built").write_text(recipe_text())
    return env
