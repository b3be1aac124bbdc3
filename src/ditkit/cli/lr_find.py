"""`ditkit lr-find [CONFIG] [--set key=value ...]`: an LR range test on the run's config (Smith 2017).

Trains a fresh copy of the run's model for `--steps` steps while the learning rate grows exponentially from
`--start-lr` to `--end-lr` (the config's data, model, objective and optimizer; no EMA, no checkpoints), and
stops early once the smoothed loss exceeds 4x its minimum. Writes OUT/lr_find.png (smoothed loss against
log10 lr, the suggestion marked) and OUT/lr_find.json (every point and setting), and prints the suggested
maximum learning rate: a tenth of the lr at the smoothed loss's minimum (the loss still falls fast there and
is far from diverging), never below the steepest-descent point's tenth.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "lr-find",
        help="LR range test on a run's config: plot loss vs lr, suggest a max lr",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", nargs="?", help="recipe name or YAML/JSON file (default: the embedded default)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--start-lr", type=float, default=1e-6)
    p.add_argument("--end-lr", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=100, help="sweep length (default 100)")
    p.add_argument("--smooth", type=float, default=0.9, help="EMA factor of the smoothed loss (default 0.9)")
    p.add_argument("--out", default="lr_find", metavar="DIR", help="output folder (default ./lr_find)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)


def lr_range_test(config, *, start_lr=1e-6, end_lr=1.0, steps=100, smooth=0.9, progress=False) -> dict:
    """Run the sweep; returns lrs, losses, smoothed losses and the suggestion."""
    import torch
    from tqdm.auto import tqdm

    from ditkit import runtime
    from ditkit.data.base import IndexStream, StepBatches
    from ditkit.models import DiT
    from ditkit.train.objectives import build_objective
    from ditkit.train.optim import build_optimizer
    from ditkit.train.setup import build_run
    from ditkit.train.step import draw, micro_inputs

    if not 0 < start_lr < end_lr:
        raise ValueError(f"need 0 < --start-lr < --end-lr, got {start_lr} and {end_lr}")
    if steps < 5:
        raise ValueError(f"--steps must be at least 5, got {steps}")
    device = runtime.pick_device(config.train.device)
    if device.type == "cpu":
        runtime.set_threads(config.train.threads or None)
    precision = runtime.resolve_precision(config.train.precision, device)
    run = build_run(config, device)
    tcfg = run.config.train
    torch.manual_seed(tcfg.seed)
    model = DiT(run.model_config).to(device).train()
    objective = build_objective(run.config.process, run.model_config)
    opt = build_optimizer(model, tcfg)
    stream = IndexStream(len(run.dataset), tcfg.seed)
    reader = StepBatches(run.dataset, stream, tcfg.batch_size, 1, 1, 0)
    generator = torch.Generator().manual_seed(tcfg.seed)
    part = slice(0, tcfg.batch_size)
    lrs, losses, smoothed, avg = [], [], [], 0.0
    for i in tqdm(range(steps), desc="lr-find", disable=not progress):
        lr = start_lr * (end_lr / start_lr) ** (i / (steps - 1))
        for group in opt.param_groups:
            group["lr"] = lr
        draws = draw(run, objective, stream, generator, i)
        x, cond = micro_inputs(run, reader[i][0], part, draws, device)
        with runtime.autocast(device, precision):
            terms = objective.losses(
                model, x, cond,
                t=draws.t.to(device) if draws.t is not None else None,
                noise=draws.noise.to(device) if draws.noise is not None else None,
                generator=None if draws.t is not None else generator,
            )  # fmt: skip
        loss = terms["loss"].float().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip or float("inf"))
        opt.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            break
        avg = smooth * avg + (1 - smooth) * value
        lrs.append(lr)
        losses.append(value)
        smoothed.append(avg / (1 - smooth ** (i + 1)))  # bias-corrected EMA
        if smoothed[-1] > 4 * min(smoothed) and i > 5:
            break
    return {"lrs": lrs, "losses": losses, "smoothed": smoothed, **suggest(lrs, smoothed)}


def suggest(lrs: list[float], smoothed: list[float]) -> dict:
    if len(lrs) < 3:
        raise ValueError("the loss diverged within the first steps; lower --start-lr")
    best = min(range(len(smoothed)), key=smoothed.__getitem__)
    logs = [math.log10(lr) for lr in lrs]
    slopes = [(smoothed[i + 1] - smoothed[i - 1]) / (logs[i + 1] - logs[i - 1]) for i in range(1, best or 1)]
    steepest = lrs[1 + min(range(len(slopes)), key=slopes.__getitem__)] if slopes else lrs[0]
    suggested = max(lrs[best] / 10, min(steepest, lrs[best]) / 10, lrs[0])
    return {"min_loss_lr": lrs[best], "steepest_lr": steepest, "suggested_lr": suggested}


def _plot(result: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ditkit.io.native import atomic_write

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(
        [math.log10(v) for v in result["lrs"]], result["losses"], color="tab:blue", alpha=0.3, label="loss"
    )
    ax.plot([math.log10(v) for v in result["lrs"]], result["smoothed"], color="tab:blue", label="smoothed")
    ax.axvline(
        math.log10(result["suggested_lr"]),
        color="tab:red",
        ls="--",
        label=f"suggested {result['suggested_lr']:.2g}",
    )
    ax.set_xlabel("log10 learning rate")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    from ditkit.config import load_config
    from ditkit.io.native import atomic_write

    config = load_config(args.config, args.set)
    result = lr_range_test(
        config, start_lr=args.start_lr, end_lr=args.end_lr, steps=args.steps, smooth=args.smooth,
        progress=not args.no_progress,
    )  # fmt: skip
    out = Path(args.out)
    settings = {"config": args.config or "digits", "set": args.set, "start_lr": args.start_lr,
                "end_lr": args.end_lr, "steps": args.steps, "smooth": args.smooth,
                "batch_size": config.train.batch_size, "model": config.model.name}  # fmt: skip
    text = json.dumps({**result, "settings": settings}, indent=2)
    atomic_write(out / "lr_find.json", lambda tmp: Path(tmp).write_text(text + "\n"))
    _plot(result, out / "lr_find.png", f"LR range test ({len(result['lrs'])} steps)")
    print(
        f"lowest smoothed loss at lr {result['min_loss_lr']:.3g}; steepest descent at {result['steepest_lr']:.3g}"
    )
    print(
        f"suggested max lr: {result['suggested_lr']:.3g}  (ditkit train --set train.lr={result['suggested_lr']:.2g})"
    )
    print(f"plot: {out / 'lr_find.png'}  data: {out / 'lr_find.json'}")
    return 0
