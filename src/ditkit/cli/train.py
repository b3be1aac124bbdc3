"""`ditkit train [CONFIG] [--set key=value ...] [--dry-run] [--resume PATH|auto]`.

With no arguments it trains the embedded default: a small DiT on scikit-learn's digits by flow matching, on
the CPU, in about a minute, then prints where the checkpoint and the sample grid are. Works unchanged under
`torchrun --nproc_per_node=N`.

Your data: `--data PATH` takes a folder with one subfolder per class, a folder of images with a CSV/JSONL
manifest, a Parquet/Arrow file, a Hugging Face datasets folder, a CelebA folder or a latent cache from
`ditkit encode`; `--label-columns genre style` picks the attributes to condition on; `--vae PATH` trains
in latent space; `--init-from PATH` fine-tunes pretrained weights on the new label set.
"""

from __future__ import annotations

import argparse

# plain flag -> dotted config key
FLAGS = {
    "model": "model.name",
    "data": "data.path",
    "image_size": "data.image_size",
    "max_steps": "train.max_steps",
    "batch_size": "train.batch_size",
    "grad_accum": "train.grad_accum",
    "lr": "train.lr",
    "ckpt_every": "train.ckpt_every",
    "sample_every": "train.sample_every",
    "log_every": "train.log_every",
    "output_dir": "train.output_dir",
    "seed": "train.seed",
    "device": "train.device",
    "precision": "train.precision",
    "process": "process.kind",
    "eval_every": "train.eval_every",
    "vae": "data.vae",
    "init_from": "model.init_from",
    "encoder": "model.encoder",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a DiT (no arguments: the embedded digits default, about a minute on a CPU)",
        description=__doc__.split("\n\n")[1],
    )
    p.add_argument(
        "config",
        nargs="?",
        help="a recipe (digits [the default without --data], data [the default with --data: image size, network, "
        "lr and batch follow your data], wikiart, finetune, imagenet) or a YAML/JSON config file",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override any config value, e.g. --set train.lr=3e-4 data.hflip=true (see --dry-run for keys)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument(
        "--resume",
        metavar="PATH|auto",
        help="continue a run: a checkpoint, a run folder, a runs folder, or 'auto' (the newest run)",
    )
    g = p.add_argument_group("everyday settings (shortcuts for --set)")
    g.add_argument("--model", help="model preset, e.g. DiT-S/2 (see `ditkit info --list`)")
    g.add_argument(
        "--data",
        metavar="PATH",
        help="'digits' (built in), a folder of class subfolders, a folder with a CSV/JSONL manifest, a "
        ".parquet/.arrow file, a Hugging Face datasets folder, a CelebA folder or a latent cache",
    )
    g.add_argument(
        "--label-columns",
        nargs="+",
        metavar="COL",
        help="attributes to condition on, e.g. genre style (several: one table per attribute), Male (CelebA); "
        "'none' trains unconditionally",
    )
    g.add_argument("--vae", metavar="PATH", help="a local AutoencoderKL folder: train in its latent space")
    g.add_argument("--hflip", action="store_true", help="random horizontal flips (data.hflip=true)")
    g.add_argument(
        "--allow-outside-paths",
        action="store_true",
        help="let a manifest name images outside the data folder (data.allow_outside_paths=true)",
    )
    g.add_argument(
        "--init-from",
        metavar="PATH",
        help="fine-tune: start from these weights (official .pt, diffusers folder, ditkit checkpoint)",
    )
    g.add_argument(
        "--encoder",
        metavar="SPEC",
        help="condition on image embeddings: toy:DIM or open_clip:ARCH:/path/weights (model.encoder)",
    )
    g.add_argument(
        "--image-size",
        type=int,
        metavar="N",
        help="pixel side of the training images (with --data default: inferred, 256 with --vae, the images' "
        "own size up to 64 otherwise)",
    )
    g.add_argument("--max-steps", type=int, metavar="N")
    g.add_argument(
        "--batch-size", type=int, metavar="N", help="global batch (all processes, all micro-batches)"
    )
    g.add_argument("--grad-accum", type=int, metavar="N")
    g.add_argument("--lr", type=float, metavar="X")
    g.add_argument("--ckpt-every", type=int, metavar="N")
    g.add_argument("--sample-every", type=int, metavar="N")
    g.add_argument("--log-every", type=int, metavar="N")
    g.add_argument("--output-dir", metavar="DIR", help="where numbered run folders go (default ./runs)")
    g.add_argument("--seed", type=int, metavar="N")
    g.add_argument("--device", help="auto, cpu, cuda, cuda:N, mps")
    g.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="auto (default): bf16 autocast where the device runs it fast (CUDA with bf16, CPUs with AMX or "
        "AVX512-BF16), fp32 elsewhere; the run log states the precision used",
    )
    g.add_argument(
        "--process",
        metavar="KIND",
        help="what the network is trained for: flow (flow matching; the digits default) or ddpm (DiT's "
        "process and loss; every other recipe)",
    )
    g.add_argument(
        "--compile", action="store_true", help="torch.compile the network (eager without a compiler)"
    )
    g.add_argument(
        "--grad-checkpointing", action="store_true", help="recompute activations in the backward: less memory"
    )
    g.add_argument("--eval-every", type=int, metavar="N", help="judge EMA samples every N steps (0: never)")
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bar (log lines still go to log.txt)"
    )
    p.set_defaults(run=run)


