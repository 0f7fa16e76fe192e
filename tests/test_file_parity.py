"""`t2tedge parity FILE...`: the files `t2tedge export` wrote, compared with each other and with the reference by
tag; a damaged INT8 file breaks its pairs, JUnit counts them, and the block comparison finds the damaged block."""

from __future__ import annotations

import shutil
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from t2tedge.cli import main
from t2tedge.harness.file_parity import aligned, pair_tolerance, parse_tolerances
from t2tedge.op_blocks import probe_of, probe_tensors, scope_path
from t2tedge.results import ParityRecord

TAG = "t2t_vit_7.imagenette"
DAMAGED_LAYER = "/blocks.3/mlp/fc2/MatMul"


def damage(source: Path, destination: Path, node_name: str = DAMAGED_LAYER, factor: float = 4.0) -> Path:
    """A copy of an INT8 QDQ file with one layer's weights scaled (its weight DequantizeLinear's scale)."""
    proto = onnx.load(str(source))
    producer = {out: node for node in proto.graph.node for out in node.output}
    layer = next(node for node in proto.graph.node if node.name == node_name)
    scale_name = producer[layer.input[1]].input[1]
    scale = next(init for init in proto.graph.initializer if init.name == scale_name)
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * factor, scale_name))
    destination.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(destination))
    return destination


def export(target: str, precision: str, out: Path, sample_dir: Path) -> Path:
    calib = ["--calib", str(sample_dir), "--num-calib", "8"] if precision == "int8" else []
    assert main(["export", target, TAG, "--out", str(out / target), "--precision", precision, *calib]) == 0
    suffix = {"onnxruntime": ".onnx", "openvino": ".xml", "litert": ".tflite", "executorch": ".pte"}[target]
    return out / target / f"t2t_vit_7{'' if precision == 'fp32' else '_' + precision}{suffix}"


@pytest.fixture(scope="module")
def shipped(subject, sample_dir, tmp_path_factory):
    """What a release folder holds: ONNX fp32 and INT8, OpenVINO fp32, written by `t2tedge export`; and a copy of
    the INT8 file with blocks.3's fc2 weights scaled 4x."""
    out = tmp_path_factory.mktemp("release")
    files = {"onnx": export("onnxruntime", "fp32", out, sample_dir),
             "onnx_int8": export("onnxruntime", "int8", out, sample_dir),
             "ir": export("openvino", "fp32", out, sample_dir)}
    files["damaged"] = damage(files["onnx_int8"], out / "damaged" / "t2t_vit_7_int8.onnx")
    return files


def _parity(files, *extra: str) -> int:
    return main(["parity", *map(str, files), *extra])


