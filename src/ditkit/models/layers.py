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
    """adaLN-Zero block: shift/scale/gate for attention and MLP regressed from the conditioning vector."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, mlp_norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.norm_eps = 1e-6
        self.mlp_norm_eps = mlp_norm_eps  # 1e-5 under diffusers arithmetic
        self.attn = Attention(dim, num_heads)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim, bias=True))

    def forward(self, x: torch.Tensor, c_act: torch.Tensor) -> torch.Tensor:
        """x: (N, T, D); c_act: SiLU(conditioning), (N, D), computed once for all blocks."""
        d = x.shape[-1]
        mod = self.adaLN_modulation[1](c_act)  # (N, 6D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=1)
        h = modulate(F.layer_norm(x, (d,), eps=self.norm_eps), shift_msa, scale_msa)
        x = torch.addcmul(x, gate_msa.unsqueeze(1), self.attn(h))
        h = modulate(F.layer_norm(x, (d,), eps=self.mlp_norm_eps), shift_mlp, scale_mlp)
        return torch.addcmul(x, gate_mlp.unsqueeze(1), self.mlp(h))


class FinalLayer(nn.Module):
    """adaLN (shift, scale; no gate) then a linear map from D to p*p*out_channels per token."""

    def __init__(self, dim: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim, bias=True))

    def forward(self, x: torch.Tensor, c_act: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation[1](c_act).chunk(2, dim=1)
        x = modulate(F.layer_norm(x, (x.shape[-1],), eps=1e-6), shift, scale)
        return self.linear(x)  # (N, T, p*p*C_out)
