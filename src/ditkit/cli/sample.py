"""`ditkit sample --ckpt PATH --labels 3 7 ...`: images from a trained model.

Writes DIR/grid.png (one column per label), one PNG per image and DIR/samples.npz (`arr_0`: uint8 N×H×W×3,
`arr_1`: int64 labels), the layout of the ADM evaluation suite. `--ckpt` may be a checkpoint file, a run
folder (its newest checkpoint), a runs folder (the newest run), or any model `DiTPipeline.from_pretrained`
reads. Sampler, steps and guidance default to what the run's config says.

Multi-attribute models: `--label genre=landscape --label style=impressionism` (names case-insensitive; an
attribute left out is left free; several values of one attribute give one column each). Embedding models:
`--prompt "a red sunset"` or `--image photo.jpg` (repeatable), through the run's encoder or `--encoder SPEC`.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from typing import Any


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


def _load(path_arg: str, use_ema: bool, encoder_spec: str | None = None, vae: str | None = None):
    """(pipeline, sample defaults, description, training image size or None) for --ckpt."""
    from ditkit.config import SampleSection
    from ditkit.encoders import load_encoder
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
            attributes = names if isinstance(names, dict) and model.config.multi_label else None
            id2label = dict(enumerate(names)) if isinstance(names, list) and names else None
            spec = encoder_spec or (config.model.encoder if model.config.cond_dim else None)
            pipe = DiTPipeline(
                model,
                vae=vae or config.data.vae,
                id2label=id2label,
                attributes=attributes,
                encoder=load_encoder(spec),
            )
            pipe.process = GaussianDiffusion.from_schedule(
                config.process.schedule, config.process.num_timesteps, learn_sigma=model.config.learn_sigma
            )
            described = f"{path} (step {ckpt['step']}, {'EMA' if use_ema else 'raw'} weights)"
            return pipe, config.sample, described, config.data.image_size
    pipe = DiTPipeline.from_pretrained(path, use_ema=use_ema, encoder=load_encoder(encoder_spec), vae=vae)
    # Foreign models: the pipeline's own defaults (DDIM 50 steps, guidance 4, as diffusers).
    return pipe, SampleSection(sampler="ddim", steps=50, guidance_scale=4.0), str(path), None


# -- names -> ids -------------------------------------------------------------------------------------
def resolve_name(value: str, names: list[str] | None, size: int, what: str = "label") -> int:
    """A class id from a name (any comma-separated synonym, case-insensitive) or an id.

    Names win over ids: a class named "5" is found by its name even when it is not class 5."""
    text = " ".join(str(value).split())
    if not text:
        raise ValueError(f"empty {what}")
    if names:
        hits = {
            i
            for i, label in enumerate(names)
            if text.casefold() in {" ".join(s.split()).casefold() for s in [label, *label.split(",")]}
        }
        if len(hits) == 1:
            return hits.pop()
        if len(hits) > 1:
            options = "; ".join(f"{i} = {names[i]!r}" for i in sorted(hits))
            raise ValueError(f"{what} {value!r} is ambiguous: {options}; pass the class id instead")
    if text.lstrip("+-").isdigit():
        idx = int(text)
        if not 0 <= idx < size:
            raise ValueError(f"{what} {idx} is out of range; this model has classes 0..{size - 1}")
        return idx
    if not names:
        raise ValueError(f"{what} {value!r}: this model has no label names; pass class ids 0..{size - 1}")
    from ditkit.labels import LabelMap

    try:
        return LabelMap.from_id2label(dict(enumerate(names))).id(text)
    except ValueError as err:
        if len(names) > 40:
            raise ValueError(f"{what}: {err}" if what != "label" else str(err)) from None
        import difflib

        folded = {n.casefold(): n for n in names}
        close = difflib.get_close_matches(text.casefold(), list(folded), n=2, cutoff=0.6)
        hint = f" (did you mean {' or '.join(repr(folded[c]) for c in close)}?)" if close else ""
        raise ValueError(
            f"unknown {what} {value!r}{hint}; valid {what}s: {', '.join(names)} (or ids 0..{size - 1})"
        ) from None


def _single_ids(pipe, requested: list[str]) -> list[int]:
    n = pipe.transformer.config.num_classes
    names = [pipe.id2label.get(i, "") for i in range(n)] if pipe.id2label else None
    ids = []
    for item in requested:
        text = item
        if "=" in item and not (names and any(item.casefold() == x.casefold() for x in names)):
            text = item.split("=", 1)[1]  # "class=cat" -> "cat"
        ids.append(resolve_name(text, names, n))
    return ids


def _multi_rows(pipe, requested: list[str]) -> list[tuple[int | None, ...]]:
    """Cross product of the values given per attribute (None: the attribute is left free)."""
    cfg = pipe.transformer.config
    attrs = list(pipe.attributes) if pipe.attributes else [f"attr{k}" for k in range(len(cfg.label_sizes))]
    lower = {a.casefold(): k for k, a in enumerate(attrs)}
    chosen: dict[int, list[int]] = {}
    for item in requested:
        if "=" not in item:
            raise ValueError(
                f"label {item!r}: this model has several attributes ({', '.join(attrs)}); pass ATTR=NAME, e.g. "
                f"--label {attrs[0]}=..."
            )
        attr, value = (s.strip() for s in item.split("=", 1))
        k = lower.get(attr.casefold())
        if k is None:
            raise ValueError(f"unknown attribute {attr!r}; this model has {', '.join(attrs)}")
        names = pipe.attributes[attrs[k]] if pipe.attributes else None
        idx = resolve_name(value, names, cfg.label_sizes[k], what=f"{attrs[k]} label")
        if idx not in chosen.setdefault(k, []):
            chosen[k].append(idx)
    missing = [attrs[k] for k in range(len(attrs)) if k not in chosen]
    if missing and not cfg.has_null_label:
        raise ValueError(
            f"this model was trained without label dropout, so every attribute needs a value; missing: "
            f"{', '.join(missing)}"
        )
    options = [chosen.get(k, [None]) for k in range(len(attrs))]
    return [tuple(row) for row in itertools.product(*options)]


def _read_condition_images(paths: list[str], size: int):
    import torch

    from ditkit.data.images import UnreadableImage, decode_image, to_model_space

    out = []
    for p in paths:
        if not Path(p).is_file():
            raise FileNotFoundError(f"--image {p}: no such file")
        try:
            arr, _ = decode_image(p, size)
        except UnreadableImage as err:
            raise ValueError(f"--image {p}: not a readable image ({err})") from None
        out.append(to_model_space(arr))
    return torch.stack(out)


def _columns(pipe, args, image_size: int | None) -> tuple[list[dict[str, Any]], list[str], list[Any]]:
    """(pipeline kwargs per column, file tag per column, npz label per column)."""
    import torch

    cfg = pipe.transformer.config
    labels = [*(args.labels or []), *args.label]
    wants_embedding = bool(args.prompt or args.image)
    if cfg.cond_dim:
        if labels:
            raise ValueError(
                "this model is conditioned on embeddings: pass --prompt TEXT or --image PATH, not labels"
            )
        if not wants_embedding:
            raise ValueError("this model is conditioned on embeddings: pass --prompt TEXT or --image PATH")
        if pipe.encoder is None:
            raise ValueError("prompts and images need an encoder: pass --encoder SPEC (e.g. toy:64)")
        conds = []
        if args.prompt:
            conds.append(pipe.encoder.encode_text(list(args.prompt)).float())
        if args.image:
            images = _read_condition_images(args.image, image_size or 256)
            conds.append(pipe.encoder.encode_image(images).float())
        cond = torch.cat(conds).cpu()
        if cond.shape[1] != cfg.cond_dim:
            raise ValueError(
                f"the encoder gives {cond.shape[1]}-wide embeddings but this model expects {cfg.cond_dim}; use the "
                "encoder the model was trained with"
            )
        tags = [f"p{k}" for k in range(len(args.prompt))] + [f"i{k}" for k in range(len(args.image))]
        return [{"condition": c[None]} for c in cond], tags, list(range(len(tags)))
    if wants_embedding:
        what = "class labels" if cfg.label_sizes else "nothing (unconditional)"
        raise ValueError(
            f"this model is conditioned on {what}; --prompt/--image need a model trained with an encoder "
            "(model.encoder)" + ("; use --label/--labels" if cfg.label_sizes else "")
        )
    if not cfg.label_sizes:
        if labels:
            raise ValueError("this model is unconditional; drop --labels")
        return [{} for _ in range(8)], [""] * 8, [-1] * 8
    if cfg.multi_label:
        if labels:
            rows = _multi_rows(pipe, labels)
        else:  # like the training grid: the first attribute's classes, the others free
            free = None if cfg.has_null_label else 0
            rest = (free,) * (len(cfg.label_sizes) - 1)
            rows = [(i, *rest) for i in range(min(cfg.label_sizes[0], 8))]
        nulls = cfg.label_sizes
        tags = ["-".join("x" if v is None else str(v) for v in row) for row in rows]
        arrs = [[nulls[k] if v is None else v for k, v in enumerate(row)] for row in rows]
        return [{"class_labels": [list(row)]} for row in rows], tags, arrs
    n = cfg.num_classes
    ids = _single_ids(pipe, labels) if labels else (list(range(n)) if n <= 16 else list(range(8)))
    return [{"class_labels": [i]} for i in ids], [str(i) for i in ids], ids


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ditkit.train.loop import pick_device
    from ditkit.train.monitor import make_grid

    pipe, defaults, description, image_size = _load(
        args.ckpt, use_ema=not args.no_ema, encoder_spec=args.encoder, vae=args.vae
    )
    columns, tags, npz_labels = _columns(pipe, args, image_size)
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
    conditional = bool(cfg.label_sizes) or bool(cfg.cond_dim)
    order = [c for _ in range(per_label) for c in range(len(columns))]
    ncol = len(columns)
    print(f"sampling {len(order)} images from {description}: {sampler} {steps} steps, guidance {guidance:g}")
    images = []
    for start in range(0, len(order), args.batch_size):
        chunk = order[start : start + args.batch_size]
        gens = [torch.Generator().manual_seed(seed * 1_000_003 + start + i) for i in range(len(chunk))]
        if cfg.cond_dim:
            kwargs: dict[str, Any] = {"condition": torch.cat([columns[c]["condition"] for c in chunk])}
        elif conditional:
            kwargs = {"class_labels": [columns[c]["class_labels"][0] for c in chunk]}
        else:
            kwargs = {"num_images": len(chunk)}
        out = pipe(
            **kwargs,
            num_inference_steps=steps,
            guidance_scale=guidance if conditional else 1.0,
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
    names = []
    for i, (img, c) in enumerate(zip(u8, order)):
        name = f"{i:06d}_{tags[c]}.png" if tags[c] else f"{i:06d}.png"
        Image.fromarray(img).save(out_dir / name)
        names.append(name)
    np.savez(
        out_dir / "samples.npz", arr_0=u8, arr_1=np.asarray([npz_labels[c] for c in order], dtype=np.int64)
    )
    make_grid(arr, ncol).save(out_dir / "grid.png")
    print(f"grid        {out_dir / 'grid.png'}")
    print(f"images      {out_dir}/{names[0]} ... ({len(names)} PNGs)")
    print(f"arrays      {out_dir / 'samples.npz'} (arr_0 uint8 {tuple(u8.shape)}, arr_1 int64 labels)")
    if cfg.multi_label and pipe.attributes:
        attrs = list(pipe.attributes)
        for tag, col in zip(tags, columns):
            row = col["class_labels"][0]
            shown = ", ".join(
                f"{a}={'(free)' if v is None else pipe.attributes[a][v]}" for a, v in zip(attrs, row)
            )
            print(f"column {tag:<12} {shown}")
    return 0