def _overrides(args: argparse.Namespace) -> list[str]:
    out = list(args.overrides)
    for flag, key in FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            out.append(f"{key}={value}")
    if getattr(args, "label_columns", None):
        import json

        out.append(f"data.label_columns={json.dumps(list(args.label_columns))}")
    if getattr(args, "hflip", False):
        out.append("data.hflip=true")
    if getattr(args, "allow_outside_paths", False):
        out.append("data.allow_outside_paths=true")
    if getattr(args, "compile", False):
        out.append("train.compile=true")
    if getattr(args, "grad_checkpointing", False):
        out.append("train.grad_checkpointing=true")
    return out


def default_source(args: argparse.Namespace, overrides: list[str]) -> str | None:
    """The recipe when none is named: `digits` without --data, the generic `data` recipe with --data (whose
    image size, network, lr and batch follow the data). `--set data.path=...` keeps the digits defaults and
    overrides them, as every --set does."""
    if args.config:
        return args.config
    data = getattr(args, "data", None)
    return "data" if data not in (None, "", "digits") else None


def check_process(kind: str) -> None:
    from ditkit.train.objectives import check_kind

    check_kind(kind)


def resolve(args: argparse.Namespace):
    """(config, checkpoint path or None, loaded checkpoint or None) for the arguments."""
    from ditkit.config import RunConfig, apply_overrides, load_config
    from ditkit.train import load_checkpoint, resolve_resume

    overrides = _overrides(args)
    if not args.resume:
        config = load_config(default_source(args, overrides), overrides)
        check_process(config.process.kind)
        return config, None, None
    output_dir = args.output_dir or (load_config(args.config).train.output_dir if args.config else "runs")
    path = resolve_resume(args.resume, output_dir)
    ckpt = load_checkpoint(path)
    if args.config:
        # An explicit config must agree with the run (train() names any conflicting keys).
        config = load_config(args.config, overrides)
    else:
        # Otherwise the run's own config, with the changes asked for (e.g. a larger --max-steps).
        config = apply_overrides(RunConfig.from_dict(ckpt["config"], origin=str(path)), overrides)
    return config, path, ckpt


def run(args: argparse.Namespace) -> int:
    config, ckpt_path, ckpt = resolve(args)
    if args.dry_run:
        print(config.to_yaml(), end="")
        return 0

    from ditkit.train import train
    from ditkit.train.distributed import launched_by_torchrun

    result = train(config, resume=ckpt_path, checkpoint=ckpt, progress=not args.no_progress)
    if result.run_dir is None:  # not rank 0
        return 0
    if result.status == "interrupted":
        print(f"interrupted at step {result.step}; checkpoint {result.checkpoint}")
        print(f"resume with: ditkit train --resume {result.run_dir}")
        return 130
    minutes, seconds = divmod(int(round(result.wall_time)), 60)
    print(f"trained {result.step} steps in {minutes}m{seconds:02d}s ({result.precision}): {result.run_dir}")
    print(f"checkpoint  {result.checkpoint}")
    if result.grid is not None:
        print(f"grid        {result.grid}")
    if not launched_by_torchrun():
        print(f"sample:     ditkit sample --ckpt {result.run_dir}")
    return 0
