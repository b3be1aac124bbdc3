"""The Diffusion Transformer (Peebles & Xie, 2023), with the official parameter names.

An official state dict (`DiT-XL-2-256x256.pt`) loads with `load_state_dict(strict=True)`. The network is a
pure function of (x, t, y): label dropout and classifier-free guidance live outside it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import ModelConfig
from .embed import (
    LabelEmbedder,
    MultiLabelEmbedder,
    PatchEmbed,
    TimestepEmbedder,
    VectorEmbedder,
    sincos_pos_embed_2d,
)
from .layers import CrossAttentionBlock, DiTBlock, FinalLayer, ViTBlock


class DiT(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        d = config.hidden_size
        diffusers_math = config.arithmetic == "diffusers"
        self.x_embedder = PatchEmbed(config.patch_size, config.in_channels, d)
        self.t_embedder = TimestepEmbedder(d, freq_shift=1 if diffusers_math else 0)
        # A guidance-distilled student also embeds the guidance scale w (like t); its output joins c.
        self.w_embedder: TimestepEmbedder | None = None
        if config.guidance_embed:
            self.w_embedder = TimestepEmbedder(d, freq_shift=1 if diffusers_math else 0)
        self.grad_checkpointing = False
        self.y_embedder: nn.Module | None = None
        if config.cond_dim:
            self.y_embedder = VectorEmbedder(config.cond_dim, d)
        elif config.multi_label:
            self.y_embedder = MultiLabelEmbedder(config.label_sizes, d, config.has_null_label)
        elif config.label_sizes:
            self.y_embedder = LabelEmbedder(config.num_classes, d, config.has_null_label)
        if config.pos_embed == "sincos":
            # Fixed sin-cos embedding: a persistent buffer, so it is saved (official key `pos_embed`) but is
            # never trained, decayed or averaged by EMA.
            self.register_buffer("pos_embed", torch.zeros(1, config.num_tokens, d), persistent=True)
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, config.num_tokens, d))
        post = config.norm == "post"
        if config.block in ("adaln-zero", "adaln"):
            eps = 1e-5 if diffusers_math else 1e-6
            blocks = [
                DiTBlock(
                    d,
                    config.num_heads,
                    config.mlp_ratio,
                    eps,
                    gated=config.block == "adaln-zero",
                    post_norm=post,
                )
                for _ in range(config.depth)
            ]
        elif config.block == "in-context":
            blocks = [
                ViTBlock(d, config.num_heads, config.mlp_ratio, post_norm=post) for _ in range(config.depth)
            ]
        else:
            blocks = [
                CrossAttentionBlock(d, config.num_heads, config.mlp_ratio, post_norm=post)
                for _ in range(config.depth)
            ]
        self.blocks = nn.ModuleList(blocks)
        self.final_layer = FinalLayer(d, config.patch_size, config.out_channels, kind=config.final_layer)
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
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        self.reset_pos_embed()
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        if isinstance(self.y_embedder, LabelEmbedder):
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        elif isinstance(self.y_embedder, MultiLabelEmbedder):
            for table in self.y_embedder.tables:
                nn.init.normal_(table.weight, std=0.02)
        elif isinstance(self.y_embedder, VectorEmbedder):
            nn.init.normal_(self.y_embedder.null_embedding, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.w_embedder is not None:  # zero last layer: a student copied from a teacher starts equal to it
            nn.init.normal_(self.w_embedder.mlp[0].weight, std=0.02)
            nn.init.zeros_(self.w_embedder.mlp[2].weight)
            nn.init.zeros_(self.w_embedder.mlp[2].bias)
        if self.config.block == "adaln-zero":  # each block starts as the identity (pre-norm)
            for block in self.blocks:
                nn.init.zeros_(block.adaLN_modulation[-1].weight)
                nn.init.zeros_(block.adaLN_modulation[-1].bias)
        final = [self.final_layer.linear]
        if self.config.final_layer == "adaln":
            final.append(self.final_layer.adaLN_modulation[-1])
        for layer in final:  # the model outputs exactly zero at init, whatever the block design
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @torch.no_grad()
    def reset_pos_embed(self) -> None:
        if self.config.pos_embed == "learned":
            if not self.pos_embed.is_meta:
                nn.init.normal_(self.pos_embed, std=0.02)
            return
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

    def _check_inputs(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None, w: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
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
        # Range checks cost a device sync on accelerators, so they run where they are free (CPU, eager).
        checkable = not torch.compiler.is_compiling()
        if checkable and t.device.type == "cpu" and n:
            lo, hi = cfg.time_range
            t_min, t_max = float(t.min()), float(t.max())
            slack = 1e-4 * (hi - lo)
            if not (t_min >= lo - slack and t_max <= hi + slack):  # also catches NaN
                bad = t_min if not t_min >= lo - slack else t_max
                raise ValueError(
                    f"timestep {bad:g} is outside this model's range [{lo:g}, {hi:g}] "
                    f"(time_input {cfg.time_input!r}); pass t in that range"
                )
        if self.y_embedder is None:
            if y is not None:
                raise ValueError("this model is unconditional (num_classes=0); call it without labels")
        elif cfg.cond_dim:
            if y is None or y.shape != (n, cfg.cond_dim) or not y.dtype.is_floating_point:
                got = "nothing" if y is None else f"{tuple(y.shape)} {y.dtype}"
                raise ValueError(
                    f"this model is conditioned on {cfg.cond_dim}-wide embeddings: pass y as a float tensor "
                    f"({n}, {cfg.cond_dim}) (all zeros = null), got {got}"
                )
        else:
            sizes = cfg.label_sizes
            want = f"({n},)" if not cfg.multi_label else f"({n}, {len(sizes)})"
            if y is None:
                raise ValueError(f"this model is class-conditional; pass y, labels of shape {want}")
            if y.shape != ((n,) if not cfg.multi_label else (n, len(sizes))):
                raise ValueError(
                    f"y has shape {tuple(y.shape)}; expected {want}, one label per image"
                    + (" and attribute" if cfg.multi_label else "")
                )
            if y.dtype.is_floating_point:
                raise ValueError("y holds labels and must be an integer tensor")
            # A range check costs a device sync on accelerators, so it runs where it is free (CPU); on GPU an
            # out-of-range label still fails inside the embedding.
            if y.device.type == "cpu" and n and not torch.compiler.is_compiling():
                cols = y.view(n, -1)
                for k, size in enumerate(sizes):
                    top = size if cfg.has_null_label else size - 1
                    lo, hi = int(cols[:, k].min()), int(cols[:, k].max())
                    if lo < 0 or hi > top:
                        bad = lo if lo < 0 else hi
                        where = f" for attribute {k}" if cfg.multi_label else ""
                        raise ValueError(
                            f"label {bad} is out of range{where}; valid labels are 0..{size - 1}"
                            + (f" and {size} (null)" if cfg.has_null_label else "")
                        )
        return t, self._check_guidance(w, n)

    def _check_guidance(self, w: torch.Tensor | float | None, n: int) -> torch.Tensor | None:
        if self.w_embedder is None:
            if w is not None:
                raise ValueError("this model takes no guidance scale w (guidance_embed is off); drop w")
            return None
        if w is None:
            raise ValueError(f"this guidance-distilled model needs w, the guidance scale per image ({n},)")
        w = torch.as_tensor(w, dtype=torch.float32)
        w = w.expand(n) if w.ndim == 0 else w
        if w.shape != (n,):
            raise ValueError(f"w has shape {tuple(w.shape)}; expected ({n},), one guidance scale per image")
        return w

    # -- forward ------------------------------------------------------------------------------------
    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them (saves memory)."""
        self.grad_checkpointing = bool(enabled)

    def _run_block(self, blk: nn.Module, *args: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(blk, *args, use_reentrant=False)
        return blk(*args)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor | None = None,
        w: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (N, C, H, W) noisy input; t: (N,) timesteps in `config.time_range` (DDPM: 0..999);
        y: (N,) labels (num_classes = null); w: (N,) guidance scales (guidance-distilled models only).

        Returns (N, out_channels, H, W): eps in the first C channels, then the variance values v when
        learn_sigma.
        """
        t, w = self._check_inputs(x, t, y, w)
        x = x.to(self.pos_embed.dtype)
        h = self.x_embedder(x) + self.pos_embed  # (N, T, D)
        t_emb = self.t_embedder(t)  # (N, D)
        if self.w_embedder is not None:
            t_emb = t_emb + self.w_embedder(w.to(t.device))  # zero at init: the teacher's conditioning
        y_emb = self.y_embedder(y) if self.y_embedder is not None else None  # (N, D)
        block = self.config.block
        c_act = None
        if block in ("adaln-zero", "adaln") or self.config.final_layer == "adaln":
            c = t_emb if y_emb is None else t_emb + y_emb
            c_act = torch.nn.functional.silu(c)  # shared by every adaLN projection
        if block in ("adaln-zero", "adaln"):
            for blk in self.blocks:
                h = self._run_block(blk, h, c_act)  # (N, T, D)
        else:
            context = torch.stack([t_emb] if y_emb is None else [t_emb, y_emb], dim=1)  # (N, 1 or 2, D)
            if block == "in-context":
                num_tokens = h.shape[1]
                h = torch.cat([h, context], dim=1)  # t and c as extra tokens
                for blk in self.blocks:
                    h = self._run_block(blk, h)
                h = h[:, :num_tokens]
            else:
                for blk in self.blocks:
                    h = self._run_block(blk, h, context)
        return self.unpatchify(self.final_layer(h, c_act))  # (N, C_out, H, W)

    # -- accounting ---------------------------------------------------------------------------------
    def num_parameters(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def forward_flops(config: ModelConfig) -> int:
    """Forward multiply-accumulates per image, as the DiT paper counts 'Gflops'.

    Every matmul counts its output elements times its reduction length; attention adds QK^T and AV; each
    adaLN modulation x * (1 + scale) + shift counts one multiply-accumulate per element. Norms, activations,
    softmax and residual sums are not counted. This reproduces 11 of the 12 entries of the paper's Table 4
    to the published digits (B/4: 5.57 vs 5.56) and the block-design figures of §3.2 (in-context 119.4,
    cross-attention 137.6, adaLN 118.6, adaLN-Zero 118.6 for XL/2).
    """
    d, t, p = config.hidden_size, config.num_tokens, config.patch_size
    mlp = int(d * config.mlp_ratio)
    n_ctx = 1 + int(config.conditional)  # the t (and c) vectors
    embed = t * p * p * config.in_channels * d + (256 * d + d * d) * (1 + int(config.guidance_embed))
    if config.cond_dim:
        embed += config.cond_dim * d + d * d
    head = t * d * p * p * config.out_channels
    if config.final_layer == "adaln":
        head += 2 * d * d + t * d

    def body(tokens: int) -> int:  # projections, MLP and self-attention over `tokens`
        return tokens * (4 * d * d + 2 * d * mlp) + 2 * tokens * tokens * d

    if config.block == "adaln-zero":
        per_block = body(t) + 6 * d * d + 2 * t * d
    elif config.block == "adaln":
        per_block = body(t) + 4 * d * d + 2 * t * d
    elif config.block == "in-context":
        per_block = body(t + n_ctx)
    else:  # cross-attention: q and out-projection over the image tokens, k/v over the context
        per_block = body(t) + 2 * t * d * d + n_ctx * 2 * d * d + 2 * t * n_ctx * d
    return config.depth * per_block + embed + head
