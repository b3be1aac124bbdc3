"""Run recipes by name: overrides on top of the defaults of `ditkit.config` (which are the `digits` recipe).

`ditkit train NAME` picks one; `ditkit train --dry-run NAME` prints what it resolves to. Each entry cites
where its numbers come from. This module is plain data (no imports from ditkit.config, so no import cycle);
`ditkit.config.recipe(name)` turns an entry into a RunConfig.

Which recipe without a name: `ditkit train` alone trains `digits`; `ditkit train --data PATH` (no recipe
named) trains `data`, the generic recipe below, whose image size and network follow the data.
"""

from __future__ import annotations

from typing import Any

RECIPES: dict[str, dict[str, Any]] = {
    # The embedded default (the dataclass defaults): scikit-learn's 8x8 digits in pixel space, the 1.27M-
    # parameter digits DiT (depth 4, width 128, patch 2) trained by flow matching (velocity on the linear
    # path, as SiT trains the same network), 1000 steps at batch 64 and lr 2e-3, sampled with 10 dpm++2m
    # steps at guidance 1.5: under a minute on 2 CPU cores for ~99.5% of samples classified as the digit asked
    # for. At the same budget DDPM reaches ~91-98%: flow matching learns these digits in fewer samples, and
    # samples in 10 steps instead of 100. Tuned with benchmarks/digits_quality.py (figures in its docstring).
    "digits": {},
    # The same digits on the official DiT process (DDPM, linear betas, learned variance, hybrid loss), as the
    # embedded default was before flow matching: 1500 steps at batch 128, sampled with 100 DDPM steps.
    # About 2.5 minutes on 2 CPU cores for ~99.8% (benchmarks/digits_quality.py).
    "digits-ddpm": {
        "process": {"kind": "ddpm"},
        "train": {"max_steps": 1500, "batch_size": 128},
        "sample": {"sampler": "ddpm", "steps": 100},
    },
    # The generic recipe for your own data (`ditkit train --data PATH` with no recipe named). The image size
    # follows the data (data.image_size 0: 256 with a VAE, the images' own size up to 64 in pixel space), and
    # so does the network (model "auto": DiT-S/2 for inputs up to 32 (a VAE's 32x32 latents at 256px),
    # DiT-S/4 above). AdamW at the official DiT lr 1e-4, constant, batch 32 (a laptop or one GPU; the
    # official batch is 256 at the same lr), EMA 0.9999 with warmup, 10K steps. The trainer measures the
    # seconds per step before step 1 and prints the whole run's estimated time.
    "data": {
        "process": {"kind": "ddpm"},  # the official DiT process
        "model": {"name": "auto"},
        "data": {"path": "", "image_size": 0, "num_workers": 2},
        "train": {
            "max_steps": 10000,
            "batch_size": 32,
            "lr": 1e-4,
            "lr_schedule": "constant",
            "log_every": 50,
            "ckpt_every": 1000,
            "sample_every": 1000,
        },
        "sample": {"sampler": "ddpm", "steps": 100, "guidance_scale": 4.0, "num_per_label": 2},
    },
    # DiT-WikiArt (seed 000): the DiT-WikiArt-S network (post-norm, learned position embedding, epsilon only),
    # AdamW with torch defaults, linear warmup over the first 1% of steps to 3e-4, cosine decay to zero,
    # horizontal flips, SD VAE (ft-ema) latents at 256px. 96 epochs of 103K images at batch 176 for the S
    # size: about 56K steps. Needs data.path and a local data.vae folder.
    "wikiart": {
        "process": {"kind": "ddpm"},  # the official DiT process
        "model": {"name": "DiT-WikiArt-S"},
        "data": {
            "path": "",
            "label_columns": ["genre", "style"],  # huggan/wikiart: one label table per attribute
            "image_size": 256,
            "hflip": True,
            "vae": "stabilityai/sd-vae-ft-ema",
            "num_workers": 4,  # capped at the usable cores (the trainer says so), so torch never warns
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
        "process": {"kind": "ddpm"},  # the official DiT process
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
        "process": {"kind": "ddpm"},  # the official DiT process
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


def recipe(name: str):
    """The RunConfig of a recipe by name (kept here for callers; the merge lives in ditkit.config)."""
    from .config import recipe as build

    return build(name)
