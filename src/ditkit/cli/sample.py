"""`ditkit sample --ckpt PATH --labels 3 7 ...`: images from a trained model.

Writes DIR/grid.png (one column per label), one PNG per image and DIR/samples.npz (`arr_0`: uint8 N×H×W×3,
`arr_1`: int64 labels, the layout of the ADM evaluation suite; `meta`: a JSON string with sampler, steps,
guidance, interval and grid). `--ckpt` may be a checkpoint file, a run folder (its newest checkpoint), a runs
folder (the newest run), or any model `DiTPipeline.from_pretrained` reads. Sampler and guidance default to
the run's config, steps to the run's when its sampler is used, else the sampler's own default (ddpm 250,
ddim 50, euler 50, heun 25, dpm++2m 20, unipc 20, euler-sde 100).

--out DIR must be new, empty or a folder an earlier `ditkit sample` wrote (its files are listed in
.ditkit-samples.json): the previous outputs there are replaced, nothing else is touched.
Unconditional models draw --num-per-label images in all (default 16).

Multi-attribute models: `--label genre=landscape --label style=impressionism` (names case-insensitive; an
attribute left out is left free; several values of one attribute give one column each). Embedding models:
`--prompt "a red sunset"` or `--image photo.jpg` (repeatable), through the run's encoder or `--encoder SPEC`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .sample_columns import grid_columns
from .sample_outputs import print_columns, print_outputs, sample_all, sample_meta, to_uint8_rgb


def _check_flags(args: argparse.Namespace) -> None:
    """One-line errors for flag values that are never replaced by defaults."""
    import math

    for flag, value in (
        ("--steps", args.steps),
        ("--num-per-label", args.num_per_label),
        ("--batch-size", args.batch_size),
        ("--num", getattr(args, "num", None)),
    ):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
    if args.guidance_scale is not None and not math.isfinite(args.guidance_scale):
        raise ValueError(
            f"--guidance-scale must be a finite number (1 = no guidance), got {args.guidance_scale}"
        )
    if args.guidance_interval is not None:
        lo, hi = args.guidance_interval
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi <= 1):
            raise ValueError(
                f"--guidance-interval {lo:g} {hi:g} must satisfy 0 <= LO <= HI <= 1 (fractions of the noise range)"
            )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="sample images from a checkpoint (grid.png, PNGs, samples.npz)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--ckpt", default="runs", help="checkpoint, run folder, runs folder or model folder (default: ./runs)"
    )
    _add_condition_flags(p)
    _add_sampling_flags(p)
    _add_output_flags(p)
    p.set_defaults(run=run)


def _add_condition_flags(p: argparse.ArgumentParser) -> None:
    """What to condition on, and the encoder and VAE to use."""
    p.add_argument(
        "--labels", nargs="+", metavar="LABEL", help="class ids or names (default: every class, up to 16)"
    )
    p.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="[ATTR=]NAME",
        help="a class by name; ATTR=NAME for one attribute of a multi-attribute model (repeatable)",
    )
    p.add_argument(
        "--prompt", action="append", default=[], metavar="TEXT", help="text condition (embedding models)"
    )
    p.add_argument(
        "--image", action="append", default=[], metavar="PATH", help="image condition (embedding models)"
    )
    p.add_argument("--encoder", metavar="SPEC", help="condition encoder, e.g. toy:64 (default: the run's)")
    p.add_argument(
        "--vae",
        metavar="PATH",
        help="a local AutoencoderKL folder (e.g. sd-vae-ft-ema) to decode latents; default: the run's VAE, "
        "a pipeline folder's vae/, else pixel space",
    )
    p.add_argument(
        "--family", choices=["dit", "sit"], default=None, help="model family of --ckpt (sit: SiT .pt)"
    )


def _add_sampling_flags(p: argparse.ArgumentParser) -> None:
    """Images per label, guidance, sampler, steps, grid and seed."""
    from ditkit.sampling import DDPM_SPACINGS, sampler_names

    p.add_argument(
        "--num-per-label",
        type=int,
        default=None,
        metavar="N",
        help="images per label (default: the run's, 4); unconditional models: images in all (default 16)",
    )
    p.add_argument("--guidance-scale", type=float, default=None, metavar="S", help="1 = no guidance")
    p.add_argument(
        "--guidance-interval",
        type=float,
        nargs=2,
        default=None,
        metavar=("LO", "HI"),
        help="guide only where the noise level (t/1000) lies in [LO, HI], e.g. 0 0.7 (cheaper; LO = HI: none)",
    )
    p.add_argument(
        "--guide-ckpt",
        metavar="PATH",
        help="autoguidance: guide with this weaker model of the same kind (e.g. an earlier checkpoint)",
    )
    p.add_argument("--steps", type=int, default=None, metavar="K", help="sampling steps")
    p.add_argument("--sampler", choices=list(sampler_names()), default=None)
    p.add_argument(
        "--grid",
        choices=list(DDPM_SPACINGS),
        default=None,
        metavar="SPACING",
        help=f"timestep grid of DDPM models: {', '.join(DDPM_SPACINGS)} (default: the sampler's own)",
    )
    p.add_argument("--seed", type=int, default=None, metavar="N")


def _add_output_flags(p: argparse.ArgumentParser) -> None:
    """Output folder, weights, batching, device and precision, and sampling at scale (--num)."""
    p.add_argument("--out", default="samples", metavar="DIR", help="output folder (default ./samples)")
    p.add_argument("--no-ema", action="store_true", help="use the raw training weights instead of the EMA")
    p.add_argument("--batch-size", type=int, default=256, metavar="N", help="images per forward batch")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="network weights while sampling (auto: bf16 where the device runs it fast, else fp32); "
        "schedules, guidance and solver arithmetic stay fp32",
    )
    p.add_argument(
        "--num",
        type=int,
        default=None,
        metavar="N",
        help="sample N images at scale into one .npz (ADM layout; resumable shards; one seed per image index; "
        "works under torchrun)",
    )
    p.add_argument(
        "--npz",
        default=None,
        metavar="OUT.npz",
        help="with --num: the .npz to write (default: an official-style name in --out)",
    )
    p.add_argument(
        "--class-mode",
        choices=["random", "balanced"],
        default="random",
        help="with --num: labels drawn at random, or the same number of images per class",
    )
    p.add_argument("--no-progress", action="store_true")


def build_pipeline(args: argparse.Namespace):
    """The DiTPipeline for --ckpt (run folders resolve to their newest checkpoint), on --device."""
    from ditkit.encoders import load_encoder
    from ditkit.pipeline import DiTPipeline
    from ditkit.runtime import pick_device
    from ditkit.train.checkpoint import model_path

    path = model_path(args.ckpt, "--ckpt")
    guide = str(model_path(args.guide_ckpt, "--guide-ckpt")) if getattr(args, "guide_ckpt", None) else None
    pipe = DiTPipeline.from_pretrained(
        path,
        use_ema=not args.no_ema,
        encoder=load_encoder(args.encoder) if args.encoder else None,
        vae=args.vae,
        family=getattr(args, "family", None),
        guide_model=guide,
    )
    from ditkit.runtime import dist_env, inference_dtype

    device = pick_device(args.device, dist_env().local_rank)
    pipe.to(device, inference_dtype(device, getattr(args, "precision", "auto")))
    return pipe


def settings(pipe, args: argparse.Namespace) -> dict[str, Any]:
    """Sampler, steps, guidance, interval, images per label and seed from the flags and the run's defaults."""
    from ditkit.sampling import get_sampler

    run = pipe.sample_defaults
    foreign = not run
    sampler = args.sampler or run.get("sampler") or "ddim"
    if args.steps is not None:
        steps = args.steps
    elif sampler == run.get("sampler") and run.get("steps"):
        steps = int(run["steps"])
    else:
        steps = get_sampler(sampler).default_steps
    cfg = pipe.transformer.config
    conditional = bool(cfg.label_sizes) or bool(cfg.cond_dim)
    guided_by = "autoguidance" if pipe.guide_model is not None else ("cfg" if conditional else None)
    guidance = args.guidance_scale
    if guidance is None:
        guidance = 4.0 if foreign else float(run.get("guidance_scale", 4.0))
        if guided_by == "cfg" and not cfg.has_null_label:
            guidance = 1.0  # trained without label dropout: nothing to guide with
        if guided_by is None:
            guidance = 1.0
    elif guided_by is None and guidance != 1.0:
        raise ValueError(
            "this model is unconditional: --guidance-scale needs --guide-ckpt PATH (autoguidance); drop it"
        )
    elif guided_by == "cfg" and guidance != 1.0 and not cfg.has_null_label:
        raise ValueError(
            "this model was trained without label dropout (no null label), so it cannot be guided; "
            "use --guidance-scale 1"
        )
    per_label = args.num_per_label or (16 if not conditional else int(run.get("num_per_label", 4)))
    seed = int(run.get("seed", 0)) if args.seed is None else args.seed
    interval = tuple(args.guidance_interval) if args.guidance_interval else None
    return {
        "sampler": sampler,
        "steps": steps,
        "guidance_scale": guidance if guided_by else 1.0,
        "guidance": guided_by if guidance != 1.0 else None,
        "guidance_interval": interval,
        "num_per_label": per_label,
        "grid": args.grid,
        "seed": seed,
    }


