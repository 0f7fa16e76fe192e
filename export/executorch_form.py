"""T2T-ViT in a form that ExecuTorch's XNNPACK partitioner takes whole: one delegate call for the network.

The export form that serves ONNX lowers to 52 delegate calls with 220 nodes left to ExecuTorch's portable kernels,
because the partitioner (executorch 1.5) has no rule for these ops, or only a narrow one:
- `native_layer_norm`: mean and variance become matrix products with a constant 1/C row, which XNNPACK runs as
  fully connected layers;
- `split_with_sizes` (q, k, v): slices;
- `expand` (what a 3-D/4-D `matmul` broadcasts through): attention as `bmm` over (batch x heads) and linears over
  2-D views; the class token is concatenated as the (1, 1, C) parameter it is, at batch 1;
- `sum`: products with a constant row of ones;
- `amax` (the FP16-safe Performer's shifts): `max.dim` over the last axis of a 4-D view, which XNNPACK runs as max
  pooling;
- the `select` of the class token: a slice;
- the last soft split and its projection, which the export form fuses into a convolution whose kernel is reshaped
  from the projection's weight at run time (not a constant, so left outside): the one-hot soft split and the
  nn.Linear, as published, which also lets `w8` quantize the projection.

The arithmetic is the export form's (the same logits as the reference form within 1e-6 in fp32). Parameters are
shared with the model given, which is not changed. Programs take a static batch of 1; runtimes run larger batches
one sample at a time.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from t2tedge.models import t2t_vit


def _linear_2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`x @ weight.T (+ bias)` over the last axis, through a 2-D view (a 3-D matmul would broadcast via expand)."""
    out = F.linear(x.reshape(-1, x.shape[-1]), weight, bias)
    return out.reshape(*x.shape[:-1], weight.shape[0])


