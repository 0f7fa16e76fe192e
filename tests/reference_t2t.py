"""An independent, functional re-statement of the official T2T-ViT forward (yitu-opensource/T2T-ViT).

It reads weights straight from a state dict in the release layout and follows the published code's
operations one by one (nn.Unfold, einsum Performer, timm-style attention), sharing no code with
t2tedge.models, so agreement with it checks our modules rather than themselves.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _linear(sd, prefix, x):
    return F.linear(x, sd[prefix + ".weight"], sd.get(prefix + ".bias"))


def _ln(sd, prefix, x):
    return F.layer_norm(x, x.shape[-1:], sd[prefix + ".weight"], sd[prefix + ".bias"], eps=1e-5)


def _performer(sd, p, x):
    x = _ln(sd, p + ".norm1", x)
    emb = sd[p + ".proj.weight"].shape[0]
    w = sd[p + ".w"]
    m = w.shape[0]
    k, q, v = torch.split(_linear(sd, p + ".kqv", x), emb, dim=-1)

    def prm_exp(t):
        xd = ((t * t).sum(dim=-1, keepdim=True)).repeat(1, 1, m) / 2
        wtx = torch.einsum("bti,mi->btm", t.float(), w)
        return torch.exp(wtx - xd) / math.sqrt(m)

    kp, qp = prm_exp(k), prm_exp(q)
    D = torch.einsum("bti,bi->bt", qp, kp.sum(dim=1)).unsqueeze(dim=2)
    kptv = torch.einsum("bin,bim->bnm", v.float(), kp)
    y = torch.einsum("bti,bni->btn", qp, kptv) / (D.repeat(1, 1, emb) + 1e-8)
    y = v + _linear(sd, p + ".proj", y)
    h = _linear(sd, p + ".mlp.2", F.gelu(_linear(sd, p + ".mlp.0", _ln(sd, p + ".norm2", y))))
    return y + h


def _token_transformer(sd, p, x):
    dim = x.shape[-1]
    x = _ln(sd, p + ".norm1", x)
    in_dim = sd[p + ".attn.proj.weight"].shape[0]
    B, N, _ = x.shape
    qkv = _linear(sd, p + ".attn.qkv", x).reshape(B, N, 3, 1, in_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = ((q * dim**-0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
    y = (attn @ v).transpose(1, 2).reshape(B, N, in_dim)
    y = v.squeeze(1) + _linear(sd, p + ".attn.proj", y)
    h = _linear(sd, p + ".mlp.fc2", F.gelu(_linear(sd, p + ".mlp.fc1", _ln(sd, p + ".norm2", y))))
    return y + h


def _block(sd, p, x, heads):
    B, N, C = x.shape
    h = _ln(sd, p + ".norm1", x)
    qkv = _linear(sd, p + ".attn.qkv", h).reshape(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = ((q @ k.transpose(-2, -1)) * (C // heads) ** -0.5).softmax(dim=-1)
    x = x + _linear(sd, p + ".attn.proj", (attn @ v).transpose(1, 2).reshape(B, N, C))
    h = _linear(sd, p + ".mlp.fc2", F.gelu(_linear(sd, p + ".mlp.fc1", _ln(sd, p + ".norm2", x))))
    return x + h


def official_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, heads: int,
                     tokens_type: str = "performer") -> torch.Tensor:
    token_block = _performer if tokens_type == "performer" else _token_transformer
    t = "tokens_to_token"
    x = F.unfold(x, (7, 7), padding=(2, 2), stride=(4, 4)).transpose(1, 2)
    x = token_block(sd, t + ".attention1", x)
    B, HW, C = x.shape
    x = x.transpose(1, 2).reshape(B, C, int(math.sqrt(HW)), int(math.sqrt(HW)))
    x = F.unfold(x, (3, 3), padding=(1, 1), stride=(2, 2)).transpose(1, 2)
    x = token_block(sd, t + ".attention2", x)
    B, HW, C = x.shape
    x = x.transpose(1, 2).reshape(B, C, int(math.sqrt(HW)), int(math.sqrt(HW)))
    x = F.unfold(x, (3, 3), padding=(1, 1), stride=(2, 2)).transpose(1, 2)
    x = _linear(sd, t + ".project", x)
    x = torch.cat((sd["cls_token"].expand(B, -1, -1), x), dim=1) + sd["pos_embed"]
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        x = _block(sd, f"blocks.{i}", x, heads)
    x = _ln(sd, "norm", x)
    return _linear(sd, "head", x[:, 0])
