"""ONNX export: checker-clean, Einsum-free, stamped, deterministic, atomic, clear errors."""

from __future__ import annotations

import json
from collections import Counter

import onnx
import pytest

from t2tedge.cli import main
from t2tedge.errors import T2TEdgeError
from t2tedge.export import OnnxExportOptions, export_onnx, read_metadata

TABLE4 = ["t2t_vit_7", "t2t_vit_12", "mobilenet_v1_100", "mobilenet_v2_100", "mobilenet_v2_140"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    return {name: export_onnx(name, None, out_dir=out) for name in TABLE4}


@pytest.mark.parametrize("name", TABLE4)
def test_graph_is_clean(exported, name):
    proto = onnx.load(exported[name])
    onnx.checker.check_model(proto, full_check=True)
    ops = Counter(node.op_type for node in proto.graph.node)
    assert not {"Einsum", "Im2Col", "Col2Im", "Dropout", "Identity"} & set(ops), ops
    if name.startswith("t2t"):
        assert ops["Conv"] == 3  # the three soft splits
        # Token Linears stay 3-D MatMul + Add (ORT's Gemm adds its bias on one thread); only the head is a Gemm.
        assert ops["Gemm"] == 1 and ops["MatMul"] >= 30, ops
        assert ops.get("Gather", 0) <= 1  # only the class-token pick: no Gather-based im2col or head indexing
    assert [i.name for i in proto.graph.input] == ["image"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert proto.opset_import[0].version == 17
    assert all(vi.type.tensor_type.HasField("shape") for vi in proto.graph.value_info)


def test_metadata(exported):
    meta = read_metadata(exported["mobilenet_v2_100"])
    assert meta["t2tedge.model"] == "mobilenet_v2_100"
    assert json.loads(meta["t2tedge.preprocess"])["mean"] == [0.5, 0.5, 0.5]
    assert meta["t2tedge.class_order"].split(",")[:2] == ["n01440764", "n01443537"]
    assert meta["t2tedge.weights"].startswith("untrained")
    assert meta["t2tedge.opset"] == "17" and meta["t2tedge.version"]
    assert meta["t2tedge.simplifier"] in ("onnxsim", "onnxslim")


def test_checkpoint_sha256_is_recorded(t2t7_checkpoint, tmp_path):
    from t2tedge.fileio import sha256_file

    path = export_onnx("t2t_vit_7", t2t7_checkpoint, out_dir=tmp_path)
    assert read_metadata(path)["t2tedge.weights"] == f"sha256:{sha256_file(t2t7_checkpoint)}"


def test_reexport_is_byte_identical(exported, tmp_path):
    again = export_onnx("t2t_vit_7", None, out_dir=tmp_path)
    assert again.read_bytes() == exported["t2t_vit_7"].read_bytes()


def test_dynamic_batch_graph(tmp_path):
    options = OnnxExportOptions(dynamic_batch=True)
    path = export_onnx("t2t_vit_7", None, out_dir=tmp_path, options=options)
    assert path.name == "t2t_vit_7_dynbatch.onnx"
    proto = onnx.load(path)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert read_metadata(proto)["t2tedge.simplifier"] == "onnxslim"  # fewer nodes than onnxsim's Gemm rewrite
    again = export_onnx("t2t_vit_7", None, out_dir=tmp_path / "again", options=options)
    assert again.read_bytes() == path.read_bytes()


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
    import t2tedge.export.onnx_export as onnx_export

    def broken_checker(*args, **kwargs):
        raise onnx.checker.ValidationError("simulated failure after the graph was built")

    monkeypatch.setattr(onnx_export.onnx.checker, "check_model", broken_checker)
    with pytest.raises(onnx.checker.ValidationError):
        export_onnx("mobilenet_v2_100", None, out_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    import t2tedge.export.onnx_export as onnx_export

    original = onnx.ModelProto.SerializeToString

    class Interrupted(Exception):
        pass

    def interrupted(self, **kwargs):
        original(self, **kwargs)
        raise Interrupted

    monkeypatch.setattr(onnx_export.onnx.ModelProto, "SerializeToString", interrupted)
    with pytest.raises(Interrupted):
        export_onnx("mobilenet_v2_100", None, out_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv,message,code", [
    (["export", "onnx", "resnet50"], "unknown model 'resnet50'", 2),
    (["export", "onnx", "t2t_vit_7", "--opset", "9"], "--opset: must be from 13 to 21, not 9", 2),
    (["export", "onnx", "t2t_vit_7", "--opset", "99"], "--opset: must be from 13 to 21, not 99", 2),
])
def test_cli_errors(argv, message, code, tmp_path, capsys):
    try:
        returned = main(argv + ["--out", str(tmp_path)])
    except SystemExit as exc:  # usage errors, from the parser
        returned = exc.code
    assert returned == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("t2tedge: error:") and message in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_bad_options_raise_before_any_work():
    with pytest.raises(T2TEdgeError, match="opset 12"):
        OnnxExportOptions(opset=12)
    with pytest.raises(T2TEdgeError, match="batch must be >= 1"):
        OnnxExportOptions(batch=0)


def test_artifact_permissions_follow_umask(exported):
    import os

    umask = os.umask(0)
    os.umask(umask)
    assert exported["t2t_vit_7"].stat().st_mode & 0o777 == 0o666 & ~umask
