"""Write tests/data/tensorrt-10.13-python-api.txt: the TensorRT 10.13 Python surface our builder and runtime touch,
in the format of ../shared/reference/tensorrt-11.4-python-api.txt, read from the 10.13 bindings wheel.

    pip download --no-deps tensorrt-cu12-bindings==10.13.3.9 -d /tmp/trt10
    python scripts/record_tensorrt10_surface.py /tmp/trt10/tensorrt_cu12_bindings-10.13.3.9-*.whl

The module does not import without NVIDIA's libraries, so its names are read from the strings of `tensorrt.so`. The
linker merges string tails ("INT8" may live inside "UINT8"), so a name counts as present when it ends some string,
and as absent only when no string ends with it: certain for absence. Each class and enum starts from its 11.4
member list, drops the names 10.13 does not have, and adds the 10.x names that 11 removed where 10.13 has them.
"""

from __future__ import annotations

import ast
import bisect
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_11 = ROOT.parent / "shared" / "reference" / "tensorrt-11.4-python-api.txt"
DESTINATION = ROOT / "tests" / "data" / "tensorrt-10.13-python-api.txt"
# What TensorRT 11 removed (NVIDIA's "Migrating from TensorRT 10.x to 11.x"), per class or enum.
REMOVED_IN_11 = {
    "BuilderFlag": ["FP16", "BF16", "INT8", "FP8", "INT4", "FP4", "OBEY_PRECISION_CONSTRAINTS",
                    "PREFER_PRECISION_CONSTRAINTS", "REJECT_EMPTY_ALGORITHMS", "STRICT_TYPES"],
    "IBuilderConfig": ["int8_calibrator", "set_calibration_profile", "get_calibration_profile", "algorithm_selector"],
    "QuantizationFlag": ["CALIBRATE_BEFORE_FUSION"],
    "CalibrationAlgoType": ["LEGACY_CALIBRATION", "ENTROPY_CALIBRATION", "ENTROPY_CALIBRATION_2",
                            "MINMAX_CALIBRATION"],
}


def so_strings(wheel: Path) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as archive:
        member = next(n for n in archive.namelist() if n.endswith("tensorrt.so"))
        path = Path(archive.extract(member, tmp))
        return subprocess.run(["strings", "-n", "2", str(path)], capture_output=True, text=True,
                              check=True).stdout.splitlines()


def main(wheel: str) -> None:
    strings = so_strings(Path(wheel))
    reversed_strings = sorted(s[::-1] for s in strings)

    def present(name: str) -> bool:  # some string ends with `name`
        key = name[::-1]
        at = bisect.bisect_left(reversed_strings, key)
        return at < len(reversed_strings) and reversed_strings[at].startswith(key)

    lines = [f"# TensorRT 10.13 Python API surface for t2tedge's checks, read from {Path(wheel).name}",
             "# (tensorrt_bindings/tensorrt.so strings) by scripts/record_tensorrt10_surface.py; format as the 11.4",
             "# reference. Each list: the 11.4 members 10.13 has, plus what 11 removed where 10.13 has it."]
    for line in REFERENCE_11.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            if not line.strip():
                lines.append(line)
            continue
        listed = re.match(r"^(\w+): (\[.*\]|ABSENT)$", line)
        flag = re.match(r"^(\w+) (True|False)$", line)
        if listed:
            name = listed.group(1)
            members = [] if listed.group(2) == "ABSENT" else ast.literal_eval(listed.group(2))
            members = [m for m in members if present(m)] + [m for m in REMOVED_IN_11.get(name, []) if present(m)]
            lines.append(f"{name}: {members}" if members else f"{name}: ABSENT")
        elif flag:
            lines.append(f"{flag.group(1)} {present(flag.group(1))}")
    DESTINATION.parent.mkdir(parents=True, exist_ok=True)
    DESTINATION.write_text("\n".join(lines) + "\n")
    print(f"wrote {DESTINATION}")


if __name__ == "__main__":
    main(sys.argv[1])
