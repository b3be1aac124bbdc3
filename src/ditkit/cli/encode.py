"""`ditkit encode --data PATH --vae PATH --out DIR [--image-size N]`: cache VAE latents once.

Stores the VAE posterior (mean and std) of every image and of its mirror image, in shards, so that
`ditkit train --data DIR` draws a fresh posterior sample and a fresh flip at every step without running the
VAE encoder. Run the same command again to resume after an interruption (finished shards are skipped).
Under `torchrun --nproc_per_node=N ditkit encode ...` shard k goes to process k % N; no two processes write
the same file, and whichever finishes last writes DIR/index.json.
"""

from __future__ import annotations

import argparse
import os


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "encode",
        help="cache VAE latents (posterior mean/std of each image and its mirror) for faster training",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--data", required=True, metavar="PATH", help="images: any layout `ditkit train --data` reads"
    )
    p.add_argument("--vae", required=True, metavar="PATH", help="a local diffusers AutoencoderKL folder")
    p.add_argument("--out", required=True, metavar="DIR", help="the cache folder (new, or a cache to resume)")
    p.add_argument(
        "--image-size", type=int, default=256, metavar="N", help="pixel size of the crop (default 256)"
    )
    p.add_argument(
        "--label-columns",
        nargs="+",
        default=[],
        metavar="COL",
        help="label columns to store (default: the data's own labels; 'none' for no labels)",
    )
    p.add_argument(
        "--batch-size", type=int, default=32, metavar="N", help="images per VAE forward (default 32)"
    )
    p.add_argument(
        "--shard-size", type=int, default=1024, metavar="N", help="images per shard file (default 1024)"
    )
    p.add_argument(
        "--dtype", choices=["fp32", "fp16", "bf16"], default="fp32", help="storage precision (default fp32)"
    )
    p.add_argument(
        "--allow-outside-paths",
        action="store_true",
        help="let a manifest name images outside its folder (refused by default)",
    )
    p.add_argument("--num-workers", type=int, default=0, metavar="N", help="image-decoding worker processes")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ditkit.codecs import VAECodec
    from ditkit.data.latents import LatentCache, encode_to_cache
    from ditkit.data.sources import open_dataset

    if args.image_size < 1 or args.batch_size < 1 or args.shard_size < 1 or args.num_workers < 0:
        raise ValueError("--image-size, --batch-size and --shard-size must be positive")
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    from ditkit.runtime import pick_device

    device = pick_device(args.device, local_rank)
    from ditkit.io.native import prepare_output_dir

    prepare_output_dir(args.out, "--out")
    dataset = open_dataset(
        args.data, args.image_size, args.label_columns, allow_outside_paths=args.allow_outside_paths
    )
    if isinstance(dataset, LatentCache):
        raise ValueError(f"{args.data} is already a latent cache; pass the images it was made from")
    if not hasattr(dataset, "read_array"):
        raise ValueError(f"{args.data}: only RGB image data sets can be VAE-encoded")
    codec = VAECodec.from_pretrained(args.vae, device=device, batch_size=max(2, 2 * args.batch_size))
    if device.type == "cpu":
        torch.set_num_threads(
            max(1, (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", world))))
        )
    say = print if rank == 0 else (lambda *_: None)
    say(
        f"{dataset.summary()}; encoding at {args.image_size}px with {codec.path} on {device}"
        + (f", {world} processes" if world > 1 else "")
    )
    for note in getattr(dataset, "notes", []):
        say(f"note: {note}")
    result = encode_to_cache(
        dataset,
        codec,
        args.out,
        source=str(os.path.abspath(args.data)),
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        rank=rank,
        world=world,
        dtype=args.dtype,
        num_workers=args.num_workers,
        progress=not args.no_progress,
        log=print,
    )
    where = f"rank {rank}: " if world > 1 else ""
    print(
        f"{where}wrote {result['written']} shard(s), {result['skipped_shards']} already done, of "
        f"{result['num_shards']} in {args.out}"
    )
    if result["index"] is not None:
        import json

        index = json.loads(open(result["index"]).read())
        skipped = len(index["skipped"])
        print(
            f"index       {result['index']} ({index['num_images']} images"
            + (f", {skipped} unreadable skipped" if skipped else "")
            + (f", {index['upscaled']} upscaled" if index["upscaled"] else "")
            + ")"
        )
        if index["upscaled"]:
            print(
                f"warning: {index['upscaled']} image(s) were smaller than {args.image_size}px and were upscaled"
            )
        print(f"train:      ditkit train --data {args.out} --hflip")
    elif world > 1:
        print(f"{where}waiting for other processes; the last one to finish writes {args.out}/index.json")
    return 0
