"""T2T-ViT equals the official forward; the export form equals the reference form; fp16 safety."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import max_abs, real_images, save_official_checkpoint, trained_like_state_dict
from reference_t2t import official_forward
from t2tedge.models import create_model, get_spec, set_export_form
from t2tedge.models.t2t_vit import SoftSplit, TokenPerformer

HEADS = {"t2t_vit_7": 4, "t2t_vit_12": 4, "t2t_vit_t_14": 6}


@pytest.fixture(scope="module")
def images(val_dir):
    return real_images(val_dir, 4, get_spec("t2t_vit_7").preprocess)


@pytest.mark.parametrize("name", ["t2t_vit_7", "t2t_vit_12", "t2t_vit_t_14"])
def test_matches_official_forward_from_release_checkpoint(name, images, tmp_path):
    state = trained_like_state_dict(name, seed=3)
    ckpt = save_official_checkpoint(state, tmp_path / f"{name}.pth.tar", prefix="module.")
    model = create_model(name, checkpoint=ckpt)
    with torch.no_grad():
        ours = model(images)
        theirs = official_forward(state, images, HEADS[name], "transformer" if "_t_" in name else "performer")
    assert theirs.std() > 0.1, "logits too flat for the comparison to mean anything"
    assert max_abs(ours, theirs) <= 1e-5


@pytest.mark.parametrize("name", ["t2t_vit_7", "t2t_vit_12"])
def test_export_form_equals_reference_form(name, images):
    model = create_model(name)
    model.load_state_dict(trained_like_state_dict(name, seed=5))
    with torch.no_grad():
        reference = model(images)
        exported = set_export_form(model, True)(images)
    assert max_abs(reference, exported) <= 1e-5
    assert reference.std() > 0.1


def test_soft_split_conv_equals_unfold_channel_order():
    split = SoftSplit(channels=5, kernel_size=3, stride=2, padding=1)
    x = torch.randn(2, 5, 14, 14)
    unfolded = split(x)
    split.export_form = True
    assert torch.equal(split(x), unfolded)  # one-hot kernels: exact copies, same c*k*k + i*k + j order


def _overflowing_performer() -> TokenPerformer:
    """A Performer whose q/k land on a random feature direction: w.x - |x|^2/2 = m/2 = 16, e^16 > fp16 max."""
    torch.manual_seed(0)
    performer = TokenPerformer(dim=147, in_dim=64).eval()
    with torch.no_grad():
        performer.kqv.weight.mul_(0.05)
        performer.kqv.bias.zero_()
        performer.kqv.bias[:64] = performer.w[0]  # k
        performer.kqv.bias[64:128] = performer.w[0]  # q
    return performer


def test_performer_fp16_export_form_is_finite_where_naive_overflows(images):
    performer = _overflowing_performer()
    tokens = SoftSplit(3, 7, 4, 2)(images)
    half = copy.deepcopy(performer).half()
    with torch.no_grad():
        fp32 = performer(tokens)
        naive16 = half(tokens.half())
        set_export_form(performer)
        set_export_form(half)
        safe16 = half(tokens.half())
        safe32 = performer(tokens)
    assert not torch.isfinite(naive16).all(), "the published form should overflow fp16 here"
    assert torch.isfinite(safe16).all()
    assert max_abs(safe32, fp32) <= 1e-5
    assert max_abs(safe16.float(), fp32) <= 0.05 * float(fp32.abs().max())


def test_whole_model_fp16_export_form_is_finite_on_real_images(images):
    model = create_model("t2t_vit_7", export_form=True)
    model.load_state_dict(trained_like_state_dict("t2t_vit_7", seed=7))
    with torch.no_grad():
        fp32 = model(images)
        fp16 = model.half()(images.half()).float()
    assert torch.isfinite(fp16).all()
    assert (fp16.argmax(1) == fp32.argmax(1)).float().mean() >= 0.75
