"""Run recipes by name: overrides on top of the defaults of `ditkit.config` (which are the `digits` recipe).

`ditkit train NAME` picks one; `ditkit train --dry-run NAME` prints what it resolves to. Each entry cites
where its numbers come from.
"""

from __future__ import annotations

from typing import Any

from .config import RunConfig, _merge

RECIPES: dict[str, dict[str, Any]] = {
    # The embedded default (the dataclass defaults): scikit-learn's 8x8 digits in pixel space, the official
    # 1.27M-parameter digits DiT (depth 4, width 128, patch 2), 1500 steps at batch 128 and lr 2e-3, sampled
    # with 100 DDPM steps at guidance 1.5: about 2 minutes on 2 CPU cores for ~99.9% of samples classified as
    # the digit asked for. Tuned with benchmarks/digits_quality.py (figures in its docstring).
    "digits": {},
    # DiT-WikiArt (seed 000): the DiT-WikiArt-S network (post-norm, learned position embedding, epsilon only),
    # AdamW with torch defaults, linear warmup over the first 1% of steps to 3e-4, cosine decay to zero,
    # horizontal flips, SD VAE (ft-ema) latents at 256px. 96 epochs of 103K images at batch 176 for the S
    # size: about 56K steps. Needs data.path and a local data.vae folder.
    "wikiart": {
        "model": {"name": "DiT-WikiArt-S"},
        "data": {
            "path": "",
            "label_columns": ["genre", "style"],  # huggan/wikiart: one label table per attribute
            "image_size": 256,
            "hflip": True,
            "vae": "stabilityai/sd-vae-ft-ema",
            "num_workers": 4,
        },
        "train": {
            "max_steps": 56000,
            "batch_size": 176,
            "lr": 3e-4,
            "lr_schedule": "cosine",
            "warmup_ratio": 0.01,
            "weight_decay": 0.01,
            "ema_decay": 0.9999,
            "log_every": 100,
            "ckpt_every": 5000,
            "sample_every": 5000,
        },
        "sample": {"sampler": "ddpm", "steps": 250, "guidance_scale": 4.0, "num_per_label": 2},
    },
    # MindONE examples/dit fine-tuning (dit-facts §5): lr 5e-5 constant after 10 warmup steps, batch 2,
    # weight decay 0.01, AdamW eps 1e-6, grad clipping at 1.0. Start from pretrained weights:
    # `ditkit train finetune --init-from DiT-XL-2-256x256.pt --data YOUR_DATA --vae VAE_FOLDER`
    # (the transformer is kept, the label table adapts to your classes: ditkit.finetune).
    "finetune": {
        "model": {"name": "DiT-XL/2"},
        "data": {
            "path": "",
            "image_size": 256,
            "hflip": True,
            "vae": "stabilityai/sd-vae-ft-mse",
            "num_workers": 2,
        },
        "train": {
            "max_steps": 3000,
            "batch_size": 2,
            "lr": 5e-5,
            "lr_schedule": "constant",
            "warmup_steps": 10,
            "weight_decay": 0.01,
            "adam_eps": 1e-6,
            "grad_clip": 1.0,
            "ema_decay": 0.9999,
            "log_every": 10,
            "ckpt_every": 500,
            "sample_every": 500,
        },
        "sample": {"sampler": "ddpm", "steps": 250, "guidance_scale": 4.0, "num_per_label": 2},
    },
    # The official DiT recipe (train.py, dit-facts §1.5): AdamW lr 1e-4 constant, no weight decay, no warmup,
    # global batch 256, EMA 0.9999 from the first step (no warmup), flips, SD VAE ft-ema latents at 256px.
    # The paper's comparison point is 400K steps; XL/2 trained 7M.
    "imagenet": {
        "model": {"name": "DiT-XL/2"},
        "data": {
            "path": "",
            "image_size": 256,
            "hflip": True,
            "vae": "stabilityai/sd-vae-ft-ema",
            "num_workers": 4,
        },
        "train": {
            "max_steps": 400000,
            "batch_size": 256,
            "lr": 1e-4,
            "lr_schedule": "constant",
            "weight_decay": 0.0,
            "ema_decay": 0.9999,
            "ema_warmup": False,
            "log_every": 100,
            "ckpt_every": 50000,
            "sample_every": 10000,
        },
        "sample": {
            "sampler": "ddpm",
            "steps": 250,
            "guidance_scale": 4.0,
            "num_per_label": 1,
            "labels": [207, 360, 387, 974, 88, 979, 417, 279],
        },
    },
}


def recipe(name: str) -> RunConfig:
    """The RunConfig of a recipe by name."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; recipes: {', '.join(RECIPES)}")
    return _merge(RunConfig(recipe=name), RECIPES[name], origin=f"recipe {name!r}")