def _module_2d(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`linear(x)` through a 2-D view; the call stays a call of the nn.Linear, so quantizers that match modules
    still find it."""
    return linear(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], linear.out_features)


def _slices(x: torch.Tensor, size: int, count: int) -> list[torch.Tensor]:
    return [x[..., i * size:(i + 1) * size] for i in range(count)]


def _max_last(x: torch.Tensor) -> torch.Tensor:
    """max over the last axis, keepdim, as max.dim(3) of a 4-D view (XNNPACK's max pooling)."""
    rows = x.reshape(1, 1, -1, x.shape[-1]).max(dim=3, keepdim=True)[0]
    return rows.reshape(*x.shape[:-1], 1)


class MatmulLayerNorm(nn.Module):
    """nn.LayerNorm over the last axis with mean and variance as products with a constant 1/C row."""

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        channels = norm.normalized_shape[-1]
        self.weight, self.bias, self.eps = norm.weight, norm.bias, norm.eps
        self.register_buffer("mean_row", torch.full((1, channels), 1.0 / channels), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - _linear_2d(x, self.mean_row)
        variance = _linear_2d(centred * centred, self.mean_row)
        return centred * torch.rsqrt(variance + self.eps) * self.weight + self.bias


class DelegableAttention(nn.Module):
    """`t2t_vit.Attention` with slices for the q/k/v split and bmm over (batch x heads)."""

    def __init__(self, attention: t2t_vit.Attention) -> None:
        super().__init__()
        self.qkv, self.proj = attention.qkv, attention.proj
        self.num_heads, self.head_dim, self.scale = attention.num_heads, attention.head_dim, attention.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        heads, head_dim = self.num_heads, self.head_dim
        q, k, v = _slices(_module_2d(self.qkv, x), dim, 3)
        q = q.reshape(batch, tokens, heads, head_dim).transpose(1, 2).reshape(batch * heads, tokens, head_dim)
        k_t = k.reshape(batch, tokens, heads, head_dim).permute(0, 2, 3, 1).reshape(batch * heads, head_dim, tokens)
        v = v.reshape(batch, tokens, heads, head_dim).transpose(1, 2).reshape(batch * heads, tokens, head_dim)
        attn = (torch.bmm(q, k_t) * self.scale).softmax(dim=-1)
        x = torch.bmm(attn, v).reshape(batch, heads, tokens, head_dim).transpose(1, 2).reshape(batch, tokens, dim)
        return _module_2d(self.proj, x)


class DelegableTokenPerformer(nn.Module):
    """`t2t_vit.TokenPerformer` with its FP16-safe Performer in ops XNNPACK has (see the module docstring)."""

    def __init__(self, performer: t2t_vit.TokenPerformer, tokens: int) -> None:
        super().__init__()
        self.kqv, self.proj, self.norm1, self.norm2, self.mlp = (performer.kqv, performer.proj, performer.norm1,
                                                                 performer.norm2, performer.mlp)
        self.emb, self.m, self.w = performer.emb, performer.m, performer.w
        self.epsilon = performer.attention.epsilon
        self.register_buffer("ones_emb", torch.ones(1, self.emb), persistent=False)
        self.register_buffer("ones_tokens", torch.ones(1, tokens), persistent=False)

    def _attention(self, k: torch.Tensor, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        log_q = _linear_2d(q, self.w) - 0.5 * _linear_2d(q * q, self.ones_emb)
        log_k = _linear_2d(k, self.w) - 0.5 * _linear_2d(k * k, self.ones_emb)
        shift_q = _max_last(log_q)  # (B, T, 1)
        shift_k = _max_last(log_k.reshape(log_k.shape[0], 1, -1))  # (B, 1, 1)
        inv_sqrt_m = 1.0 / math.sqrt(self.m)
        qp = torch.exp(log_q - shift_q) * inv_sqrt_m
        kp = torch.exp(log_k - shift_k) * inv_sqrt_m
        kp_t = kp.transpose(1, 2)  # (B, m, T)
        numerator = torch.bmm(qp, torch.bmm(kp_t, v))
        normaliser = torch.bmm(qp, _linear_2d(kp_t, self.ones_tokens))  # kp summed over tokens: (B, m, 1)
        scaled_eps = torch.exp(torch.clamp(math.log(self.epsilon) - shift_q - shift_k, max=10.0))
        return numerator / (normaliser + scaled_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, q, v = _slices(_module_2d(self.kqv, self.norm1(x)), self.emb, 3)
        y = v + _module_2d(self.proj, self._attention(k, q, v))
        return y + self.mlp(self.norm2(y))


class DelegableTokenAttention(nn.Module):
    """`t2t_vit.TokenAttention` (the Transformer-T2T variant) with slices and bmm."""

    def __init__(self, attention: t2t_vit.TokenAttention) -> None:
        super().__init__()
        self.qkv, self.proj, self.in_dim, self.scale = attention.qkv, attention.proj, attention.in_dim, attention.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = _slices(_module_2d(self.qkv, x), self.in_dim, 3)
        attn = torch.bmm(q * self.scale, k.transpose(1, 2)).softmax(dim=-1)
        return v + _module_2d(self.proj, torch.bmm(attn, v))


class DelegableT2TModule(nn.Module):
    def __init__(self, module: t2t_vit.T2TModule) -> None:
        super().__init__()
        self.soft_split0, self.soft_split1, self.grid1, self.grid2 = (module.soft_split0, module.soft_split1,
                                                                      module.grid1, module.grid2)
        self.attention1 = _delegable_token_block(module.attention1, module.grid1 ** 2)
        self.attention2 = _delegable_token_block(module.attention2, module.grid2 ** 2)
        self.soft_split2, self.project = module.soft_split2, module.project

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention1(self.soft_split0(x))
        x = self.attention2(self.soft_split1(t2t_vit.T2TModule._tokens_to_map(x, self.grid1)))
        x = self.soft_split2(t2t_vit.T2TModule._tokens_to_map(x, self.grid2))
        return _module_2d(self.project, x)


def _delegable_token_block(block: nn.Module, tokens: int) -> nn.Module:
    if isinstance(block, t2t_vit.TokenPerformer):
        return DelegableTokenPerformer(block, tokens)
    block.attn = DelegableTokenAttention(block.attn)
    return block


class DelegableT2TViT(nn.Module):
    """The whole network at batch 1 (the class token is concatenated as it is stored)."""

    def __init__(self, model: t2t_vit.T2TViT) -> None:
        super().__init__()
        self.tokens_to_token = DelegableT2TModule(model.tokens_to_token)
        self.cls_token, self.pos_embed, self.blocks, self.norm, self.head = (model.cls_token, model.pos_embed,
                                                                             model.blocks, model.norm, model.head)
        for block in self.blocks:
            block.attn = DelegableAttention(block.attn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat((self.cls_token, self.tokens_to_token(x)), dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        features = self.norm(x)[:, :1].reshape(1, -1)
        return _module_2d(self.head, features) if isinstance(self.head, nn.Linear) else self.head(features)


def delegable_form(model: nn.Module) -> nn.Module:
    """The network to lower to ExecuTorch: T2T-ViT rewritten as above (on a copy: `model` is left as it was, in
    whichever form), any other model as it is."""
    if not isinstance(model, t2t_vit.T2TViT):
        return model
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.LayerNorm):
                setattr(parent, name, MatmulLayerNorm(child))
    t2t_vit.set_export_form(model, True)  # the soft splits as one-hot convolutions
    return DelegableT2TViT(model).eval()
