"""`ditkit sample --ckpt PATH --labels 3 7 ...`: images from a trained model.

Writes DIR/grid.png (one column per label), one PNG per image and DIR/samples.npz (`arr_0`: uint8 N×H×W×3,
`arr_1`: int64 labels), the layout of the ADM evaluation suite. `--ckpt` may be a checkpoint file, a run
folder (its newest checkpoint), a runs folder (the newest run), or any model `DiTPipeline.from_pretrained`
reads. Sampler, steps and guidance default to what the run's config says.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample", help="sample images from a checkpoint (grid.png, PNGs, samples.npz)", description=__doc__
    )
    p.add_argument(
        "--ckpt", default="runs", help="checkpoint, run folder, runs folder or model folder (default: ./runs)"
    )
    p.add_argument(
        "--labels", nargs="+", metavar="LABEL", help="class ids or names (default: every class, up to 16)"
    )
    p.add_argument(
        "--num-per-label", type=int, default=None, metavar="N", help="images per label (default 4)"
    )
    p.add_argument("--guidance-scale", type=float, default=None, metavar="S", help="1 = no guidance")
    p.add_argument("--steps", type=int, default=None, metavar="K", help="sampling steps")
    p.add_argument("--sampler", choices=["ddpm", "ddim"], default=None)
    p.add_argument("--seed", type=int, default=None, metavar="N")
    p.add_argument("--out", default="samples", metavar="DIR", help="output folder (default ./samples)")
    p.add_argument("--no-ema", action="store_true", help="use the raw training weights instead of the EMA")
    p.add_argument("--batch-size", type=int, default=256, metavar="N", help="images per forward batch")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)


def _load(path_arg: str, use_ema: bool):
    """(pipeline, sample defaults, description) for --ckpt."""
    from ditkit.config import SampleSection
    from ditkit.io.native import is_ditkit_checkpoint, model_from_checkpoint, safe_torch_load
    from ditkit.pipeline import DiTPipeline
    from ditkit.train.checkpoint import find_checkpoint, list_checkpoints, list_runs

    path = Path(path_arg)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint, run folder or model folder")
    if path.is_dir() and (list_checkpoints(path) or list_runs(path)):
        path = find_checkpoint(path)
    if path.is_file() and path.suffix == ".pt":
        ckpt = safe_torch_load(path)
        if is_ditkit_checkpoint(ckpt):
            from ditkit.config import RunConfig
            from ditkit.diffusion import GaussianDiffusion

            config = RunConfig.from_dict(ckpt["config"], origin=str(path))
            model = model_from_checkpoint(ckpt, use_ema=use_ema, path=str(path))
            names = ckpt.get("label_names")
            vae = config.data.vae
            pipe = DiTPipeline(model, vae=vae, id2label=dict(enumerate(names)) if names else None)
            pipe.process = GaussianDiffusion.from_schedule(
                config.process.schedule, config.process.num_timesteps, learn_sigma=model.config.learn_sigma
            )
            return pipe, config.sample, f"{path} (step {ckpt['step']}, {'EMA' if use_ema else 'raw'} weights)"
    pipe = DiTPipeline.from_pretrained(path, use_ema=use_ema)
    # Foreign models: the pipeline's own defaults (DDIM 50 steps, guidance 4, as diffusers).
    return pipe, SampleSection(sampler="ddim", steps=50, guidance_scale=4.0), str(path)


def _resolve_labels(pipe, requested: list[str] | None) -> list[int]:
    n = pipe.transformer.config.num_classes
    if n == 0:
        if requested:
            raise ValueError("this model is unconditional; drop --labels")
        return []
    if not requested:
        return list(range(n)) if n <= 16 else list(range(8))
    if not pipe.id2label:
        ids = []
        for item in requested:
            if not item.lstrip("-").isdigit():
                raise ValueError(f"label {item!r}: this model has no label names; pass class ids 0..{n - 1}")
            ids.append(int(item))
    else:
        try:
            ids = pipe.get_label_ids(requested)
        except ValueError as err:
            if len(pipe.id2label) <= 40:
                names = ", ".join(pipe.id2label[i] for i in sorted(pipe.id2label))
                raise ValueError(
                    f"{str(err).split(';')[0]}; valid labels: {names} (or ids 0..{n - 1})"
                ) from None
            raise
    for i in ids:
        if not 0 <= i < n:
            raise ValueError(f"label {i} is out of range; this model has classes 0..{n - 1}")
    return ids


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ditkit.train.loop import pick_device
    from ditkit.train.monitor import make_grid

    pipe, defaults, description = _load(args.ckpt, use_ema=not args.no_ema)
    labels = _resolve_labels(pipe, args.labels)
    per_label = args.num_per_label or defaults.num_per_label
    steps = args.steps or defaults.steps
    sampler = args.sampler or defaults.sampler
    seed = defaults.seed if args.seed is None else args.seed
    guidance = defaults.guidance_scale if args.guidance_scale is None else args.guidance_scale
    cfg = pipe.transformer.config
    if not cfg.has_null_label and args.guidance_scale is None:
        guidance = 1.0  # trained without label dropout: nothing to guide with
    if per_label < 1 or steps < 1 or args.batch_size < 1:
        raise ValueError("--num-per-label, --steps and --batch-size must be positive")
    device = pick_device(args.device)
    pipe.to(device)
    if device.type == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))

    # One column per label, one row per repeat; one generator per image, so an image does not depend on
    # the batch size or its position.
    if labels:
        asked = [lab for _ in range(per_label) for lab in labels]
        ncol = len(labels)
    else:
        asked, ncol = [-1] * (8 * per_label), 8
    print(f"sampling {len(asked)} images from {description}: {sampler} {steps} steps, guidance {guidance:g}")
    images = []
    for start in range(0, len(asked), args.batch_size):
        chunk = asked[start : start + args.batch_size]
        gens = [torch.Generator().manual_seed(seed * 1_000_003 + start + i) for i in range(len(chunk))]
        kwargs = {"class_labels": chunk} if labels else {"num_images": len(chunk)}
        out = pipe(
            **kwargs,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=gens,
            output_type="np",
            sampler=sampler,
            progress=not args.no_progress,
        )
        images.append(out.images)
    arr = np.concatenate(images)  # (N, H, W, C) in [0, 1]
    u8 = (arr * 255).round().clip(0, 255).astype(np.uint8)
    if u8.shape[-1] == 1:
        u8 = np.repeat(u8, 3, axis=-1)
    elif u8.shape[-1] != 3:
        u8 = u8[..., :3]

    from PIL import Image

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, (img, lab) in enumerate(zip(u8, asked)):
        Image.fromarray(img).save(out_dir / (f"{i:06d}_{lab}.png" if lab >= 0 else f"{i:06d}.png"))
    np.savez(out_dir / "samples.npz", arr_0=u8, arr_1=np.asarray(asked, dtype=np.int64))
    make_grid(arr, ncol).save(out_dir / "grid.png")
    print(f"grid        {out_dir / 'grid.png'}")
    print(f"images      {out_dir}/000000{'_' + str(asked[0]) if labels else ''}.png ... ({len(asked)} PNGs)")
    print(f"arrays      {out_dir / 'samples.npz'} (arr_0 uint8 {tuple(u8.shape)}, arr_1 int64 labels)")
    return 0
