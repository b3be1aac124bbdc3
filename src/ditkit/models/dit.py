"""The Diffusion Transformer (Peebles & Xie, 2023), with the official parameter names.

An official state dict (`DiT-XL-2-256x256.pt`) loads with `load_state_dict(strict=True)`. The network is a
pure function of (x, t, y): label dropout and classifier-free guidance live outside it.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .embed import LabelEmbedder, PatchEmbed, TimestepEmbedder, sincos_pos_embed_2d
from .layers import DiTBlock, FinalLayer


class DiT(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        d = config.hidden_size
        diffusers_math = config.arithmetic == "diffusers"
        self.x_embedder = PatchEmbed(config.patch_size, config.in_channels, d)
        self.t_embedder = TimestepEmbedder(d, freq_shift=1 if diffusers_math else 0)
        self.y_embedder = (
            LabelEmbedder(config.num_classes, d, config.has_null_label) if config.num_classes > 0 else None
        )
        # Fixed sin-cos embedding: a persistent buffer, so it is saved (official key `pos_embed`) but is
        # never trained, decayed or averaged by EMA.
        self.register_buffer("pos_embed", torch.zeros(1, config.num_tokens, d), persistent=True)
        self.blocks = nn.ModuleList(
            DiTBlock(d, config.num_heads, config.mlp_ratio, mlp_norm_eps=1e-5 if diffusers_math else 1e-6)
            for _ in range(config.depth)
        )
        self.final_layer = FinalLayer(d, config.patch_size, config.out_channels)
        self.initialize_weights()

    # -- initialisation -----------------------------------------------------------------------------
    @torch.no_grad()
    def initialize_weights(self) -> None:
        """Official DiT init: ViT defaults, N(0, 0.02) embeddings, and zeros wherever adaLN-Zero needs them
        so every block starts as the identity and the model outputs exactly zero."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        self.reset_pos_embed()
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @torch.no_grad()
    def reset_pos_embed(self) -> None:
        grid = self.config.input_size // self.config.patch_size
        table = torch.from_numpy(sincos_pos_embed_2d(self.config.hidden_size, grid)).float().unsqueeze(0)
        if self.pos_embed.is_meta:
            return  # a meta model has no values; to_empty() + initialize_weights() fills it later
        self.pos_embed.copy_(table)

    # -- helpers ------------------------------------------------------------------------------------
    @property
    def null_label(self) -> int:
        return self.config.null_label

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, p*p*C) -> (N, C, H, W) for a square token grid."""
        p, c = self.config.patch_size, self.config.out_channels
        h = w = self.config.input_size // p
        x = x.reshape(x.shape[0], h, w, p, p, c)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(x.shape[0], c, h * p, w * p)

    def _check_inputs(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        cfg = self.config
        expected = (cfg.in_channels, cfg.input_size, cfg.input_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"x has shape {tuple(x.shape)}; this model expects (N, {expected[0]}, {expected[1]}, "
                f"{expected[2]}) (in_channels, input_size, input_size)"
            )
        n = x.shape[0]
        if t.ndim == 0:
            t = t.expand(n)
        if t.shape != (n,):
            raise ValueError(f"t has shape {tuple(t.shape)}; expected ({n},), one timestep per image")
        if self.y_embedder is None:
            if y is not None:
                raise ValueError("this model is unconditional (num_classes=0); call it without labels")
        else:
            if y is None:
                raise ValueError(f"this model is class-conditional; pass y, {n} labels in [0, {cfg.num_classes}]")
            if y.shape != (n,):
                raise ValueError(f"y has shape {tuple(y.shape)}; expected ({n},), one label per image")
            if y.dtype.is_floating_point:
                raise ValueError("y holds labels and must be an integer tensor")
            # A range check costs a device sync on accelerators, so it runs where it is free (CPU); on GPU an
            # out-of-range label still fails inside the embedding.
            if y.device.type == "cpu" and n and not torch.compiler.is_compiling():
                top = cfg.num_classes if cfg.has_null_label else cfg.num_classes - 1
                lo, hi = int(y.min()), int(y.max())
                if lo < 0 or hi > top:
                    bad = lo if lo < 0 else hi
                    raise ValueError(
                        f"label {bad} is out of range; valid labels are 0..{cfg.num_classes - 1}"
                        + (f" and {cfg.num_classes} (null)" if cfg.has_null_label else "")
                    )
        return t

    # -- forward ------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x: (N, C, H, W) noisy input; t: (N,) timesteps in 0..999; y: (N,) labels (num_classes = null).

        Returns (N, out_channels, H, W): eps in the first C channels, then the variance values v when
        learn_sigma.
        """
        t = self._check_inputs(x, t, y)
        x = x.to(self.pos_embed.dtype)
        h = self.x_embedder(x) + self.pos_embed  # (N, T, D)
        c = self.t_embedder(t)  # (N, D)
        if self.y_embedder is not None:
            c = c + self.y_embedder(y)
        c_act = torch.nn.functional.silu(c)  # shared by every adaLN projection
        for block in self.blocks:
            h = block(h, c_act)  # (N, T, D)
        return self.unpatchify(self.final_layer(h, c_act))  # (N, C_out, H, W)

    # -- accounting ---------------------------------------------------------------------------------
    def num_parameters(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def forward_flops(config: ModelConfig) -> int:
    """Forward multiply-accumulates per image, as the DiT paper counts 'Gflops'.

    Every matmul is counted once per output element times its reduction length; attention adds QK^T and
    AV (2 T^2 D per block). Norms, activations and softmax are not counted.
    """
    d, t, p = config.hidden_size, config.num_tokens, config.patch_size
    mlp = int(d * config.mlp_ratio)
    per_block = t * (3 * d * d + d * d + 2 * d * mlp) + 2 * t * t * d + 6 * d * d
    embed = t * p * p * config.in_channels * d + 256 * d + d * d
    head = 2 * d * d + t * d * p * p * config.out_channels
    return config.depth * per_block + embed + head
