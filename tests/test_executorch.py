"""ExecuTorch: `.pte` programs that XNNPACK takes whole (T2T-ViT included), parity with torch on real images, int8
programs that keep predictions, the Core ML delegate's program, and the `executorch` runtime in profile/bundle.
Fidelity and latency targets are measured by benchmarks/bench_executorch.py; these are floors on small subsets."""

from __future__ import annotations

import importlib.util
import json
import tarfile

import numpy as np
import pytest
import torch

from t2tedge.cli import main
from t2tedge.errors import T2TEdgeError
from t2tedge.harness.comparison import compare
from t2tedge.harness.parity import parity_images
from t2tedge.models import create_model

pytest.importorskip("executorch", reason="the executorch extra is not installed (make setup installs it)")

from t2tedge.export.executorch_form import delegable_form  # noqa: E402
from t2tedge.targets.executorch import ExecuTorchSettings, file_name, write_program  # noqa: E402
from t2tedge.runtimes.executorch import ExecuTorch, program_instructions  # noqa: E402
from t2tedge.sidecar import read_sidecar, sidecar_path  # noqa: E402

M = "mobilenet_v2_100"


@pytest.mark.parametrize("name", ["t2t_vit_7", "t2t_vit_t_14"])
def test_delegable_form_keeps_the_reference_logits(name):
    """Performer and Transformer-T2T variants; the model handed in keeps its own form and modules."""
    model = create_model(name)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        reference = model(images)
        form = delegable_form(model)
        rewritten = torch.cat([form(images[i:i + 1]) for i in range(2)])
    assert (rewritten - reference).abs().max().item() <= 1e-5
    assert type(model.blocks[0].norm1) is torch.nn.LayerNorm and not model.tokens_to_token.soft_split0.export_form


class _Programs(dict):
    """The trained T2T-ViT-7 as ExecuTorch programs, each lowered the first time a test asks for it (45 s each)."""

    def __init__(self, subject, out):
        super().__init__()
        self.subject, self.out = subject, out

    def __missing__(self, precision):
        self[precision] = write_program("t2t_vit_7", self.subject.checkpoint,
                                        self.out / file_name("t2t_vit_7", precision, "xnnpack"),
                                        ExecuTorchSettings(precision=precision, progress=False),
                                        num_classes=self.subject.num_classes)[0]
        return self[precision]


@pytest.fixture(scope="module")
def t2t_programs(subject, tmp_path_factory):
    return _Programs(subject, tmp_path_factory.mktemp("executorch_t2t"))


@pytest.fixture(scope="module")
def subject_images(subject):
    return parity_images("t2t_vit_7", subject.val, 64, num_classes=subject.num_classes)[0]


def test_t2t_program_is_one_xnnpack_call_and_matches_torch(t2t_programs, subject, subject_images):
    path = t2t_programs["fp32"]
    delegation = read_sidecar(path)["t2tedge.delegation"]
    assert delegation["delegate_calls"] == 1 and delegation["ops_outside_delegate"] == {}
    assert delegation["delegated_ops"]["aten.bmm.default"] == 20 and "aten.native_layer_norm.default" not in \
        delegation["delegated_ops"]
    runtime = ExecuTorch.load(path, threads=2)
    details = runtime.describe().details
    assert details["delegate_calls"] == 1 and details["ops_outside_delegate"] == 0, details  # read from the file
    images = subject_images[:16]
    with torch.no_grad():
        reference = create_model("t2t_vit_7", checkpoint=subject.checkpoint, num_classes=10)(torch.from_numpy(images))
    result = compare(reference.numpy(), runtime.run(images), "fp32")
    assert result["passed"] and result["max_abs"] <= 1e-4 and result["top1_agreement"] == 1.0, result


def test_a_non_contiguous_batch_is_read_as_what_it_shows(t2t_programs, subject_images):
    """ExecuTorch's Python runtime reads a strided tensor as if it were contiguous; the adapter must not let it."""
    runtime = ExecuTorch.load(t2t_programs["fp32"], threads=2)
    images = subject_images[:2]
    channels_last = np.ascontiguousarray(images.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)  # same values, strided
    assert not channels_last.flags["C_CONTIGUOUS"]
    assert np.array_equal(runtime.run(channels_last), runtime.run(images))


@pytest.mark.slow  # a second T2T lowering; w8 T2T-ViT is checked on LiteRT in the fast suite
def test_w8_keeps_the_trained_subjects_predictions(t2t_programs, subject_images):
    report = read_sidecar(t2t_programs["w8"])["t2tedge.quantization"]
    assert report["int8_dynamic_ops"] == {"linear": 38} and report["int8_ops"] == {}
    assert {"softmax", "gelu", "bmm", "exp"} <= set(report["float_ops"])
    fp32 = ExecuTorch.load(t2t_programs["fp32"], threads=2).run(subject_images)
    w8 = ExecuTorch.load(t2t_programs["w8"], threads=2)
    assert w8.describe().precision == "w8" and w8.describe().details["ops_outside_delegate"] == 0
    result = compare(fp32, w8.run(subject_images), "int8")
    assert result["top1_agreement"] >= 0.98 and result["cosine"] >= 0.99, result  # bench: 99.9%, 43 dB


