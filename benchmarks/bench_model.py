"""Forward and training-step speed of ditkit's DiT against diffusers' DiTTransformer2DModel.

Same configuration for both (default DiT-S/2, 32x32x4 latents, batch 8, fp32, 2 threads), timed alternately
in one process so that machine noise hits both alike. Prints a table of medians and the ratio
(diffusers time / ditkit time: above 1 means ditkit is faster).

    python benchmarks/bench_model.py [--model DiT-S/2] [--batch 8] [--repeats 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def build_pair(name: str, input_size: int):
    from diffusers import DiTTransformer2DModel

    import ditkit

    ours = ditkit.create_model(name, input_size=input_size)
    c = ours.config
    theirs = DiTTransformer2DModel(
        num_attention_heads=c.num_heads,
        attention_head_dim=c.hidden_size // c.num_heads,
        in_channels=c.in_channels,
        out_channels=c.out_channels,
        num_layers=c.depth,
        sample_size=input_size,
        patch_size=c.patch_size,
        num_embeds_ada_norm=c.num_classes,
    )
    # Random non-zero weights in both, so no kernel takes a shortcut on zeros.
    for model in (ours, theirs):
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.02)
    return ours, theirs


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="DiT-S/2")
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="also time both under bf16 autocast (fast on CPUs with AMX / AVX512-BF16)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    ours, theirs = build_pair(args.model, args.input_size)
    n, c, s = args.batch, ours.config.in_channels, args.input_size
    x = torch.randn(n, c, s, s)
    t = torch.randint(0, 1000, (n,))
    y = torch.randint(0, 1000, (n,))
    target = torch.randn(n, ours.config.out_channels, s, s)
    # The same optimizer for both (the fused AdamW kernel ditkit's trainer uses), so the step compares models.
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-4, fused=True)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-4, fused=True)

    # Eval mode keeps diffusers from dropping labels inside the network (ditkit never does); dropout is 0 in
    # both, so the arithmetic is that of training mode.
    theirs.eval()
    autocast = {"dtype": torch.bfloat16, "enabled": False}

    def run(model_call, opt=None):
        with torch.autocast("cpu", **autocast):
            out = model_call()
        if opt is None:
            return
        loss = (out.float() - target).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def fwd_ours():
        with torch.no_grad():
            run(lambda: ours(x, t, y))

    def fwd_theirs():
        with torch.no_grad():
            run(lambda: theirs(x, t, class_labels=y).sample)

    def step_ours():
        run(lambda: ours(x, t, y), opt_ours)

    def step_theirs():
        run(lambda: theirs(x, t, class_labels=y).sample, opt_theirs)

    plan = [("forward", fwd_ours, fwd_theirs, False), ("train step", step_ours, step_theirs, False)]
    if args.bf16:
        plan += [("forward bf16", fwd_ours, fwd_theirs, True), ("step bf16", step_ours, step_theirs, True)]
    results = {}
    for label, a, b, bf16 in plan:
        autocast["enabled"] = bf16
        a(), b(), a(), b()  # warm-up: allocator, thread pools, optimizer state
        ta, tb = [], []
        for _ in range(args.repeats):  # alternate, one call each, so drifts hit both alike
            ta += timed(a, 1)
            tb += timed(b, 1)
        results[label] = (statistics.median(ta), statistics.median(tb))

    n_ours = sum(p.numel() for p in ours.parameters())
    n_theirs = sum(p.numel() for p in theirs.parameters())
    print(f"{args.model}, {c}x{s}x{s}, batch {n}, fp32, {args.threads} threads, torch {torch.__version__}")
    print(f"parameters: ditkit {n_ours:,}  diffusers {n_theirs:,}")
    print(f"{'measure':<12} {'ditkit ms':>10} {'diffusers ms':>13} {'speed-up':>9}")
    for label, (a, b) in results.items():
        print(f"{label:<12} {a * 1e3:>10.1f} {b * 1e3:>13.1f} {b / a:>8.2f}x")


if __name__ == "__main__":
    main()
