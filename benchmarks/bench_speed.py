"""Speed of ditkit's DiT against the official network and diffusers: forward, training step, guided sampling.

In one process, alternating (one call of each variant per round, so machine drifts hit all alike):
the machine's fp32 / bf16 matmul peak; the official-equivalent fp32 network (written below from the official
code's structure, same parameter names, loaded from the same weights); ditkit at `auto` precision (sampling in
bf16 weights, training under bf16 autocast with fp32 master weights, where the device runs bf16 fast); ditkit
bf16 + torch.compile (`--compile`, pays the compile once, reported); diffusers' DiTTransformer2DModel (fp32).
Each row: ms, images/s, achieved TFLOP/s (model FLOPs, 2 x the paper's multiply-accumulates; a training step
counts 3 x the forward) and share of the measured bf16 matmul peak.

    python benchmarks/bench_speed.py                       # DiT-S/2, 32x32x4, batch 8, 2 threads, wall clock
    python benchmarks/bench_speed.py --cpu-time            # 1 thread, thread CPU time, min: robust to load
    python benchmarks/bench_speed.py --compile --diffusers # add the compiled and diffusers rows
    python benchmarks/bench_speed.py --memory              # peak RSS of DiT-XL/2 bf16 fwd+bwd, batch 32, +/- checkpointing
    python benchmarks/bench_speed.py --train-default       # `ditkit train` (embedded default) wall time
    python benchmarks/bench_speed.py --no-table --train-default --compile   # + compiled, cold and warm cache

Measured 2026-12-01 on 2 cores of an AMD EPYC with AVX512-BF16 and no AMX (`--cpu-time --diffusers --compile`;
matmul peak fp32 0.09, bf16 0.20 TFLOP/s): forward official fp32 1200 ms, ditkit auto 557 ms (87% of the bf16
peak, 2.15x), bf16 + compile 625 ms, diffusers 1182 ms; training step 3610 / 1947 (75%, 1.85x) / 1824 / 3514 ms;
10-step guided sampling 24.8 / 11.5 (85%, 2.16x) / 12.8 / 24.6 s. The official network runs at 90% of the fp32
peak, so 2.5x is this CPU's ceiling. `--no-table --train-default --compile`: `ditkit train` 56.9 s eager,
80.5 s compiled with an empty cache, 42.1 s with a warm one. `--memory`: DiT-XL/2 batch 32, 17.9 GiB peak RSS
without gradient checkpointing, 6.6 GiB with it.

On CUDA (when a GPU is present) add `--cuda`: DiT-XL/2, 256 px (32x32x4 latents), batch 128, bf16 autocast,
fused AdamW: steps/s, images/s and model-FLOPs utilisation against the GPU's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import ditkit
from ditkit import runtime


# -- the official-equivalent network ---------------------------------------------------------------------
# The structure and elementwise op sequence of the official DiT (models.py with timm's Attention and Mlp,
# whose fused_attn path calls SDPA), parameter names identical to ditkit's, so it loads ditkit's state dict.
def _modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = (
            nn.Linear(dim, hidden),
            nn.GELU(approximate="tanh"),
            nn.Linear(hidden, dim),
        )

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = _Mlp(dim, 4 * dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x, c):
        sh1, sc1, g1, sh2, sc2, g2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + g1.unsqueeze(1) * self.attn(_modulate(self.norm1(x), sh1, sc1))
        return x + g2.unsqueeze(1) * self.mlp(_modulate(self.norm2(x), sh2, sc2))


class _Wrap(nn.Module):  # holds a submodule under the official attribute name
    def __init__(self, name: str, module: nn.Module) -> None:
        super().__init__()
        self.add_module(name, module)


class OfficialDiT(nn.Module):
    """The official DiT forward (adaLN-Zero, learn_sigma); `forward_with_cfg` is the official guided call."""

    def __init__(self, cfg) -> None:
        super().__init__()
        d, p = cfg.hidden_size, cfg.patch_size
        self.p, self.c_out = p, cfg.out_channels
        self.x_embedder = _Wrap("proj", nn.Conv2d(cfg.in_channels, d, p, p))
        self.t_embedder = _Wrap("mlp", nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d)))
        self.y_embedder = _Wrap("embedding_table", nn.Embedding(cfg.num_classes + 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_tokens, d), requires_grad=False)
        self.blocks = nn.ModuleList(_Block(d, cfg.num_heads) for _ in range(cfg.depth))
        self.final_layer = nn.Module()
        self.final_layer.norm_final = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.final_layer.linear = nn.Linear(d, p * p * cfg.out_channels)
        self.final_layer.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))

    def forward(self, x, t, y):
        x = self.x_embedder.proj(x).flatten(2).transpose(1, 2) + self.pos_embed
        freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32) / 128).to(x.device)
        args = t[:, None].float() * freqs[None]
        c = self.t_embedder.mlp(torch.cat([torch.cos(args), torch.sin(args)], -1))
        c = c + self.y_embedder.embedding_table(y)
        for block in self.blocks:
            x = block(x, c)
        fl = self.final_layer
        shift, scale = fl.adaLN_modulation(c).chunk(2, dim=1)
        x = fl.linear(_modulate(fl.norm_final(x), shift, scale))
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], h, w, self.p, self.p, self.c_out)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], self.c_out, h * self.p, w * self.p)

    def forward_with_cfg(self, x, t, y, cfg_scale):
        half = x[: len(x) // 2]
        out = self.forward(torch.cat([half, half], 0), t, y)
        eps, rest = out[:, :3], out[:, 3:]
        cond, uncond = eps.chunk(2, 0)
        half_eps = uncond + cfg_scale * (cond - uncond)
        return torch.cat([torch.cat([half_eps, half_eps], 0), rest], dim=1)


# -- measurement -----------------------------------------------------------------------------------------
def matmul_peak(dtype: torch.dtype, n: int = 2048, device: str = "cpu", clock=time.perf_counter) -> float:
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    best = math.inf
    for i in range(5):
        _sync(device)
        start = clock()
        a @ b
        _sync(device)
        if i:
            best = min(best, clock() - start)
    return 2 * n**3 / best / 1e12


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def alternate(fns: dict, rounds: int, clock, stat, warmup: int = 2) -> dict[str, float]:
    for fn in fns.values():  # warm-up: allocator, thread pools, optimizer state, packed weights
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    return {k: stat(v) for k, v in times.items()}


def ddim_guided(model_fn, x_T, y, steps: int, scale: float) -> torch.Tensor:
    """A plain 10-step DDIM loop with classifier-free guidance; schedule and solver math in fp32."""
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)  # DiT's betas
    ts = torch.linspace(999, 0, steps).round().long()
    x, n = x_T, x_T.shape[0]
    null = torch.full_like(y, 1000)
    for i, t in enumerate(ts):
        a_t = float(abar[t])
        a_prev = float(abar[ts[i + 1]]) if i + 1 < steps else 1.0
        out = model_fn(torch.cat([x, x]), t.expand(2 * n), torch.cat([y, null])).float()
        cond, uncond = out[:, : x.shape[1]].chunk(2)
        eps = uncond + scale * (cond - uncond)
        x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
    return x


def build(args, device):
    torch.manual_seed(0)
    ours = ditkit.create_model(args.model, input_size=args.input_size).to(device)
    with torch.no_grad():  # random non-zero weights, so no kernel takes a shortcut on zeros
        for p in ours.parameters():
            p.normal_(0, 0.02)
    official = OfficialDiT(ours.config).to(device)
    official.load_state_dict(ours.state_dict(), strict=True)
    return ours, official


def diffusers_model(ours):
    from diffusers import DiTTransformer2DModel

    from ditkit.io.diffusers_config_json import diffusers_config

    # the same config.json `ditkit convert --to diffusers` writes for this network
    model = DiTTransformer2DModel.from_config(diffusers_config(ours.config))
    model.eval()  # eval: no label dropout inside; dropout is 0, so the arithmetic is training's
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model


def variants(args, ours, official, device):
    """name -> (forward call, training-step call, sampling call) for every measured network."""
    n, c, s = args.batch, ours.config.in_channels, args.input_size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, s, s, generator=g).to(device)
    t = torch.randint(0, 1000, (n,), generator=g).to(device)
    y = torch.randint(0, 1000, (n,), generator=g).to(device)
    target = torch.randn(n, ours.config.out_channels, s, s, generator=g).to(device)
    precision = runtime.resolve_precision(args.precision, device)
    infer = copy.deepcopy(ours).to(runtime.inference_dtype(device, precision)).eval()

    def trainer(model, amp: str, call):
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6, fused=True)

        def step():
            with runtime.autocast(device, amp):
                out = call(model)
            loss = (out.float() - target).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    def no_grad(fn):
        def run():
            with torch.no_grad():
                return fn()

        return run

    out = {
        "official fp32": (
            no_grad(lambda: official(x, t, y)),
            trainer(official, "fp32", lambda m: m(x, t, y)),
            no_grad(lambda: ddim_guided(official, x, y, args.steps, 4.0)),
        ),
        f"ditkit auto ({precision})": (
            no_grad(lambda: infer(x, t, y)),
            trainer(copy.deepcopy(ours), precision, lambda m: m(x, t, y)),
            no_grad(lambda: ddim_guided(infer, x, y, args.steps, 4.0)),
        ),
    }
    if args.compile:
        comp_infer = runtime.maybe_compile(copy.deepcopy(infer), True, log=print)
        comp_train = runtime.maybe_compile(copy.deepcopy(ours), True, log=print)
        out["ditkit bf16 + compile"] = (
            no_grad(lambda: comp_infer(x, t, y)),
            trainer(comp_train, "bf16", lambda m: m(x, t, y)),
            no_grad(lambda: ddim_guided(comp_infer, x, y, args.steps, 4.0)),
        )
    if args.diffusers:
        theirs = diffusers_model(ours).to(device)
        out["diffusers fp32"] = (
            no_grad(lambda: theirs(x, t, class_labels=y).sample),
            trainer(theirs, "fp32", lambda m: m(x, t, class_labels=y).sample),
            no_grad(
                lambda: ddim_guided(
                    lambda a, b, c_: theirs(a, b, class_labels=c_).sample, x, y, args.steps, 4.0
                )
            ),
        )
    return out


def cpu_table(args) -> None:
    device = torch.device("cpu")
    torch.set_num_threads(1 if args.cpu_time else args.threads)
    clock, stat = (time.thread_time, min) if args.cpu_time else (time.perf_counter, statistics.median)
    load_before = os.getloadavg()[0]
    peak32 = matmul_peak(torch.float32, clock=clock)
    peak16 = matmul_peak(torch.bfloat16, clock=clock)
    ours, official = build(args, device)
    started = time.perf_counter()
    table = variants(args, ours, official, device)
    if args.compile:  # first calls outside the timed rounds: this is where the compile happens
        for fwd, step, _ in table.values():
            fwd(), step()
        print(f"compile + first calls: {time.perf_counter() - started:.1f} s")
    flops_fwd = 2 * ditkit.forward_flops(ours.config) * args.batch
    work = {
        "forward": flops_fwd,
        "train step": 3 * flops_fwd,
        f"sample {args.steps}-step cfg": 2 * args.steps * flops_fwd,
    }
    results = {}
    for col, label in enumerate(work):
        results[label] = alternate(
            {k: v[col] for k, v in table.items()}, args.repeats, clock, stat, args.warmup
        )
    clock_name = (
        "thread CPU time, 1 thread, min" if args.cpu_time else f"wall, {args.threads} threads, median"
    )
    print(
        f"{args.model}, {ours.config.in_channels}x{args.input_size}x{args.input_size}, batch {args.batch}, "
        f"torch {torch.__version__}, {clock_name} of {args.repeats} alternating rounds"
    )
    print(
        f"matmul peak 2048^2: fp32 {peak32:.2f} TFLOP/s, bf16 {peak16:.2f} TFLOP/s ({peak16 / peak32:.1f}x); "
        f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print(
        f"{'measure':<18} {'network':<24} {'ms':>9} {'img/s':>8} {'TFLOP/s':>8} {'% bf16':>7} {'vs official':>11}"
    )
    for label, row in results.items():
        base = row["official fp32"]
        for name, sec in row.items():
            tf = work[label] / sec / 1e12
            print(
                f"{label:<18} {name:<24} {sec * 1e3:>9.1f} {args.batch / sec:>8.1f} {tf:>8.3f} "
                f"{100 * tf / peak16:>6.0f}% {base / sec:>10.2f}x"
            )


def memory_rows(args) -> None:
    """Peak resident memory of a DiT-XL/2 bf16-autocast forward + backward (no optimizer state: that is the
    same with and without checkpointing), in a fresh process each, +/- gradient checkpointing."""
    for ckpt in (False, True):
        code = (
            "import resource, torch, ditkit\n"
            f"torch.set_num_threads({args.threads})\n"
            "m = ditkit.create_model('DiT-XL/2')\n"
            f"m.set_grad_checkpointing({ckpt})\n"
            "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            f"n = {args.memory_batch}\n"
            "x, t, y = torch.randn(n, 4, 32, 32), torch.randint(0, 1000, (n,)), torch.randint(0, 1000, (n,))\n"
            "with torch.autocast('cpu', torch.bfloat16):\n"
            "    out = m(x, t, y)\n"
            "out.float().square().mean().backward()\n"
            "print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
        )
        started = time.perf_counter()
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        base, peak = (int(v) / 2**20 for v in res.stdout.split())
        print(
            f"DiT-XL/2 bf16 fwd+bwd, batch {args.memory_batch}, grad checkpointing {'on ' if ckpt else 'off'}: "
            f"peak RSS {peak:.1f} GiB (fp32 model alone {base:.1f} GiB), "
            f"{time.perf_counter() - started:.0f} s"
        )


def train_default_row(compile_rows: bool = False) -> None:
    """`ditkit train` (the embedded default) end to end, wall clock; with --compile also compiled, first
    with an empty inductor cache and then with the cache that run left (the second run of a user)."""
    import tempfile

    cache = tempfile.mkdtemp(prefix="ditkit-bench-inductor-")
    rows = [("eager", [])]
    if compile_rows:
        rows += [("--compile, cold cache", ["--compile"]), ("--compile, warm cache", ["--compile"])]
    for k, (label, flags) in enumerate(rows):
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
        out = f"/tmp/ditkit-bench-default-{os.getpid()}-{k}"
        started = time.perf_counter()
        res = subprocess.run(["ditkit", "train", "--no-progress", "--output-dir", out, *flags],
                             capture_output=True, text=True, env=env)  # fmt: skip
        wall = time.perf_counter() - started
        compiled = [line for line in res.stdout.splitlines() if "torch.compile" in line]
        note = f" ({compiled[0].split(': ', 1)[-1]})" if compiled else ""
        print(f"`ditkit train` (embedded default), {label}: {wall:.1f} s wall, exit {res.returncode}{note}")


CUDA_BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def cuda_rows(args) -> None:
    """DiT-XL/2, 256 px, batch 128, bf16 autocast + fused AdamW on one GPU: steps/s, images/s, MFU."""
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    model = ditkit.create_model("DiT-XL/2", device=device)
    if args.compile:
        runtime.maybe_compile(model, True, log=print)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    n = args.cuda_batch
    x = torch.randn(n, 4, 32, 32, device=device)
    t, y = torch.randint(0, 1000, (n,), device=device), torch.randint(0, 1000, (n,), device=device)

    def step():
        with torch.autocast("cuda", torch.bfloat16):
            loss = model(x, t, y).float().square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(args.cuda_steps):
        step()
    torch.cuda.synchronize()
    sec = (time.perf_counter() - started) / args.cuda_steps
    name = torch.cuda.get_device_name()
    peak = (
        next((v for k, v in CUDA_BF16_PEAK.items() if k in name), None)
        or matmul_peak(torch.bfloat16, 8192, "cuda") * 1e12
    )
    flops = 3 * 2 * ditkit.forward_flops(model.config) * n
    print(
        f"{name}: DiT-XL/2 256px batch {n}: {1 / sec:.2f} steps/s, {n / sec:.0f} img/s, "
        f"{flops / sec / 1e12:.0f} TFLOP/s, MFU {100 * flops / sec / peak:.0f}% of {peak / 1e12:.0f} TFLOP/s, "
        f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="DiT-S/2")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10, help="sampling steps of the guided sampling row")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2, help="untimed calls of each variant before the rounds")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="auto")
    p.add_argument("--cpu-time", action="store_true", help="1 thread, thread CPU time, min (load-robust)")
    p.add_argument(
        "--compile", action="store_true", help="add ditkit bf16 + torch.compile (minutes on a CPU)"
    )
    p.add_argument("--diffusers", action="store_true", help="add diffusers' DiTTransformer2DModel (fp32)")
    p.add_argument(
        "--memory", action="store_true", help="peak RSS of a DiT-XL/2 bf16 fwd+bwd +/- checkpointing"
    )
    p.add_argument("--memory-batch", type=int, default=32)
    p.add_argument(
        "--train-default", action="store_true", help="time `ditkit train` end to end (+ --compile rows)"
    )
    p.add_argument("--cuda", action="store_true", help="the DiT-XL/2 GPU rows")
    p.add_argument("--cuda-batch", type=int, default=128)
    p.add_argument("--cuda-steps", type=int, default=10)
    p.add_argument("--no-table", action="store_true", help="skip the DiT-S/2 CPU table")
    args = p.parse_args()
    if not args.no_table:
        cpu_table(args)
    if args.memory:
        memory_rows(args)
    if args.train_default:
        train_default_row(args.compile)
    if args.cuda:
        if not torch.cuda.is_available():
            raise SystemExit("bench_speed: error: --cuda needs a CUDA GPU")
        cuda_rows(args)


if __name__ == "__main__":
    main()