@pytest.fixture(scope="module")
def mnv2_int8(tmp_path_factory, weights_dir, sample_dir):
    out = tmp_path_factory.mktemp("executorch_mnv2")
    assert main(["export", "executorch", M, "--precision", "int8", "--calib", str(sample_dir), "--num-calib", "16",
                 "--out", str(out)]) == 0
    return out / f"{M}_int8.pte"


@pytest.mark.slow  # ExecuTorch int8 of MobileNetV2 is built and compared in the fast suite by test_quantization_plan's parity
def test_static_int8_through_the_cli_keeps_predictions(mnv2_int8, weights_dir, val_dir):
    meta = read_sidecar(mnv2_int8)
    assert sorted(p.name for p in mnv2_int8.parent.iterdir()) == [mnv2_int8.name, sidecar_path(mnv2_int8).name]
    assert meta["t2tedge.model"] == M and meta["t2tedge.precision"] == "int8" and meta["t2tedge.delegate"] == "xnnpack"
    assert meta["t2tedge.input_shape"] == [1, 3, 224, 224] and len(meta["t2tedge.class_order"]) == 1000
    report = meta["t2tedge.quantization"]
    assert report["int8_ops"]["conv2d"] == 52 and report["int8_ops"]["hardtanh_"] == 35  # ReLU6 fused, int8
    assert report["float_ops"].get("hardtanh_", 0) == 0 and report["plan"]["calibration"]["images"] == 16
    runtime = ExecuTorch.load(mnv2_int8, threads=2)
    assert runtime.describe().details["delegate_calls"] == 1 and runtime.describe().details["ops_outside_delegate"] == 0
    images, _ = parity_images(M, val_dir, 32)
    with torch.no_grad():
        reference = create_model(M, checkpoint=weights_dir / "mobilenet_v2_1.0_imagenet_tfsame.pth")(
            torch.from_numpy(images)).numpy()
    logits = runtime.run(images)
    assert compare(reference, logits, "int8")["top1_agreement"] >= 0.85  # bench, 256 images: 98.4%
    assert np.abs(logits[:3] - np.concatenate([runtime.run(images[i:i + 1]) for i in range(3)])).max() == 0


def test_profile_and_bundle_take_pte(t2t_programs, subject, tmp_path):
    program = t2t_programs["fp32"]
    out = tmp_path / "cell.json"
    assert main(["profile", str(program), "--runs", "3", "--warmup", "1", "--data", str(subject.val), "--limit", "8",
                 "--out", str(out)]) == 0
    cell = json.loads(out.read_text())["cell"]
    assert cell["runtime"] == "executorch" and cell["model"] == "t2t_vit_7" and cell["precision"] == "fp32"
    assert cell["images"] == 8 and cell["top1"] >= 0.5
    assert cell["runtime_info"]["details"]["delegate_calls"] == 1
    bundle = tmp_path / "b.tar.gz"
    assert main(["export", "bundle", str(program), "--out", str(bundle)]) == 0
    with tarfile.open(bundle) as tar:
        names = tar.getnames()
    assert f"artifacts/{program.name}" in names and f"artifacts/{program.name}.json" in names


def test_coreml_delegate_program_holds_one_coreml_blob(tmp_path):
    pytest.importorskip("coremltools", reason="the coreml extra is not installed")
    path, meta = write_program(M, None, tmp_path / file_name(M, "fp32", "coreml"),
                               ExecuTorchSettings(delegate="coreml", progress=False))
    assert path.name == f"{M}_coreml.pte" and meta["t2tedge.delegation"]["backends"] == {"CoreMLBackend": 1}
    assert program_instructions(path) == {"delegate_calls": {"CoreMLBackend": 1}, "kernels_outside_delegate": {}}
    # Core ML programs run on Apple devices; here loading says so instead of failing inside the runtime.
    with pytest.raises(T2TEdgeError, match="CoreMLBackend, which this ExecuTorch runtime does not have"):
        ExecuTorch.load(path)


def test_ops_left_outside_the_delegate_are_named_unless_allowed():
    """nn.LayerNorm as it is (what T2T-ViT's export form holds) is an op XNNPACK's partitioner does not take."""
    from t2tedge.export.executorch_export import export_program, lower_program

    program = export_program(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8)).eval(),
                             torch.zeros(1, 4, 8))
    with pytest.raises(T2TEdgeError, match=r"xnnpack did not take every op \(.*1 outside: aten\.native_layer_norm"):
        lower_program(program, "xnnpack")
    buffer, report, _ = lower_program(program, "xnnpack", allow_outside=True)
    assert buffer[4:6] == b"ET" and report["ops_outside_delegate"] == {"aten.native_layer_norm.default": 1}


