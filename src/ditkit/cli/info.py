"""`ditkit info NAME`: parameters and Gflops of a preset, as the DiT paper counts them."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="parameters and Gflops of a model preset")
    p.add_argument("name", help="preset name, e.g. DiT-XL/2 (see `ditkit info --list`)", nargs="?")
    p.add_argument("--list", action="store_true", help="list every preset")
    p.add_argument(
        "--input-size",
        type=int,
        default=None,
        help="latent/pixel side (default: the preset's, 32 for DiT-*/N)",
    )
    p.add_argument(
        "--in-channels", type=int, default=None, help="input channels (default: the preset's, 4 for DiT-*/N)"
    )
    p.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="label classes (default: the preset's, 1000 for DiT-*/N)",
    )
    p.add_argument(
        "--block",
        default=None,
        help="block design: adaln-zero (default), adaln, cross-attention, in-context (DiT paper §3.2)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ditkit import MODEL_PRESETS, create_model, forward_flops

    if args.list or not args.name:
        rows = [(name, create_model(name, device="meta")) for name in MODEL_PRESETS]
        print(
            f"{'model':<12} {'depth':>5} {'width':>5} {'heads':>5} {'patch':>5} {'params':>14} {'Gflops':>8}"
        )
        for name, m in rows:
            c = m.config
            print(
                f"{name:<12} {c.depth:>5} {c.hidden_size:>5} {c.num_heads:>5} {c.patch_size:>5} "
                f"{m.num_parameters():>14,} {forward_flops(c) / 1e9:>8.2f}"
            )
        return 0
    overrides = {
        k: v
        for k, v in (
            ("input_size", args.input_size),
            ("in_channels", args.in_channels),
            ("num_classes", args.num_classes),
            ("block", args.block),
        )
        if v is not None
    }
    model = create_model(args.name, device="meta", **overrides)  # no memory, no init
    c = model.config
    print(f"model            {c.name or args.name}")
    print(f"depth / width    {c.depth} / {c.hidden_size} ({c.num_heads} heads, patch {c.patch_size})")
    print(
        f"block            {c.block}, {c.norm}-norm, {c.pos_embed} position embedding, final layer {c.final_layer}"
    )
    print(f"input            {c.in_channels}x{c.input_size}x{c.input_size} -> {c.num_tokens} tokens")
    print(f"output channels  {c.out_channels}" + (" (eps + learned variance)" if c.learn_sigma else " (eps)"))
    if c.cond_dim:
        print(
            f"condition        {c.cond_dim}-wide embedding" + (" + learned null" if c.has_null_label else "")
        )
    else:
        sizes = " x ".join(str(n) for n in c.label_sizes) or "none (unconditional)"
        null = " (+ null per attribute)" if c.multi_label else " (+ null)"
        print(f"classes          {sizes}" + (null if c.has_null_label else ""))
    if c.pos_embed == "sincos":
        print(
            f"parameters       {model.num_parameters():,} trainable + {model.pos_embed.numel():,} fixed pos-embed"
        )
    else:
        print(f"parameters       {model.num_parameters():,} trainable (learned pos-embed included)")
    print(f"Gflops           {forward_flops(c) / 1e9:.2f} (forward multiply-accumulates per image)")
    return 0