def describe(pipe, s: dict[str, Any]) -> str:
    """The header's sampler and guidance part, e.g. "dpm++2m, 20 steps ('uniform' grid), guidance 1.5"."""
    from ditkit.sampling import get_sampler

    spec = get_sampler(s["sampler"])
    spacing = s.get("grid") or (spec.spacing if not pipe.is_flow else "linspace")
    guide = " + the guide's" if s["guidance"] == "autoguidance" else ""
    text = (
        f"{s['sampler']}, {s['steps']} steps ({spacing!r} grid, {spec.nfe(s['steps'])} NFE per image{guide})"
    )
    cfg = pipe.transformer.config
    if s["guidance"] is None:
        unconditional = not (cfg.label_sizes or cfg.cond_dim)
        return text + (", no guidance (unconditional model)" if unconditional else ", no guidance")
    kind = "autoguidance" if s["guidance"] == "autoguidance" else "classifier-free"
    interval = s["guidance_interval"]
    where = f", interval {interval[0]:g}-{interval[1]:g}" if interval else ""
    return text + f", guidance {s['guidance_scale']:g} ({kind}{where})"


def _run_npz(pipe, s: dict[str, Any], args: argparse.Namespace) -> int:
    """`--num N`: sample at scale into one .npz (see ditkit.sample_at_scale)."""
    from ditkit.runtime import dist_env
    from ditkit.sample_at_scale import sample_to_npz

    if args.labels or args.label or args.prompt or args.image:
        raise ValueError("--num samples labels by --class-mode; drop --labels/--label/--prompt/--image")
    path = sample_to_npz(
        pipe,
        args.num,
        args.npz,
        class_mode=args.class_mode,
        batch_size=args.batch_size,
        seed=s["seed"],
        checkpoint=str(pipe.source.get("path", args.ckpt)),
        progress=not args.no_progress,
        out_dir=args.out,
        sampler=s["sampler"],
        num_inference_steps=s["steps"],
        guidance_scale=s["guidance_scale"],
        guidance_interval=s["guidance_interval"] if s["guidance"] else None,
    )
    if dist_env().rank == 0:
        from ditkit.runtime import precision_name

        print(
            f"sampled {args.num} images ({describe(pipe, s)}, {precision_name(pipe.dtype)} weights) -> {path}"
        )
    return 0


