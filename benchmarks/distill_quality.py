"""Distillation on the DDPM digits model (`ditkit train digits-ddpm`): teacher vs students (half the
parameters, guidance-distilled, 4-step and 2-step), judged by the digits classifier.

    python benchmarks/distill_quality.py --out /tmp/h8runs                    # train teacher + students
    python benchmarks/distill_quality.py --out /tmp/h8runs --teacher CKPT     # reuse a teacher
    python benchmarks/distill_quality.py --out /tmp/h8runs --reuse            # reuse every finished run

Every row samples 50 images per digit (500) with the same seeds through one plain DDIM loop over an explicit
grid (classifier-free guidance as a doubled batch for the teacher and the half-size student, w as an input
for the guidance and step students), so rows differ only in the network and the grid. Printed per row:
parameters, accuracy, classifier-space FD (ditkit.evaluation.digits), NFE per image (a guided cond + null
batch counts one, as the literature does) and seconds for the 500 images; and the distillation wall time
(from the run's log). Students:

- half:     `--mode output --set model.depth=2 --init student-from-teacher` (blocks 1 and 3 of 4);
- guidance: `--mode guidance --guidance 1 3`, sampled at w = 1.5 (one forward per step, no doubled batch);
- 4-step:   `--mode steps --steps 4 --merge 4` on the teacher's DDIM-16 grid (guided at 1.5, baked in);
- 2-step:   `--mode steps --merge 2` from the 4-step student (one halving round).

Measured 2026-12-01 on the shared 2-core machine (load ~6-9), teacher = `ditkit train digits-ddpm` (then the embedded
default; 1500 steps, 214 s). Students: fp32, lr 2e-3 (half) / 1e-3 (others), batch 64 (half, guidance) / 32 (steps);
half 300 steps, guidance 100 steps (`--guidance-steps 100`), 4-step and 2-step 100 steps each. The two
training chains ran side by side (`--train-only half,guidance` / `--train-only steps`), then `--reuse`:

    model                           params     acc     FD  NFE  s/500 distil s
    teacher DDIM-20 cfg          1,272,840   0.998  0.808   20  10.35
    teacher DDIM-16 cfg          1,272,840   0.998  0.889   16  11.55
    teacher DDIM-5 cfg           1,272,840   1.000  1.996    5   3.18
    teacher DDIM-4 cfg           1,272,840   1.000  2.513    4   0.84
    teacher DDIM-2 cfg           1,272,840   0.998  5.739    2   0.43
    half (depth 2) DDIM-20 cfg     679,176   0.996  0.492   20   5.54      768
    guidance DDIM-20 w           1,322,248   0.998  0.618   20   5.07      365
    4-step student               1,322,248   0.998  0.873    4   0.44      542
    2-step student               1,322,248   0.996  0.803    2   0.22      258

    guidance student vs teacher at DDIM-20, timed back to back: 1.89x faster (2.19x in a second run)

The s/500 column was timed at different moments of a shared machine (the teacher rows once at 47 s for
DDIM-20 under heavier load): compare speeds through the back-to-back ratio. FD on 500 samples moves by about
0.1 between seeds.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

GUIDANCE = 1.5
PER_DIGIT = 50


def _latest_ckpt(run_dir: Path) -> Path:
    ckpts = sorted((run_dir / "checkpoints").glob("*.pt"))
    if not ckpts:
        raise SystemExit(f"no checkpoint in {run_dir}")
    return ckpts[-1]


def _wall(run_dir: Path) -> float | None:
    found = re.findall(r"finished \d+ steps in ([0-9.]+) s", (run_dir / "log.txt").read_text())
    return float(found[-1]) if found else None


def _run(cmd: list[str], out_dir: Path, reuse: bool) -> Path:
    """Run `ditkit ...` into its own output folder (or reuse the finished run there)."""
    runs = sorted(p for p in out_dir.glob("*") if p.is_dir() and (p / "checkpoints").exists())
    if reuse and runs and _wall(runs[-1]) is not None:
        return runs[-1]
    print("$", " ".join(cmd), flush=True)
    subprocess.run([*cmd, "--output-dir", str(out_dir), "--no-progress"], check=True)
    runs = sorted(p for p in out_dir.glob("*") if p.is_dir() and (p / "checkpoints").exists())
    return runs[-1]


@torch.no_grad()
def ddim_sample(net, grid: list[float], labels: torch.Tensor, w: float, mode: str, seed: int) -> torch.Tensor:
    """Deterministic DDIM over `grid` (descending DDPM timesteps ending at -1). mode: "cfg" (doubled batch),
    "w" (w as a network input) or "plain"."""
    from ditkit.diffusion import GaussianDiffusion

    ac = torch.tensor(GaussianDiffusion.from_schedule("linear", 1000).alphas_cumprod.copy())
    n, cfg = len(labels), net.config
    gens = [torch.Generator().manual_seed(seed * 100_003 + i) for i in range(n)]
    x = torch.stack([torch.randn(cfg.in_channels, cfg.input_size, cfg.input_size, generator=g) for g in gens])
    null = torch.full_like(labels, cfg.num_classes)

    def abar(t: float) -> float:
        return 1.0 if t < 0 else float(ac[int(t)])

    for t, s in zip(grid[:-1], grid[1:]):
        tt = torch.full((n,), int(t))
        if mode == "cfg" and w != 1.0:
            out = net(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([labels, null]))[:, : cfg.in_channels]
            c, u = out.chunk(2)
            eps = u + w * (c - u)
        elif mode == "w":
            eps = net(x, tt, labels, w=torch.full((n,), w))[:, : cfg.in_channels]
        else:
            eps = net(x, tt, labels)[:, : cfg.in_channels]
        a_t, a_s = abar(t), abar(s)
        x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t**0.5
        x = a_s**0.5 * x0 + (1 - a_s) ** 0.5 * eps
    return x.clamp(-1, 1)


def evaluate(ckpt: Path, grid: list[float], mode: str, w: float = GUIDANCE) -> dict[str, float]:
    from ditkit.data import to_digit_space
    from ditkit.evaluation.digits import get_judge
    from ditkit.io.loading import load_any

    net = load_any(ckpt).model.eval()
    labels = torch.arange(10).repeat_interleave(PER_DIGIT)
    start = time.perf_counter()
    images = ddim_sample(net, grid, labels, w, mode, seed=0)
    seconds = time.perf_counter() - start
    res = get_judge(0).judge(to_digit_space(images).numpy(), labels.numpy())
    return {
        "params": sum(p.numel() for p in net.parameters()),
        "accuracy": res["accuracy"],
        "fd": res["fd"],
        "nfe": len(grid) - 1,
        "seconds": seconds,
    }


def speed_ratio(teacher: Path, student: Path, grid: list[float], n: int = 200) -> float:
    """Sampling-time ratio teacher (CFG, doubled batch) / guidance student (w input), interleaved, best of 3
    (the machine is shared: back-to-back timing is fairer than the table's separate runs)."""
    from ditkit.io.loading import load_any

    nets = {"cfg": load_any(teacher).model.eval(), "w": load_any(student).model.eval()}
    labels = torch.arange(10).repeat_interleave(n // 10)
    best = {"cfg": float("inf"), "w": float("inf")}
    for _ in range(3):
        for mode, net in nets.items():
            start = time.perf_counter()
            ddim_sample(net, grid, labels, GUIDANCE, mode, seed=1)
            best[mode] = min(best[mode], time.perf_counter() - start)
    return best["cfg"] / best["w"]


def _table(rows: list, cache: Path) -> None:
    """Evaluate every row (results are cached in `cache` by name and checkpoint) and print the table."""
    done = json.loads(cache.read_text()) if cache.exists() else {}
    print(f"\n{'model':28s} {'params':>9s} {'acc':>7s} {'FD':>6s} {'NFE':>4s} {'s/500':>6s} {'distil s':>8s}")
    for name, ckpt, grid, mode, run in rows:
        key = f"{name}|{ckpt}"
        if key not in done:
            done[key] = evaluate(ckpt, grid, mode)
            cache.write_text(json.dumps(done, indent=1))
        r = done[key]
        wall = _wall(run) if run is not None else None
        print(
            f"{name:28s} {r['params']:>9,d} {r['accuracy']:>7.3f} {r['fd']:>6.3f} {r['nfe']:>4d} "
            f"{r['seconds']:>6.2f} {'' if wall is None else f'{wall:.0f}':>8s}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    from ditkit.sampling.grids import ddpm_grid
    from ditkit.train import load_checkpoint

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/h8runs"))
    p.add_argument(
        "--teacher", type=Path, help="a DDPM digits checkpoint (default: `ditkit train digits-ddpm` into OUT)"
    )
    p.add_argument("--reuse", action="store_true", help="reuse finished runs in OUT")
    p.add_argument("--half-steps", type=int, default=300)
    p.add_argument("--guidance-steps", type=int, default=150)
    p.add_argument("--steps-steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps-batch-size", type=int, default=32, help="steps mode runs `merge` teacher steps")
    p.add_argument("--lr", type=float, default=1e-3, help="students initialised from the teacher")
    p.add_argument("--teacher-only", action="store_true", help="evaluate the teacher rows only (no training)")
    p.add_argument("--train-only", help="train only these students (comma list of half, guidance, steps)")
    args = p.parse_args(argv)
    out, reuse = args.out, args.reuse
    ditkit = [sys.executable, "-m", "ditkit.cli.main"]
    # a DDPM teacher (the rows below use DDIM grids): the digits on DiT's process, the embedded default
    # before it became flow matching
    teacher = args.teacher or _latest_ckpt(_run([*ditkit, "train", "digits-ddpm"], out / "teacher", True))

    def grid_of(run: Path) -> list[float]:
        return [float(t) for t in load_checkpoint(_latest_ckpt(run))["config"]["distill"]["grid"]]

    def ddim(steps: int) -> list[float]:
        return ddpm_grid(1000, steps, "ddim").tolist()

    rows = [(f"teacher DDIM-{n} cfg", teacher, ddim(n), "cfg", None) for n in (20, 16, 5, 4, 2)]
    if args.teacher_only:
        _table(rows, out / "results.json")
        return 0
    opts = ["--precision", "fp32", "--log-every", "25", "--sample-every", "0", "--ckpt-every", "100000"]
    common = [*ditkit, "distill", *opts, "--teacher"]

    def distill(teacher_ckpt: Path, flags: str, steps: int, name: str) -> Path:
        cmd = [*common, str(teacher_ckpt), *flags.split(), "--max-steps", str(steps)]
        return _run(cmd, out / name, reuse)

    bs = f"--batch-size {args.batch_size}"
    lr = f"--lr {args.lr} {bs}"
    steps_lr = f"--lr {args.lr} --batch-size {args.steps_batch_size}"
    only = set(args.train_only.split(",")) if args.train_only else None
    if only is None or "half" in only:
        half = distill(teacher, f"--mode output --set model.depth=2 --init student-from-teacher {bs}",
                       args.half_steps, "half")  # fmt: skip
    if only is None or "guidance" in only:
        guid = distill(teacher, f"--mode guidance --guidance 1 3 {lr}", args.guidance_steps, "guidance")
    if only is None or "steps" in only:
        four = distill(teacher, f"--mode steps --steps 4 --merge 4 {steps_lr}", args.steps_steps, "steps4")
        two = distill(_latest_ckpt(four), f"--mode steps --merge 2 {steps_lr}", args.steps_steps, "steps2")
    if only is not None:
        return 0
    rows += [
        ("half (depth 2) DDIM-20 cfg", _latest_ckpt(half), ddim(20), "cfg", half),
        ("guidance DDIM-20 w", _latest_ckpt(guid), ddim(20), "w", guid),
        ("4-step student", _latest_ckpt(four), grid_of(four), "w", four),
        ("2-step student", _latest_ckpt(two), grid_of(two), "w", two),
    ]
    _table(rows, out / "results.json")
    t_ratio = speed_ratio(teacher, _latest_ckpt(guid), ddim(20))
    print(f"\nguidance student vs teacher at DDIM-20, timed back to back: {t_ratio:.2f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
