"""`ditkit convert IN OUT --to official|diffusers|safetensors`: any supported model file or folder to another
format, every weight carried over exactly (or cast with --dtype)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a model between official, diffusers and ditkit formats",
        description="Convert a DiT between formats. IN may be an official .pt, an official train.py checkpoint, "
        "a diffusers transformer or pipeline folder, or any ditkit file or pipeline folder.",
    )
    p.add_argument("input", metavar="IN", help="model file or folder")
    p.add_argument(
        "output", metavar="OUT", help="output file (official: .pt, safetensors) or folder (diffusers)"
    )
    p.add_argument(
        "--to", required=True, choices=["official", "diffusers", "safetensors"], help="output format"
    )
    p.add_argument(
        "--dtype", choices=["fp32", "bf16", "fp16"], default=None, help="cast weights (default: keep)"
    )
    p.add_argument(
        "--pipeline",
        action="store_true",
        help="write a whole pipeline folder: a diffusers DiTPipeline (--to diffusers) or a ditkit pipeline "
        "(--to safetensors), with the VAE and class names",
    )
    p.add_argument("--vae", default=None, help="VAE folder to include with --pipeline (default: the input's)")
    p.add_argument("--no-ema", action="store_true", help="take the trained weights, not the EMA weights")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.add_argument(
        "--family", choices=["dit", "sit"], default=None, help="model family of IN (sit: a SiT .pt file)"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ditkit.io import convert

    result = convert(
        args.input,
        args.output,
        to=args.to,
        dtype=args.dtype,
        pipeline=args.pipeline,
        vae=args.vae,
        use_ema=not args.no_ema,
        overwrite=args.force,
        family=args.family,
    )
    src = result.source
    c = src.model.config
    print(
        f"read   {src.path} ({src.format}): depth {c.depth}, width {c.hidden_size}, patch {c.patch_size}, "
        f"input {c.input_size}, {c.num_classes} classes, arithmetic {c.arithmetic}"
    )
    print(
        f"wrote  {result.output} ({args.to}{' pipeline' if args.pipeline else ''}"
        f"{', ' + args.dtype if args.dtype else ''})"
    )
    for note in result.notes:
        print(f"note   {note}")
    return 0
