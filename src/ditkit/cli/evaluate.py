"""`ditkit evaluate SAMPLES.npz --ref REF.npz`: FID, sFID, Inception Score, precision and recall as the ADM suite
defines them, with ditkit's own Inception-v3 (pytorch-fid's weights file, no torchvision), plus FD-DINOv2 with
`--dinov2 FOLDER`. `ditkit evaluate SAMPLES.npz --digits` judges samples of the embedded default instead.

SAMPLES.npz: `arr_0` uint8 N×H×W×3 (what `ditkit sample --npz` and the official sample_ddp.py write), `arr_1`
labels (needed by --digits). Reference statistics are cached beside REF.npz; an ADM reference batch (e.g.
VIRTUAL_imagenet256_labeled.npz) that carries mu/sigma/mu_s/sigma_s is used as is. Results: a table on the
console and a JSON file (default SAMPLES.eval.json) with every setting.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="FID / sFID / IS / precision / recall / FD-DINOv2 of a samples .npz (or --digits)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("samples", metavar="SAMPLES.npz", help="arr_0: uint8 N×H×W×3 images (arr_1: labels)")
    p.add_argument("--ref", metavar="REF.npz", help="reference batch (images, and optionally ADM mu/sigma)")
    p.add_argument("--digits", action="store_true", help="judge samples of the embedded default (8x8 digits)")
    p.add_argument(
        "--inception",
        metavar="PATH",
        help="pt_inception-2015-12-05-6726825d.pth (default: $DITKIT_INCEPTION or torch hub's cache)",
    )
    p.add_argument("--dinov2", metavar="FOLDER", help="local Hugging Face Dinov2Model folder for FD-DINOv2")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="images per forward (default 64)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument(
        "--resize-mode",
        choices=["tf", "pytorch-fid"],
        default="tf",
        help="Inception preprocessing: tf = the TF graph ADM runs (default), pytorch-fid = its bilinear",
    )
    p.add_argument(
        "--resize-samples",
        action="store_true",
        help="resize samples to the reference's resolution (bicubic) when they differ (default: refuse)",
    )
    p.add_argument("--k", type=int, default=3, help="neighbourhood size for precision/recall (ADM: 3)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the reference cache")
    p.add_argument("--out", metavar="JSON", help="results file (default SAMPLES.eval.json)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    samples_path = Path(args.samples)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.digits:
        result = _run_digits(samples_path)
    elif args.ref:
        result = _run_suite(samples_path, Path(args.ref), args)
    else:
        raise ValueError("pass --ref REF.npz (a reference batch) or --digits (the embedded default)")
    out = (
        Path(args.out)
        if args.out
        else samples_path.with_name(samples_path.name.removesuffix(".npz") + ".eval.json")
    )
    from ditkit.io.native import atomic_write

    text = json.dumps(result, indent=2, sort_keys=False)
    atomic_write(out, lambda tmp: Path(tmp).write_text(text + "\n"))
    _print_table(result)
    print(f"results: {out}")
    return 0


def _run_digits(samples_path: Path) -> dict:
    from ditkit.evaluation.digits import judge_digits
    from ditkit.evaluation.npz import ImageBatch

    images = ImageBatch(samples_path)
    if not (images.dtype.name == "uint8" and len(images.shape) == 4 and images.shape[-1] in (1, 3)):
        images.check_images("samples")  # grey N×H×W×1 digits are fine too
    labels = images.load_array("arr_1")
    if labels is None:
        raise ValueError(
            f"{samples_path}: no arr_1 labels; --digits needs the digit each sample was asked for"
        )
    result = judge_digits(images.load_array("arr_0"), labels)
    return {
        "metrics": {k: result[k] for k in ("accuracy", "fd", "spread", "nn_ratio")},
        "floors": {"heldout_accuracy": result["heldout_accuracy"], "heldout_fd": result["heldout_fd"]},
        "settings": {
            "samples": str(samples_path),
            "count": len(images),
            "judge": "digits SVC (seed 0, 70/30 split)",
        },
        "warnings": [],
    }


def _run_suite(samples_path: Path, ref_path: Path, args) -> dict:
    from ditkit import __version__
    from ditkit.evaluation import suite
    from ditkit.evaluation.inception import default_weights_path, load_fid_inception
    from ditkit.evaluation.npz import ImageBatch

    samples, ref = ImageBatch(samples_path), ImageBatch(ref_path)
    samples.check_images("samples")
    ref.check_images("reference")
    if len(samples) < args.k + 1:
        raise ValueError(
            f"{samples_path}: {len(samples)} samples; precision/recall with k={args.k} needs at least {args.k + 1}"
        )
    resize_to = None
    if samples.resolution != ref.resolution:
        if not args.resize_samples:
            raise ValueError(
                f"samples are {samples.resolution[0]}x{samples.resolution[1]} but the reference is "
                f"{ref.resolution[0]}x{ref.resolution[1]}; sample at the reference's resolution, or pass "
                "--resize-samples to resize them (the score is then not comparable to published figures)"
            )
        resize_to = ref.resolution
    device = suite.device_of(args.device)
    weights = Path(args.inception) if args.inception else default_weights_path()
    inception = load_fid_inception(weights, device)
    dinov2 = None
    if args.dinov2:
        from ditkit.evaluation.dinov2 import load_dinov2

        dinov2 = load_dinov2(args.dinov2, device)
    common = dict(
        batch_size=args.batch_size, device=device, resize=args.resize_mode, progress=not args.no_progress
    )
    key = suite.cache_key(
        {
            "ref": suite.file_fingerprint(ref_path),
            "weights": suite.file_fingerprint(weights),
            "resize": args.resize_mode,
            "dinov2": Path(args.dinov2).resolve().name if args.dinov2 else "none",
            "format": 1,
        }
    )
    t0 = time.time()
    ref_stats = suite.reference_stats(
        ref, key, use_cache=not args.no_cache, inception=inception, dinov2=dinov2, **common
    )
    sample_stats = suite.extract(samples, inception, dinov2, desc="samples", resize_to=resize_to, **common)
    metrics = suite.metrics_from(
        sample_stats, ref_stats, k=args.k, device=device if device.type != "cpu" else None
    )
    warnings = [w for w in [suite.sample_count_warning(len(samples))] if w]
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    return {
        "metrics": metrics,
        "settings": {
            "samples": str(samples_path),
            "count": len(samples),
            "resolution": list(samples.resolution),
            "reference": str(ref_path),
            "reference_count": len(ref),
            "reference_stats": ref_stats["stats_source"],
            "inception_weights": str(weights),
            "inception_weights_bytes": weights.stat().st_size,
            "resize_mode": args.resize_mode,
            "resized_samples_to": list(resize_to) if resize_to else None,
            "is_split_size": suite.IS_SPLIT_SIZE,
            "is_logits": "softmax over all 1008 unbiased logits (ADM)",
            "sfid_features": "Mixed_6d.branch1x1 (TF mixed_6/conv), first 7 channels, NHWC order",
            "precision_recall_k": args.k,
            "dinov2": args.dinov2,
            "batch_size": args.batch_size,
            "device": str(device),
            "ditkit": __version__,
            "seconds": round(time.time() - t0, 1),
        },
        "warnings": warnings,
    }


def _print_table(result: dict) -> None:
    names = {
        "fid": "FID",
        "sfid": "sFID",
        "inception_score": "Inception Score",
        "precision": "Precision",
        "recall": "Recall",
        "fd_dinov2": "FD-DINOv2",
        "accuracy": "accuracy",
        "fd": "FD (classifier space)",
        "spread": "spread",
        "nn_ratio": "NN ratio",
    }
    width = max(len(v) for v in names.values())
    print(f"{'metric':<{width}}  value")
    print("-" * (width + 12))
    for key, value in result["metrics"].items():
        print(f"{names.get(key, key):<{width}}  {value:.4f}")
    for key, value in result.get("floors", {}).items():
        print(f"{key:<{width}}  {value:.4f}")
