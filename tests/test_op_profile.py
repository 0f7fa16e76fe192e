"""Per-op profiles: ops mapped to model blocks, ExecuTorch's events matched to the exported ops, the record and its
views. Real artifacts are profiled in the runtime test files (test_profile, test_openvino, test_executorch)."""

from __future__ import annotations

import json

import pytest

from conftest import assert_matches_schema
from t2tedge.cli import main
from t2tedge.harness.latency import machine_info
from t2tedge.harness.op_profile import claimed_share, compare_blocks, rollup
from t2tedge.harness.op_profile_views import render_compare_markdown, render_markdown
from t2tedge.op_blocks import block_of, graph_module_paths, module_path
from t2tedge.results import LatencyStats, OpProfileRecord, OpTime, ResultFormatError
from t2tedge.runtimes.executorch import _xnnpack_precision, match_events


def test_module_paths_and_blocks_of_both_families():
    assert module_path("/features/features.1/conv/conv.0/conv.0.0/Conv") == "features.1.conv.0.0"
    assert module_path("/blocks.0/mlp/fc1/MatMul") == "blocks.0.mlp.fc1"
    assert module_path("SkipLayerNormalization") == ""
    assert block_of("blocks.3.attn.qkv", "T2T-ViT") == "blocks.3.attn"
    assert block_of("tokens_to_token.attention1.norm1", "T2T-ViT") == "tokens_to_token.attention1"
    assert block_of("head", "T2T-ViT") == "head"
    assert block_of("features.0.0", "MobileNetV2") == "features.0"  # the index joins once: features.0, then 0
    assert block_of("features.17.conv.1.0", "MobileNetV2") == "features.17"
    assert block_of("", "T2T-ViT") is None  # the class token and position embedding belong to no block


def test_nodes_a_graph_optimizer_made_take_their_neighbours_scope():
    nodes = [("/blocks.2/mlp/fc2/MatMul", module_path("/blocks.2/mlp/fc2/MatMul"), ["x"], ["/blocks.2/mlp/fc2/out"]),
             ("SkipLayerNormalization", "", ["/blocks.2/mlp/fc2/out", "r"], ["skip_out"]),
             ("MVN_7", "", ["skip_out"], ["mvn_out"]),
             ("gemm_reshape", "", ["weights"], ["/blocks.3/attn/qkv/MatMul_output_0"]),
             ("logits", "", ["/Gather", "head.weight"], ["logits"]),
             ("orphan", "", ["weights"], ["y"])]
    paths = graph_module_paths(nodes)
    assert paths["SkipLayerNormalization"] == "blocks.2.mlp.fc2"  # from the node that made its input
    assert paths["MVN_7"] == "blocks.2.mlp.fc2"  # through a chain of unnamed nodes
    assert paths["gemm_reshape"] == "blocks.3.attn.qkv"  # from its output tensor's scope
    assert paths["logits"] == "head"  # from the parameter it reads
    assert paths["orphan"] == ""


def test_executorch_events_are_matched_to_the_exported_ops():
    stamped = [["quantized_decomposed.dequantize_per_channel.default", ""],  # a weight: folded into its operator
               ["aten.convolution.default", "features.0.0"], ["aten.hardtanh.default", "features.0.2"],
               ["aten.convolution.default", "features.1.conv.0.0"],  # 1x1: XNNPACK runs it as Fully Connected
               ["aten.add.Tensor", "features.1"], ["aten.mul.Tensor", "blocks.0.norm1"],
               ["aten.linear.default", "head"]]
    events = ["Convert (NC) #1", "Convolution (NHWC, QC8) IGEMM #1", "Fully Connected (NC, QS8, QC8W) GEMM #1",
              "Convert (NC) #2", "Add (ND) #1", "Square (NC) #1", "Transpose (ND, X32) #1",
              "Fully Connected (NC, F32) GEMM #2"]
    assert match_events(events, stamped) == [
        "features.0.0",  # before the first matched event: the first match's path
        "features.0.0", "features.1.conv.0.0", "features.1.conv.0.0",  # a Convert takes the op before it
        "features.1", "features.1",  # Square has no Multiply to match: the op before
        "features.1", "head"]
    assert match_events(events, []) == [""] * len(events)  # a program exported without t2tedge.op_paths
    assert [_xnnpack_precision(e, "int8") for e in events[:3] + events[-4:]] == \
        ["convert", "int8", "int8", "unknown", "unknown", "fp32", "fp32"]  # Add (ND), Square (NC): no datatype
    assert _xnnpack_precision("Add (ND) #1", "fp32") == "fp32"


