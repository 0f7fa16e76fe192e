"""Checkpoint formats load strictly; every kind of bad checkpoint is a one-line error and exit != 0."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import save_official_checkpoint, trained_like_state_dict
from t2tedge.errors import CheckpointError
from t2tedge.models import create_model


@pytest.fixture(scope="module")
def state():
    return trained_like_state_dict("t2t_vit_7", seed=11)


@pytest.mark.parametrize("wrapper,prefix", [("state_dict_ema", ""), ("state_dict", "module."), ("model", ""),
                                            ("bare", ""), ("bare", "module.")])
def test_release_formats_load(state, tmp_path, wrapper, prefix):
    path = save_official_checkpoint(state, tmp_path / "ckpt.pth.tar", wrapper=wrapper, prefix=prefix)
    model = create_model("t2t_vit_7", checkpoint=path)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert torch.equal(model.tokens_to_token.attention1.w, state["tokens_to_token.attention1.w"])


def test_fp16_checkpoint_loads_into_fp32_model(state, tmp_path):
    path = save_official_checkpoint({k: v.half() for k, v in state.items()}, tmp_path / "half.pth")
    model = create_model("t2t_vit_7", checkpoint=path)
    assert model.head.weight.dtype == torch.float32


def _bad_checkpoints(state, tmp_path):
    good = save_official_checkpoint(state, tmp_path / "good.pth.tar")
    truncated = tmp_path / "truncated.pth.tar"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    renamed = dict(state)
    renamed["blocks.0.attn.qkv.kernel"] = renamed.pop("blocks.0.attn.qkv.weight")
    nan = dict(state)
    nan["blocks.3.mlp.fc1.weight"] = nan["blocks.3.mlp.fc1.weight"].clone()
    nan["blocks.3.mlp.fc1.weight"][0, 0] = float("nan")
    return {
        "truncated": (truncated, "is truncated or damaged"),
        "wrong_model": (save_official_checkpoint(trained_like_state_dict("t2t_vit_12"), tmp_path / "t12.pth"),
                        "unexpected keys: blocks.7"),
        "renamed_key": (save_official_checkpoint(renamed, tmp_path / "renamed.pth"), "missing keys: blocks.0.attn.qkv.weight"),
        "nan": (save_official_checkpoint(nan, tmp_path / "nan.pth"), "non-finite values (NaN/Inf) in blocks.3.mlp.fc1.weight"),
        "shape": (save_official_checkpoint(trained_like_state_dict("t2t_vit_7") | {"head.weight": torch.zeros(10, 256),
                                                                                    "head.bias": torch.zeros(10)},
                                           tmp_path / "shape.pth"), "shape mismatch"),
        "not_a_checkpoint": (tmp_path / "text.pth", "cannot read checkpoint"),
        "missing_file": (tmp_path / "absent.pth", "checkpoint not found"),
    }


@pytest.mark.parametrize("kind", ["truncated", "wrong_model", "renamed_key", "nan", "shape", "not_a_checkpoint",
                                  "missing_file"])
def test_bad_checkpoint_errors(state, tmp_path, kind):
    (tmp_path / "text.pth").write_text("this is not a checkpoint")
    path, message = _bad_checkpoints(state, tmp_path)[kind]
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
        create_model("t2t_vit_7", checkpoint=path)


@pytest.mark.parametrize("kind", ["truncated", "renamed_key", "nan"])
def test_bad_checkpoint_cli_one_line_nonzero_exit(state, tmp_path, kind):
    path, message = _bad_checkpoints(state, tmp_path)[kind]
    out = tmp_path / "onnx"
    proc = subprocess.run([sys.executable, "-m", "t2tedge.cli", "export", "onnx", "t2t_vit_7", "--checkpoint",
                           str(path), "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("t2tedge: error:") and message in lines[0]
    assert not out.exists() or not any(out.iterdir()), "no artifact may be left behind"


def test_fine_tuned_head_names_its_class_count_and_exports_with_num_classes(state, tmp_path, val_dir):
    ten = dict(state, **{"head.weight": state["head.weight"][:10], "head.bias": state["head.bias"][:10]})
    path = save_official_checkpoint(ten, tmp_path / "ten.pth")
    with pytest.raises(CheckpointError, match=r"a 10-class classifier: pass --num-classes"):
        create_model("t2t_vit_7", checkpoint=path)
    # Any other mismatch says nothing about classes.
    other = dict(state, **{"pos_embed": state["pos_embed"][:, :10]})
    with pytest.raises(CheckpointError) as raised:
        create_model("t2t_vit_7", checkpoint=save_official_checkpoint(other, tmp_path / "other.pth"))
    assert "num-classes" not in str(raised.value)
    out = tmp_path / "onnx"
    proc = subprocess.run([sys.executable, "-m", "t2tedge.cli", "export", "onnx", "t2t_vit_7", "--checkpoint",
                           str(path), "--num-classes", "10", "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    import onnx

    logits = onnx.load(out / "t2t_vit_7.onnx", load_external_data=False).graph.output[0]
    assert [d.dim_value for d in logits.type.tensor_type.shape.dim] == [1, 10]
    proc = subprocess.run([sys.executable, "-m", "t2tedge.cli", "parity", "t2t_vit_7", "--checkpoint", str(path),
                           "--num-classes", "10", "--data", str(val_dir), "--limit", "2"], capture_output=True, text=True)
    assert proc.returncode == 0 and "PASS" in proc.stdout, proc.stdout + proc.stderr
