"""Tokens-to-Token ViT (Yuan et al., 2021), state-dict compatible with the official release.

Every module has two numerically equivalent forms:
- reference form: nn.Unfold soft split and the Performer written with einsums, as published;
- export form (`set_export_form`): the soft split as a grouped Conv2d with one-hot kernels and the
  Performer as plain MatMuls with a max-shifted, FP16-safe kernel. This is what runtimes consume.
The switch changes no parameter: the one-hot kernels are non-persistent buffers.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def sinusoid_table(n_position: int, dim: int) -> torch.Tensor:
    """The fixed sinusoid position table (1, n_position, dim); checkpoints carry their own copy."""
    position = np.arange(n_position, dtype=np.float64)[:, None]
    exponent = 2 * (np.arange(dim) // 2) / dim
    angles = position / np.power(10000.0, exponent)[None, :]
    angles[:, 0::2] = np.sin(angles[:, 0::2])
    angles[:, 1::2] = np.cos(angles[:, 1::2])
    return torch.from_numpy(angles).float().unsqueeze(0)


class SoftSplit(nn.Module):
    """Overlapping patch extraction (B, C, H, W) -> (B, L, C*k*k), channel order c*k*k + i*k + j."""

    def __init__(self, channels: int, kernel_size: int, stride: int, padding: int) -> None:
        super().__init__()
        self.channels, self.kernel_size, self.stride, self.padding = channels, kernel_size, stride, padding
        self.export_form = False
        k = kernel_size
        one_hot = torch.zeros(channels * k * k, 1, k, k)
        for c in range(channels):
            for i in range(k):
                for j in range(k):
                    one_hot[c * k * k + i * k + j, 0, i, j] = 1.0
        # Not saved: official checkpoints have no such key, and strict loading must still pass.
        self.register_buffer("one_hot", one_hot, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.export_form:
            patches = F.conv2d(x, self.one_hot, stride=self.stride, padding=self.padding, groups=self.channels)
            return patches.flatten(2).transpose(1, 2)
        return F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride).transpose(1, 2)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class Mlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class PerformerAttention(nn.Module):
    """The Performer's linear attention over k, q, v with random features `w`. Holds no state (the features are
    the parent's saved parameter), so it changes no checkpoint key; being its own module lets quantizers leave
    exactly this math in float (its exponentials and normaliser do not fit 8 bits)."""

    epsilon = 1e-8

    def __init__(self, m: int) -> None:
        super().__init__()
        self.m = m
        self.export_form = False

    def _features_reference(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        half_sq_norm = (x * x).sum(dim=-1, keepdim=True).repeat(1, 1, self.m) / 2
        wtx = torch.einsum("bti,mi->btm", x, w)
        return torch.exp(wtx - half_sq_norm) / math.sqrt(self.m)

    def _attention_reference(self, k: torch.Tensor, q: torch.Tensor, v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        kp, qp = self._features_reference(k, w), self._features_reference(q, w)
        normaliser = torch.einsum("bti,bi->bt", qp, kp.sum(dim=1)).unsqueeze(dim=2)
        kptv = torch.einsum("bin,bim->bnm", v, kp)
        return torch.einsum("bti,bni->btn", qp, kptv) / (normaliser.repeat(1, 1, v.shape[-1]) + self.epsilon)

    @staticmethod
    def _log_features(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # log of the positive random feature, without the 1/sqrt(m) factor: w.x - |x|^2 / 2
        return torch.matmul(x, w.t()) - 0.5 * (x * x).sum(dim=-1, keepdim=True)

    def _attention_export(self, k: torch.Tensor, q: torch.Tensor, v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # exp(w.x - |x|^2/2) reaches e^(m/2) and overflows fp16. Shifting q's exponent by a per-token max and
        # k's by a per-sample max scales numerator and denominator by the same exp(-(cq + ck)); scaling
        # epsilon by that factor too keeps the fp32 result exact.
        log_q, log_k = self._log_features(q, w), self._log_features(k, w)
        shift_q = log_q.amax(dim=-1, keepdim=True).detach()
        shift_k = log_k.amax(dim=(1, 2), keepdim=True).detach()
        inv_sqrt_m = 1.0 / math.sqrt(self.m)
        qp = torch.exp(log_q - shift_q) * inv_sqrt_m
        kp = torch.exp(log_k - shift_k) * inv_sqrt_m
        kv = torch.matmul(kp.transpose(1, 2), v)  # (B, m, emb)
        numerator = torch.matmul(qp, kv)  # (B, T, emb)
        normaliser = torch.matmul(qp, kp.sum(dim=1, keepdim=True).transpose(1, 2))  # (B, T, 1)
        # Clamped so the scaled epsilon cannot overflow fp16 (e^10); in fp32 the clamp only acts when every
        # feature is below e^-14, where the published formula itself is dominated by epsilon.
        scaled_eps = torch.exp(torch.clamp(math.log(self.epsilon) - shift_q - shift_k, max=10.0))
        return numerator / (normaliser + scaled_eps)

    def forward(self, k: torch.Tensor, q: torch.Tensor, v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        attend = self._attention_export if self.export_form else self._attention_reference
        return attend(k, q, v, w)


class TokenPerformer(nn.Module):
    """Single-head Performer used inside the T2T module; the skip connection uses v."""

    def __init__(self, dim: int, in_dim: int, kernel_ratio: float = 0.5, drop: float = 0.1) -> None:
        super().__init__()
        self.emb = in_dim
        self.kqv = nn.Linear(dim, 3 * self.emb)
        self.dp = nn.Dropout(drop)
        self.proj = nn.Linear(self.emb, self.emb)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(self.emb)
        self.mlp = nn.Sequential(
            nn.Linear(self.emb, self.emb), nn.GELU(), nn.Linear(self.emb, self.emb), nn.Dropout(drop)
        )
        self.m = int(self.emb * kernel_ratio)
        # The random feature matrix is drawn once at training time and saved: it must come from the checkpoint.
        w = nn.init.orthogonal_(torch.empty(self.m, self.emb)) * math.sqrt(self.m)
        self.w = nn.Parameter(w, requires_grad=False)
        self.attention = PerformerAttention(self.m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, q, v = torch.split(self.kqv(self.norm1(x)), self.emb, dim=-1)
        y = v + self.dp(self.proj(self.attention(k, q, v, self.w)))
        return y + self.mlp(self.norm2(y))


class TokenAttention(nn.Module):
    """Single-head attention of the Transformer-T2T variant: projects dim -> in_dim, skip through v."""

    def __init__(self, dim: int, in_dim: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.scale = dim**-0.5
        self.qkv = nn.Linear(dim, in_dim * 3, bias=False)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(in_dim, in_dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = torch.split(self.qkv(x), self.in_dim, dim=-1)
        attn = torch.matmul(q * self.scale, k.transpose(-2, -1)).softmax(dim=-1)
        y = self.proj_drop(self.proj(torch.matmul(self.attn_drop(attn), v)))
        return v + y


class TokenTransformer(nn.Module):
    def __init__(self, dim: int, in_dim: int, mlp_ratio: float = 1.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TokenAttention(dim, in_dim)
        self.norm2 = nn.LayerNorm(in_dim)
        self.mlp = Mlp(in_dim, int(in_dim * mlp_ratio), in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class T2TModule(nn.Module):
    """Tokens-to-Token: soft split 7/4 -> token attention -> soft split 3/2 -> attention -> soft split 3/2."""

    def __init__(self, img_size: int, tokens_type: Literal["performer", "transformer"], in_chans: int,
                 embed_dim: int, token_dim: int = 64) -> None:
        super().__init__()
        self.soft_split0 = SoftSplit(in_chans, 7, 4, 2)
        self.soft_split1 = SoftSplit(token_dim, 3, 2, 1)
        self.soft_split2 = SoftSplit(token_dim, 3, 2, 1)
        if tokens_type == "performer":
            self.attention1 = TokenPerformer(in_chans * 7 * 7, token_dim, kernel_ratio=0.5)
            self.attention2 = TokenPerformer(token_dim * 3 * 3, token_dim, kernel_ratio=0.5)
        elif tokens_type == "transformer":
            self.attention1 = TokenTransformer(in_chans * 7 * 7, token_dim)
            self.attention2 = TokenTransformer(token_dim * 3 * 3, token_dim)
        else:
            raise ValueError(f"unknown tokens_type {tokens_type!r}")
        self.project = nn.Linear(token_dim * 3 * 3, embed_dim)
        self.grid1 = img_size // 4
        self.grid2 = img_size // 8
        self.num_patches = (img_size // 16) ** 2

    @staticmethod
    def _tokens_to_map(x: torch.Tensor, grid: int) -> torch.Tensor:
        return x.transpose(1, 2).reshape(-1, x.shape[2], grid, grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention1(self.soft_split0(x))
        x = self.attention2(self.soft_split1(self._tokens_to_map(x, self.grid1)))
        x = self._tokens_to_map(x, self.grid2)
        if self.soft_split2.export_form:
            # A linear map of 3x3 patches in Unfold's c*9 + i*3 + j order is exactly a dense 3x3 conv.
            split = self.soft_split2
            kernel = self.project.weight.reshape(-1, split.channels, split.kernel_size, split.kernel_size)
            x = F.conv2d(x, kernel, self.project.bias, stride=split.stride, padding=split.padding)
            return x.flatten(2).transpose(1, 2)
        return self.project(self.soft_split2(x))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, qk_scale: float | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, dim = x.shape[1], x.shape[2]
        # Split on the feature axis, then one transpose per tensor (k straight to k^T): the same arithmetic as
        # the published reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4), without a 5-D transpose in the graph.
        q, k, v = torch.split(self.qkv(x), dim, dim=-1)
        q = q.reshape(-1, tokens, self.num_heads, self.head_dim).transpose(1, 2)
        k_t = k.reshape(-1, tokens, self.num_heads, self.head_dim).permute(0, 2, 3, 1)
        v = v.reshape(-1, tokens, self.num_heads, self.head_dim).transpose(1, 2)
        attn = (torch.matmul(q, k_t) * self.scale).softmax(dim=-1)
        x = torch.matmul(self.attn_drop(attn), v).transpose(1, 2).reshape(-1, tokens, dim)
        return self.proj_drop(self.proj(x))


class DropPath(nn.Module):
    """Stochastic depth (training only)."""

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool = False,
                 qk_scale: float | None = None, drop: float = 0.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, qk_scale)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class T2TViT(nn.Module):
    def __init__(self, img_size: int = 224, tokens_type: Literal["performer", "transformer"] = "performer",
                 in_chans: int = 3, num_classes: int = 1000, embed_dim: int = 256, depth: int = 7,
                 num_heads: int = 4, mlp_ratio: float = 2.0, qkv_bias: bool = False,
                 qk_scale: float | None = None, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 token_dim: int = 64) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.tokens_to_token = T2TModule(img_size, tokens_type, in_chans, embed_dim, token_dim)
        num_patches = self.tokens_to_token.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(sinusoid_table(num_patches + 1, embed_dim), requires_grad=False)
        self.pos_drop = nn.Dropout(drop_rate)
        rates = [r.item() for r in torch.linspace(0, drop_path_rate, depth)]
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, qk_scale, drop_rate, rates[i]) for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tokens_to_token(x)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = self.pos_drop(torch.cat((cls, x), dim=1) + self.pos_embed)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def set_export_form(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Switch every soft split and Performer of `model` to (or from) the export form, in place."""
    for module in model.modules():
        if isinstance(module, (SoftSplit, PerformerAttention)):
            module.export_form = enabled
    return model