def _record(ops: list[OpTime], **fields) -> OpProfileRecord:
    total = sum(op.ms for op in ops)
    latency = LatencyStats(min_ms=1, p50_ms=1.2, p90_ms=1.3, p99_ms=1.4, mean_ms=1.2, runs=5, warmup=1)
    values = dict(version="0", machine=machine_info(), model="t2t_vit_7", family="T2T-ViT", runtime="onnxruntime",
                  runtime_version="1", precision="fp32", artifact="m.onnx", artifact_bytes=10, threads=2, load_ms=5,
                  first_run_ms=2, latency_b1=latency, rss_before_load_mb=100, load_peak_rss_mb=120, peak_rss_mb=130,
                  op_timing="measured", runs=5, profiler="p", wall_ms=total * 1.1, op_sum_ms=total, ops=ops,
                  blocks=rollup(ops, lambda op: op.block, total), op_types=rollup(ops, lambda op: op.op_type, total),
                  precisions=rollup(ops, lambda op: op.precision, total))
    return OpProfileRecord(**{**values, **fields})


def test_record_rollups_views_and_comparison(tmp_path, capsys):
    fp32 = _record([OpTime("a", "MatMul", "blocks.0.attn", "fp32", 3.0), OpTime("b", "Add", "blocks.0.mlp", "fp32", 1.0),
                    OpTime("c", "Concat", None, "fp32", 0.1)])
    int8 = _record([OpTime("a", "MatMulIntegerToFloat", "blocks.0.attn", "int8", 1.0),
                    OpTime("q", "QuantizeLinear", "blocks.0.attn", "convert", 0.5),
                    OpTime("b", "Add", "blocks.0.mlp", "fp32", 1.0)], precision="int8")
    assert [(row.name, row.ms, row.ops) for row in fp32.blocks] == [("blocks.0.attn", 3.0, 1), ("blocks.0.mlp", 1.0, 1)]
    assert claimed_share(fp32) == pytest.approx(4.0 / 4.1) and claimed_share(int8) == 1.0
    assert compare_blocks(fp32, int8) == [("blocks.0.attn", 3.0, 1.5), ("blocks.0.mlp", 1.0, 1.0),
                                          ("(no block)", 0.1, None)]
    data = json.loads(fp32.to_json())
    assert data["schema"] == "t2tedge.op-profile/1"
    assert_matches_schema(data, OpProfileRecord)
    assert OpProfileRecord.from_dict(data) == fp32
    with pytest.raises(ResultFormatError, match="ops"):
        OpProfileRecord.from_dict({**data, "ops": [{"name": "a"}]})
    assert "| c | Concat | 0.100 |" in render_markdown(fp32)  # the op no block claims is listed
    assert "| blocks.0.attn | 3.000 | 1.500 | 0.50x |" in render_compare_markdown(fp32, int8)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(fp32.to_json())
    b.write_text(int8.to_json())
    assert main(["profile", "--compare", str(a), str(b), "--out", str(tmp_path / "cmp.md")]) == 0
    assert "0.50x" in (tmp_path / "cmp.md").read_text()
    pytest.importorskip("matplotlib")
    assert (tmp_path / "cmp.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_and_ops_refuse_what_does_not_apply(tmp_path, capsys):
    record = tmp_path / "a.json"
    record.write_text(_record([OpTime("a", "MatMul", "head", "fp32", 1.0)]).to_json())
    (tmp_path / "m.engine").write_bytes(b"engine")
    for argv, message in (
            (["profile", "--compare", str(record), str(tmp_path / "missing.json")], "cannot read"),
            (["profile", str(record), "--compare", str(record), str(record)], "takes no artifact"),
            (["profile"], "name an artifact"),
            (["profile", str(tmp_path / "m.onnx"), "--ops", "--data", str(tmp_path)], "accuracy"),
            (["profile", str(tmp_path / "m.engine"), "--ops"], "tensorrt")):
        assert main(argv) != 0, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err.lower(), (argv, err)
