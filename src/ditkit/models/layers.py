"""Transformer layers: fused-QKV attention through SDPA, the MLP, and the adaLN-Zero block."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x * (1 + scale) + shift, broadcast over tokens; one fused addcmul instead of three kernels."""
    return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1))


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (rows q, k, v stacked, as official)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        qkv = self.qkv(x).view(n, t, 3, self.num_heads, d // self.num_heads)  # (N, T, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (N, H, T, Dh)
        out = F.scaled_dot_product_attention(q, k, v)  # (N, H, T, Dh)
        return self.proj(out.transpose(1, 2).reshape(n, t, d))  # (N, T, D)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=True)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """adaLN-Zero block (official): shift/scale/gate for attention and MLP regressed from the conditioning.

    `gated=False` is the paper's plain adaLN block (shift and scale only, 4D outputs, standard init).
    `post_norm=True` moves the (modulated) LayerNorm after each residual sum, as the DiT-WikiArt model does:
    x = modulate(LN(x + gate * Attn(x))), x = modulate(LN(x + gate * MLP(x))).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        mlp_norm_eps: float = 1e-6,
        *,
        gated: bool = True,
        post_norm: bool = False,
    ) -> None:
        super().__init__()
        self.norm_eps = 1e-6
        self.mlp_norm_eps = mlp_norm_eps  # 1e-5 under diffusers arithmetic
        self.gated = gated
        self.post_norm = post_norm
        self.attn = Attention(dim, num_heads)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, (6 if gated else 4) * dim, bias=True))

    def forward(self, x: torch.Tensor, c_act: torch.Tensor) -> torch.Tensor:
        """x: (N, T, D); c_act: SiLU(conditioning), (N, D), computed once for all blocks."""
        d = x.shape[-1]
        mod = self.adaLN_modulation[1](c_act)  # (N, 6D) or (N, 4D)
        if self.gated:
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=1)
        else:
            shift_msa, scale_msa, shift_mlp, scale_mlp = mod.chunk(4, dim=1)
            gate_msa = gate_mlp = None
        if self.post_norm:
            x = _residual(x, gate_msa, self.attn(x))
            x = modulate(F.layer_norm(x, (d,), eps=self.norm_eps), shift_msa, scale_msa)
            x = _residual(x, gate_mlp, self.mlp(x))
            return modulate(F.layer_norm(x, (d,), eps=self.mlp_norm_eps), shift_mlp, scale_mlp)
        h = modulate(F.layer_norm(x, (d,), eps=self.norm_eps), shift_msa, scale_msa)
        x = _residual(x, gate_msa, self.attn(h))
        h = modulate(F.layer_norm(x, (d,), eps=self.mlp_norm_eps), shift_mlp, scale_mlp)
        return _residual(x, gate_mlp, self.mlp(h))


def _residual(x: torch.Tensor, gate: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    return x + out if gate is None else torch.addcmul(x, gate.unsqueeze(1), out)


class ViTBlock(nn.Module):
    """A standard ViT block (affine LayerNorms), used by in-context conditioning: t and c ride along as two
    extra tokens, so the block needs no conditioning input of its own."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, *, post_norm: bool = False) -> None:
        super().__init__()
        self.post_norm = post_norm
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if self.post_norm:
            x = self.norm1(x + self.attn(x))
            return self.norm2(x + self.mlp(x))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CrossAttention(nn.Module):
    """Queries from the image tokens, keys and values from a short conditioning sequence (t and c)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=True)
        self.kv = nn.Linear(dim, 2 * dim, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        h, dh = self.num_heads, d // self.num_heads
        q = self.q(x).view(n, t, h, dh).transpose(1, 2)  # (N, H, T, Dh)
        k, v = self.kv(context).view(n, -1, 2, h, dh).permute(2, 0, 3, 1, 4).unbind(0)  # (N, H, S, Dh)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, t, d))


class CrossAttentionBlock(nn.Module):
    """Self-attention, then cross-attention to the (t, c) sequence, then the MLP (DiT paper §3.2)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, *, post_norm: bool = False) -> None:
        super().__init__()
        self.post_norm = post_norm
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm_cross = nn.LayerNorm(dim, eps=1e-6)
        self.cross_attn = CrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if self.post_norm:
            x = self.norm1(x + self.attn(x))
            x = self.norm_cross(x + self.cross_attn(x, context))
            return self.norm2(x + self.mlp(x))
        x = x + self.attn(self.norm1(x))
        x = x + self.cross_attn(self.norm_cross(x), context)
        return x + self.mlp(self.norm2(x))


class FinalLayer(nn.Module):
    """Maps tokens to p*p*out_channels values each.

    kind "adaln" (official): LayerNorm, shift/scale from the conditioning (no gate), linear.
    kind "norm": LayerNorm and linear. kind "linear": the projection alone.
    """

    def __init__(self, dim: int, patch_size: int, out_channels: int, kind: str = "adaln") -> None:
        super().__init__()
        self.kind = kind
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels, bias=True)
        if kind == "adaln":
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim, bias=True))

    def forward(self, x: torch.Tensor, c_act: torch.Tensor | None) -> torch.Tensor:
        if self.kind == "adaln":
            shift, scale = self.adaLN_modulation[1](c_act).chunk(2, dim=1)
            x = modulate(F.layer_norm(x, (x.shape[-1],), eps=1e-6), shift, scale)
        elif self.kind == "norm":
            x = F.layer_norm(x, (x.shape[-1],), eps=1e-6)
        return self.linear(x)  # (N, T, p*p*C_out)
