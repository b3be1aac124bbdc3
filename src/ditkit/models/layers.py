"""Transformer layers: fused-QKV attention, the MLP, and the adaLN-Zero block.

Kernel choices (issue 11, measured on a 2-core AVX512-BF16 CPU, DiT-S/2): `attention` runs bf16 attention on
the CPU as two oneDNN batched matmuls and one softmax (0.65x the time of the CPU flash kernel forward, 0.6x
forward + backward at 256 tokens) and SDPA everywhere else (the flash / memory-efficient kernels on CUDA take
the (N, H, T, Dh) views of the fused qkv output as they are). Without autograd on the CPU, `linear` calls
oneDNN's linear with the bias (and the fc1 GELU) fused into the matmul epilogue (0.75x linear + GELU).
`plain_kernels()` turns every choice off: the plain PyTorch path is the reference the tests compare against.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

_fast = {"on": True}
_MATH_ATTENTION_MAX_TOKENS = 512  # above this, the flash kernel's O(T) memory wins over bmm + softmax
_HAS_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@contextlib.contextmanager
def plain_kernels() -> Iterator[None]:
    """Run the network with the plain PyTorch ops only (the reference for the fast paths)."""
    before = _fast["on"]
    _fast["on"] = False
    try:
        yield
    finally:
        _fast["on"] = before


def _op_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a matmul on x runs in: the autocast dtype when autocast is on for x's device."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def linear(layer: nn.Linear, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
    """layer(x), then tanh-GELU when `gelu`; fused on the CPU when no gradient is needed."""
    if (
        _fast["on"]
        and _HAS_ONEDNN_LINEAR
        and x.device.type == "cpu"
        and x.numel() > 0
        and not torch.compiler.is_compiling()  # inductor makes its own fusion choices
        and not (torch.is_grad_enabled() and (x.requires_grad or layer.weight.requires_grad))
    ):
        dtype = _op_dtype(x)
        if dtype in (torch.float32, torch.bfloat16):
            w = _packed_weight(layer, x) if layer.weight.dtype == dtype else layer.weight.to(dtype)
            b = layer.bias.to(dtype) if layer.bias is not None else None
            attr, algo = ("gelu", "tanh") if gelu else ("none", "")
            return torch.ops.mkldnn._linear_pointwise(x.to(dtype), w, b, attr, [], algo)
    out = layer(x)
    return F.gelu(out, approximate="tanh") if gelu else out


# oneDNN-blocked copies of frozen weights (inference), keyed by module; a weight that changes (optimizer step,
# load_state_dict, EMA update, .to()) changes its version or storage, and the copy is rebuilt.
_PACKED: weakref.WeakKeyDictionary[nn.Linear, tuple[tuple[int, int, int], torch.Tensor]] = (
    weakref.WeakKeyDictionary()
)


def _packed_weight(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    w = layer.weight
    key = (w.data_ptr(), w._version, x.numel() // x.shape[-1])
    hit = _PACKED.get(layer)
    if hit is not None and hit[0][:2] == key[:2]:
        return hit[1]
    packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), key[2])  # (0.87x the plain-weight time)
    _PACKED[layer] = (key, packed)
    return packed


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention, (N, H, T, Dh) each -> (N, H, T, Dh), scaled by 1 / sqrt(Dh)."""
    if (
        _fast["on"]
        and q.device.type == "cpu"
        and _op_dtype(q) == torch.bfloat16
        and q.shape[-2] <= _MATH_ATTENTION_MAX_TOKENS
    ):
        scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))  # (N, H, T, T)
        return torch.matmul(scores.softmax(dim=-1).to(v.dtype), v)
    return F.scaled_dot_product_attention(q, k, v)


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
        qkv = linear(self.qkv, x).view(n, t, 3, self.num_heads, d // self.num_heads)  # (N, T, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (N, H, T, Dh), views: no copy
        out = attention(q, k, v)  # (N, H, T, Dh)
        return linear(self.proj, out.transpose(1, 2).reshape(n, t, d))  # (N, T, D)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=True)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(self.fc2, linear(self.fc1, x, gelu=True))  # fc2(GELU_tanh(fc1(x)))


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