def _check_model(pipe, s: dict[str, Any]) -> None:
    """Refuse more steps than a DDPM model's timesteps, and latents with no VAE to decode them."""
    limit = pipe.process.num_timesteps if not pipe.is_flow else None
    if limit is not None and s["steps"] > limit:
        raise ValueError(
            f"--steps {s['steps']} exceeds this model's {limit} training timesteps; use 1..{limit}"
        )
    channels = pipe.transformer.config.in_channels
    if pipe.vae is None and channels not in (1, 3):
        raise ValueError(
            f"this model has {channels} input channels and no VAE to decode them into images; pass --vae PATH "
            "(a local AutoencoderKL folder, e.g. sd-vae-ft-ema)"
        )


def _header(pipe, s: dict[str, Any], count: int, args: argparse.Namespace) -> str:
    """The line printed before sampling: how many images, from which weights, at which precision, how."""
    from ditkit.runtime import precision_name

    src = pipe.source
    where = ", ".join(
        x
        for x in (
            f"step {src['step']}" if src.get("step") is not None else "",
            "EMA" if src.get("ema") else "raw",
        )
        if x
    )
    return (
        f"sampling {count} images from {src.get('path', args.ckpt)} ({where} weights, "
        f"{precision_name(pipe.dtype)}): {describe(pipe, s)}"
    )


def _run_folder(pipe, s: dict[str, Any], args: argparse.Namespace, stale) -> int:
    """Sample --num-per-label images per column into --out: grid.png, one PNG per image, samples.npz."""
    from ditkit.sampling.outputs import write_sample_folder
    from ditkit.train.monitor import make_grid

    columns, tags, npz_labels = grid_columns(pipe, args, pipe.source.get("image_size"))
    cfg = pipe.transformer.config
    conditional = bool(cfg.label_sizes) or bool(cfg.cond_dim)
    order = [c for _ in range(s["num_per_label"]) for c in range(len(columns))]
    ncol = len(columns) if conditional else min(8, len(order))
    print(_header(pipe, s, len(order), args))
    arr, info = sample_all(pipe, columns, order, s, args)
    u8 = to_uint8_rgb(arr)
    names = [f"{i:06d}_{tags[c]}.png" if tags[c] else f"{i:06d}.png" for i, c in enumerate(order)]
    meta = sample_meta(pipe, s, info)
    out_dir = Path(args.out)
    write_sample_folder(out_dir, u8, [npz_labels[c] for c in order], meta, make_grid(arr, ncol), names, stale)
    print_outputs(out_dir, names, u8.shape)
    if cfg.multi_label and pipe.attributes:
        print_columns(pipe, tags, columns)
    return 0


def run(args: argparse.Namespace) -> int:
    from ditkit.sampling.outputs import previous_outputs

    _check_flags(args)
    stale = previous_outputs(args.out)  # refuse a foreign folder before any work
    pipe = build_pipeline(args)
    s = settings(pipe, args)
    _check_model(pipe, s)
    if args.num is not None:
        return _run_npz(pipe, s, args)
    return _run_folder(pipe, s, args, stale)
