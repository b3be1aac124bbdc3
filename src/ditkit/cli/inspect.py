"""`ditkit inspect PATH`: what a model file or folder holds (format, config, size, EMA, class names)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="show the format, config, size and labels of a model file or folder")
    p.add_argument("path", metavar="PATH", help="model file or folder")
    p.add_argument("--no-ema", action="store_true", help="inspect the trained weights, not the EMA weights")
    p.add_argument("--labels", type=int, default=5, metavar="N", help="class names to show (default 5)")
    p.add_argument(
        "--family", choices=["dit", "sit"], default=None, help="model family (sit: a SiT .pt file)"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ditkit.io import load_any

    loaded = load_any(args.path, use_ema=not args.no_ema, family=args.family)
    model, c = loaded.model, loaded.model.config
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters()})
    ema = {True: "yes" + (" (loaded)" if not args.no_ema else ""), False: "no", None: "n/a (weights only)"}
    print(f"path          {loaded.path}")
    print(f"format        {loaded.format}")
    print(
        f"model         {c.name or 'custom'}: depth {c.depth}, width {c.hidden_size}, {c.num_heads} heads, "
        f"patch {c.patch_size}, mlp ratio {c.mlp_ratio:g}"
    )
    print(f"input         {c.in_channels}x{c.input_size}x{c.input_size} ({c.num_tokens} tokens)")
    print(
        f"output        {c.out_channels} channels"
        + (" (eps + learned variance)" if c.learn_sigma else " (eps)")
        if c.time_input == "ddpm"
        else f"output        {c.out_channels} channels (velocity{', unused sigma' if c.learn_sigma else ''}; time {c.time_input})"
    )
    print(f"classes       {c.num_classes}" + (" + null" if c.has_null_label else ""))
    print(f"arithmetic    {c.arithmetic}")
    print(
        f"parameters    {model.num_parameters():,} ({', '.join(dtypes)}) + {model.pos_embed.numel():,} fixed pos-embed"
    )
    print(f"EMA           {ema[loaded.has_ema]}")
    if loaded.id2label:
        shown = ", ".join(f"{i}: {loaded.id2label[i]}" for i in list(loaded.id2label)[: max(args.labels, 0)])
        print(
            f"labels        {len(loaded.id2label)} names; {shown}"
            + (" ..." if len(loaded.id2label) > args.labels else "")
        )
    else:
        print("labels        none (classes by id only)")
    print(f"VAE           {loaded.vae_path if loaded.vae_path else 'none in this file'}")
    if "scheduler_config" in loaded.extra:
        s = loaded.extra["scheduler_config"]
        print(
            f"scheduler     {s.get('_class_name')} ({s.get('num_train_timesteps')} steps, {s.get('beta_schedule')})"
        )
    for note in loaded.notes:
        print(f"note          {note}")
    return 0
