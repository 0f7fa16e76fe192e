"""The target registry: a toy target added through the registry alone shows up in every command that lists, runs,
packs or measures targets; the built-in descriptors speak the one precision vocabulary; Table 4 cells are the files
`t2tedge export` writes."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from t2tedge import metadata_keys as keys
from t2tedge.cli import main
from t2tedge.errors import UsageError
from t2tedge.fileio import sha256_file
from t2tedge.runtimes.base import Runtime, RuntimeDescription
from t2tedge.targets import PRECISIONS, BuildRequest, Option, Target, get_target, register, targets, unregister


class ToyRuntime(Runtime):
    """Answers class 0 for every image: enough to be measured."""

    name = "toy"
    consumes = "toy"

    def __init__(self, classes: int, bias: str) -> None:
        self.classes, self.bias = classes, bias

    @classmethod
    def load(cls, artifact, *, threads=None, bias: str = "none"):
        meta = json.loads(Path(artifact).read_text())
        return cls(meta["classes"], bias)

    def run(self, batch: np.ndarray) -> np.ndarray:
        logits = np.zeros((len(batch), self.classes), np.float32)
        logits[:, 0] = 1.0
        return logits

    def describe(self) -> RuntimeDescription:
        return RuntimeDescription(runtime=self.name, version="0", precision="fp32", device="toy", threads=1,
                                  details={"bias": self.bias})


def _build_toy(request: BuildRequest) -> Path:
    from t2tedge.models import get_spec

    request.out_dir.mkdir(parents=True, exist_ok=True)
    path = request.out_dir / f"{request.model}.toy"
    path.write_text(json.dumps({"classes": request.num_classes, keys.MODEL: request.model,
                                keys.PREPROCESS: get_spec(request.model).preprocess.to_dict()}))
    return path


def _toy_metadata(path: Path) -> dict[str, str]:
    meta = json.loads(path.read_text())
    return {keys.MODEL: meta[keys.MODEL], keys.PREPROCESS: json.dumps(meta[keys.PREPROCESS]), keys.PRECISION: "fp32"}


TOY = Target(name="toy", runtime="toy", summary="a toy target for tests", suffixes=(".toy",),
             precisions={"fp32": None, "int8": "toys have no integers"}, build=_build_toy,
             read_metadata=_toy_metadata, verify=_toy_metadata, adapter=lambda: ToyRuntime,
             load_options=(Option("bias", "toy: a load option", ("none", "some")),))


@pytest.fixture
def toy():
    register(TOY)
    yield TOY
    unregister("toy")


def test_a_toy_target_added_through_the_registry_shows_up_everywhere(toy, tmp_path, val_dir, capsys):
    assert main(["runtimes"]) == 0
    assert any(line.startswith("toy") and line.endswith("yes") for line in capsys.readouterr().out.splitlines())
    # export: a parser per registered target, the one command shape
    assert main(["export", "toy", "mobilenet_v2_100", "--checkpoint", "random", "--out", str(tmp_path)]) == 0
    artifact = tmp_path / "mobilenet_v2_100.toy"
    assert artifact.is_file()
    assert main(["export", "toy", "mobilenet_v2_100", "--precision", "int8", "--out", str(tmp_path)]) == 2
    assert "toys have no integers" in capsys.readouterr().err
    # profile: found by suffix, its load option accepted, another target's refused
    assert main(["profile", str(artifact), "--runs", "2", "--warmup", "1", "--bias", "some",
                 "--out", str(tmp_path / "p.json")]) == 0
    record = json.loads((tmp_path / "p.json").read_text())["cell"]
    assert record["runtime"] == "toy" and record["runtime_info"]["details"]["bias"] == "some"
    assert main(["profile", str(artifact), "--provider", "cpu", "--out", str(tmp_path / "q.json")]) == 2
    assert "--provider is an option of onnxruntime, not of toy" in capsys.readouterr().err
    # bundle: packed with its verifier run
    assert main(["export", "bundle", str(artifact), "--out", str(tmp_path / "b.tar.gz")]) == 0
    with tarfile.open(tmp_path / "b.tar.gz") as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
    assert manifest["artifacts"][0]["runtime"] == "toy" and "artifacts/mobilenet_v2_100.toy" in \
        [f["path"] for f in manifest["artifacts"][0]["files"]]
    # table4: a cell of its own, built by its build function, measured by its adapter
    from t2tedge.harness.table4 import Grid, GridSettings

    grid = Grid(["mobilenet_v2_100"], ["toy"], ["fp32", "int8"],
                GridSettings(data=val_dir, limit=4, runs=2, warmup=1, time_alone=False), tmp_path / "t4")
    cells = {c.precision: c for c in grid.run().cells}
    assert cells["fp32"].measured and cells["fp32"].artifact == "mobilenet_v2_100.toy"
    assert cells["fp32"].images == 4 and cells["int8"].reason.endswith("toys have no integers")


def test_every_builtin_target_speaks_the_vocabulary():
    for target in targets().values():
        assert set(target.precisions) <= set(PRECISIONS), target.name
        assert target.builds and target.default_precision in target.builds
        for precision in PRECISIONS:
            assert (target.why_not(precision) is None) == (precision in target.builds)
            if precision not in target.builds:
                assert target.why_not(precision).startswith(f"{target.name} builds ")
    # names are resolved through aliases too: `export onnx` is the onnxruntime target
    assert get_target("onnx") is get_target("onnxruntime")
    with pytest.raises(UsageError, match="unknown target 'tensorflow'"):
        get_target("tensorflow")


def test_load_options_belong_to_their_target():
    with pytest.raises(UsageError, match="--compute-units is an option of coreml, not of onnxruntime"):
        get_target("onnxruntime").check_load_options({"compute_units": "ALL"})
    with pytest.raises(UsageError, match="--precision-hint bf17 is not one of"):
        get_target("openvino").check_load_options({"precision_hint": "bf17"})
    get_target("openvino").check_load_options({"precision_hint": "bf16"})


def test_calibration_options_go_with_int8_only(tmp_path):
    litert = get_target("litert")
    request = BuildRequest(model="mobilenet_v2_100", precision="w8", out_dir=tmp_path)
    with pytest.raises(UsageError, match="--num-calib goes with --precision int8; litert w8 needs no calibration"):
        litert.check_request(request, given=("num_calib",))
    litert.check_request(BuildRequest(model="mobilenet_v2_100", precision="int8", out_dir=tmp_path), ("num_calib",))
    coreml = get_target("coreml")
    with pytest.raises(UsageError, match="--palettize applies to coreml --precision fp16 or fp32, not w8"):
        coreml.check_export_options("w8", {"palettize": "6"})


def test_a_table4_cell_is_the_file_export_writes(tmp_path, val_dir, weights_dir):
    """The grid's onnxruntime fp32 cell and `t2tedge export onnx` with the same weights write the same bytes."""
    from t2tedge.harness.table4 import Grid, GridSettings

    grid = Grid(["mobilenet_v2_100"], ["onnxruntime"], ["fp32"], GridSettings(data=val_dir, limit=2, runs=2, warmup=1),
                tmp_path / "t4")
    cell = grid.run().cells[0]
    assert main(["export", "onnx", "mobilenet_v2_100", "--out", str(tmp_path / "export")]) == 0
    exported = tmp_path / "export" / "mobilenet_v2_100.onnx"
    assert cell.artifact == exported.name and cell.artifact_sha256 == sha256_file(exported)
    assert cell.runtime_info["details"]["format"] == "onnx"