def test_static_int8_runs_tf_same_pads_inside_the_int8_convolutions(tmp_path):
    """XNNPACK's own profile of a TF-padded int8 program: no pad in fp32 and no conversions but the program's input
    and output (quantized on their own, executorch 1.5 runs each pad in fp32 between two conversions)."""
    from executorch.devtools import Inspector
    from executorch.extension.pybindings.portable_lib import _load_for_executorch

    from t2tedge.export.executorch_export import export_program, lower_program
    from t2tedge.models.mobilenet import Conv2dSame
    from t2tedge.quantize.executorch_ptq import quantize_static

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.ReLU6(), Conv2dSame(8, 8, 3, 2, groups=8),
                              torch.nn.ReLU6(), Conv2dSame(8, 8, 3, 1, groups=8), torch.nn.ReLU6(),
                              torch.nn.Conv2d(8, 4, 1)).eval()
    images = np.random.default_rng(0).uniform(-1, 1, (8, 3, 16, 16)).astype(np.float32)
    program = quantize_static(export_program(net, torch.from_numpy(images[:1])), "MobileNet", images, progress=False)
    pads = [n for n in program.graph.nodes if n.op == "call_function" and "pad" in str(n.target)]
    assert len(pads) == 2 and all(str(next(iter(p.users)).target).startswith("aten.conv2d") for p in pads)
    path = tmp_path / "padded.pte"
    path.write_bytes(lower_program(program, "xnnpack")[0])
    module = _load_for_executorch(str(path), enable_etdump=True)
    module.forward([torch.from_numpy(images[:1])])
    module.write_etdump_result_to_file(str(tmp_path / "run.etdp"))
    events = Inspector(etdump_path=str(tmp_path / "run.etdp")).to_dataframe().event_name.tolist()
    assert sum("QC8" in e for e in events) == 4  # int8 convolutions (1x1 ones as Fully Connected)
    assert not [e for e in events if "Constant Pad" in e and "X32" in e]
    assert sum(e.startswith("Convert") for e in events) == 2


def test_missing_extra_is_one_line_before_any_work(monkeypatch, tmp_path, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "executorch" else real(name, *a))
    assert main(["export", "executorch", M, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "t2tedge: error: executorch is not installed (pip install 't2t-edge[executorch]')"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_runtime_refuses_other_files(tmp_path):
    with pytest.raises(T2TEdgeError, match="ExecuTorch runs .pte programs"):
        ExecuTorch.load(tmp_path / "model.onnx")
    with pytest.raises(T2TEdgeError, match="program file not found"):
        ExecuTorch.load(tmp_path / "missing.pte")


def test_ops_profile_matches_xnnpack_events_to_t2t_vit_blocks(t2t_programs):
    from conftest import assert_op_trace
    from t2tedge.harness.op_profile import profile_ops

    record = profile_ops(t2t_programs["fp32"], runs=3, warmup=1, threads=2)
    assert record.profiler.startswith("ExecuTorch ETDump")
    assert_op_trace(record)
    blocks = {row.name for row in record.blocks}
    assert {"tokens_to_token.soft_split0", "tokens_to_token.attention1", "blocks.6.mlp", "head"} <= blocks, blocks
    # 20 bmm ops in the program: XNNPACK's batch matrix multiplies, matched to the attention blocks
    bmm = [op for op in record.ops if op.op_type == "Batch Matrix Multiply"]
    assert len(bmm) == 20 and all(op.block.endswith(("attn", "attention1", "attention2")) for op in bmm), \
        {op.block for op in bmm}


@pytest.mark.slow  # needs the int8 program above; int8 op profiles stay fast on OpenVINO and ONNX Runtime
def test_ops_profile_of_an_int8_program_names_int8_and_converts(mnv2_int8, tmp_path, capsys):
    from conftest import assert_op_trace
    from t2tedge.results import OpProfileRecord

    out = tmp_path / "ops.json"
    assert main(["profile", str(mnv2_int8), "--ops", "--runs", "3", "--warmup", "1", "--threads", "2",
                 "--out", str(out)]) == 0
    record = OpProfileRecord.read(out)
    assert_op_trace(record)
    precisions = {row.name: row.ops for row in record.precisions}
    assert precisions.get("int8", 0) > precisions.get("fp32", 0) and "convert" in precisions, precisions
    convolutions = [op for op in record.ops if op.op_type in ("Convolution", "Fully Connected")]
    assert len(convolutions) == 53 and len({op.block for op in convolutions}) == 20  # features.0-18, classifier