def test_shipped_files_pass_against_each_other_and_the_reference(shipped, subject, tmp_path, monkeypatch):
    summary = tmp_path / "summary.md"
    summary.write_text("# earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    files = [shipped["onnx"], shipped["ir"], shipped["onnx_int8"]]
    code = _parity(files, "--reference", TAG, "--data", str(subject.val), "--limit", "16",
                   "--json", str(tmp_path / "p.json"), "--junit", str(tmp_path / "p.xml"))
    assert code == 0
    record = ParityRecord.read(tmp_path / "p.json")
    assert record.passed and record.reference == TAG and record.images == 16
    names = {(p.first, p.second): p for p in record.pairs}
    assert len(names) == 6  # three pairs of files, three files against the reference
    assert names[("reference", "t2t_vit_7.onnx")].tolerance_key == "fp32"
    assert names[("t2t_vit_7.onnx", "t2t_vit_7_int8.onnx")].tolerance_key == "int8"
    assert not record.blocks  # nothing failed and --blocks was not asked for
    suite = ElementTree.parse(tmp_path / "p.xml").getroot()
    assert suite.get("tests") == "6" and suite.get("failures") == "0"
    text = summary.read_text()
    assert text.startswith("# earlier step\n") and "6 of 6 pairs within tolerance" in text


def test_a_damaged_int8_file_fails_and_its_block_is_named(shipped, subject, tmp_path):
    files = [shipped["onnx"], shipped["onnx_int8"], shipped["damaged"]]
    code = _parity(files, "--reference", TAG, "--data", str(subject.val), "--limit", "16", "--block-images", "4",
                   "--blocks", "--json", str(tmp_path / "p.json"), "--junit", str(tmp_path / "p.xml"),
                   "--markdown", str(tmp_path / "p.md"), "--png", str(tmp_path / "p.png"))
    assert code == 1
    record = ParityRecord.read(tmp_path / "p.json")
    broken = [p for p in record.pairs if not p.passed]
    damaged = "damaged/t2t_vit_7_int8.onnx"
    assert broken and all(damaged in (p.first, p.second) for p in broken)
    assert len(broken) == 3  # the damaged file against the reference, the fp32 file and the good INT8 file
    suite = ElementTree.parse(tmp_path / "p.xml").getroot()
    failing = [case for case in suite.iter("testcase") if case.find("failure") is not None]
    assert len(failing) == len(broken)
    assert all("blocks.3" in case.find("failure").get("message") for case in failing), [c.find("failure").get("message") for c in failing]
    for pair in broken:
        assert pair.first_divergent == "blocks.3", (pair.first, pair.second, pair.blocks)
    good = next(p for p in record.pairs if {p.first, p.second} == {"onnxruntime/t2t_vit_7_int8.onnx", damaged})
    before = [s for s in good.blocks[:record.blocks.index("blocks.3")] if s.sqnr_db is not None]
    assert len(before) == 8 and all(s.sqnr_db == 150.0 for s in before)  # the same files up to the damaged block
    assert good.most_loss == "blocks.3"
    assert "blocks.3" in (tmp_path / "p.md").read_text() and (tmp_path / "p.png").stat().st_size > 10_000


def test_blocks_list_every_block_of_fp32_vs_int8(shipped, subject, tmp_path):
    files = [shipped["onnx"], shipped["onnx_int8"]]
    assert _parity(files, "--data", str(subject.val), "--limit", "4", "--blocks", "--json",
                   str(tmp_path / "p.json")) == 0
    record = ParityRecord.read(tmp_path / "p.json")
    expected = ["tokens_to_token.soft_split0", "tokens_to_token.attention1", "tokens_to_token.soft_split1",
                "tokens_to_token.attention2", "tokens_to_token"] + [f"blocks.{i}" for i in range(7)] + ["norm", "head"]
    assert record.blocks == expected
    (pair,) = record.pairs
    assert all(s.sqnr_db is not None for s in pair.blocks)
    assert pair.most_loss in expected and pair.blocks[0].sqnr_db == 150.0  # the soft split only moves pixels


@pytest.mark.slow
def test_every_cpu_runtime_fp32_and_int8_files(subject, sample_dir, tmp_path):
    """The acceptance run: ONNX, OpenVINO, LiteRT and ExecuTorch files in fp32 and int8, against each other and the
    reference; with the damaged INT8 file the run fails, and the block comparison names blocks.3."""
    files = [export(target, precision, tmp_path, sample_dir) for target in ("onnxruntime", "openvino", "litert",
                                                                            "executorch")
             for precision in ("fp32", "int8")]
    # OpenVINO's INT8 kernels on x86 CPUs without VNNI saturate their int16 sums: measured cosine 0.983-0.986
    # against the other INT8 files of the same plan on an AMD EPYC (Zen 3), 0.99 being the default bound.
    loose = ["--tolerance", "int8_vs_int8:cosine=0.98"]
    assert _parity(files, "--reference", TAG, "--data", str(subject.val), "--limit", "16", *loose) == 0
    damaged = damage(files[1], tmp_path / "damaged" / "t2t_vit_7_int8.onnx")
    code = _parity(files + [damaged], "--reference", TAG, "--data", str(subject.val), "--limit", "16", *loose,
                   "--blocks", "--block-images", "4", "--json", str(tmp_path / "p.json"))
    assert code == 1
    record = ParityRecord.read(tmp_path / "p.json")
    broken = [p for p in record.pairs if not p.passed]
    assert broken and all("damaged" in p.first + p.second for p in broken)
    exposed = [p for p in broken if not any(name.endswith(".pte") for name in (p.first, p.second))]
    assert exposed and all(p.first_divergent == "blocks.3" for p in exposed)
    runtimes = {f.runtime for f in record.files}
    assert runtimes == {"torch", "onnxruntime", "openvino", "litert", "executorch"}
    pte = next(f for f in record.files if f.name.endswith("t2t_vit_7.pte"))
    assert "output" in pte.blocks  # ExecuTorch says what it can read: the program's output only


# ---- the pieces, on synthetic inputs ------------------------------------------------------------------------------

def test_probe_tensors_take_the_last_tensor_a_block_hands_on():
    nodes = [("/blocks.0/attn/MatMul", "blocks.0.attn", ["x"], ["a"]),
             ("/blocks.0/Add", "blocks.0", ["x", "a"], ["r"]),
             ("/blocks.0/mlp/MatMul", "blocks.0.mlp", ["r"], ["m"]),
             ("/blocks.0/Add_1", "blocks.0", ["r", "m"], ["b0"]),
             ("q", None, ["b0"], ["b0_q"]), ("dq", None, ["b0_q"], ["b0_dq"]),  # a quantizer between blocks
             ("/blocks.1/Add", "blocks.1", ["b0_dq", "b0_dq"], ["b1"]),
             ("/norm/Norm", "norm", ["b1"], ["n"]), ("/Gather", "", ["n"], ["g"]),
             ("/head/Gemm", "head", ["g"], ["logits"])]
    probes = probe_tensors(nodes, "T2T-ViT", ["logits"], ["q", "dq"])
    assert probes == {"blocks.0": "b0", "blocks.1": "b1", "norm": "n", "head": "logits"}


def test_probe_of_splits_tokens_to_token_only_for_t2t_vit():
    assert probe_of("tokens_to_token.attention1.kqv", "T2T-ViT") == "tokens_to_token.attention1"
    assert probe_of("tokens_to_token", "T2T-ViT") == "tokens_to_token"
    assert probe_of("blocks.3.attn.qkv", "T2T-ViT") == "blocks.3"
    assert probe_of("features.7.conv.0.0", "MobileNet") == "features.7"
    assert probe_of("", "T2T-ViT") is None


def test_litert_scope_names_give_module_paths():
    root = "t2tedge.export.litert_export.ChannelsLast/t2tedge.models.t2t_vit.T2TViT_model"
    assert scope_path(f"{root}/t2tedge.models.t2t_vit.Block_3/t2tedge.models.t2t_vit.Attention_attn;7",
                      "T2T-ViT") == "blocks.3.attn"
    assert scope_path(f"{root};3", "T2T-ViT") == ""
    assert scope_path("serving_default_output_0_output", "T2T-ViT") is None
    assert scope_path("arith.constant32", "T2T-ViT") is None


def test_aligned_finds_the_one_layout_that_fits():
    nchw = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    nhwc = nchw.transpose(0, 2, 3, 1)
    assert np.array_equal(aligned(nchw, nhwc), nchw)
    square = np.zeros((1, 4, 4, 4), np.float32)
    assert aligned(square, square.copy()) is not None and aligned(nchw, nchw[:, :2]) is None


def test_pair_tolerances_and_overrides():
    assert pair_tolerance("fp32", "fp32") == "fp32" and pair_tolerance("int8", "int8") == "int8_vs_int8"
    assert pair_tolerance("fp32", "int8") == "int8" and pair_tolerance("fp16", "w8") == "w8"
    assert parse_tolerances("int8:cosine=0.97") == {"int8": {"cosine": 0.97}}
    every = parse_tolerances("top1_agreement=0.95")
    assert every["int8"]["top1_agreement"] == 0.95 and every["fp32"]["top1_agreement"] == 0.95


def test_model_form_keeps_working_beside_the_file_form(val_dir, tmp_path):
    assert main(["parity", "t2t_vit_7", "--checkpoint", "random", "--limit", "2", "--data", str(val_dir)]) == 0


def test_a_copy_is_a_fine_pair_and_one_file_named_twice_is_refused(shipped, subject, tmp_path):
    copy = tmp_path / "again" / "t2t_vit_7.onnx"
    copy.parent.mkdir()
    shutil.copy(shipped["onnx"], copy)
    data = ["--data", str(subject.val), "--limit", "2"]
    assert main(["parity", str(shipped["onnx"]), str(copy), *data]) == 0
    assert main(["parity", str(shipped["onnx"]), str(shipped["onnx"]), *data]) == 2


def test_the_files_that_travel_with_a_model_file_are_not_compared(shipped, subject):
    ir_folder = sorted(shipped["ir"].parent.iterdir())  # t2t_vit_7.xml and its t2t_vit_7.bin
    assert {p.suffix for p in ir_folder} == {".xml", ".bin"}
    assert main(["parity", *map(str, ir_folder), str(shipped["onnx"]), "--data", str(subject.val), "--limit", "2"]) == 0
