"""`ditkit demo [--ckpt PATH] [--host 127.0.0.1] [--port 7860]`: a local web page to generate with.

Serves a Gradio page for the checkpoint: a label picker fitted to it (class names, one dropdown per attribute,
a prompt and an image for embedding models, nothing for unconditional ones), sampler, steps, guidance,
guidance interval, seed, number of images, a gallery and downloads (PNGs as a zip, samples.npz). With no
--ckpt it serves the newest run under ./runs, or offers to train the embedded default first.

Safe by default: it binds to 127.0.0.1 (another --host prints a warning), never makes a public share link,
bounds every input and runs one generation at a time. Needs the demo extra: pip install -e ".[demo]".
"""

from __future__ import annotations

import argparse
import importlib.util


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="a local web page to generate with (Gradio; pip install -e '.[demo]')",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--ckpt",
        default=None,
        metavar="PATH",
        help="checkpoint, run folder, runs folder or model folder (default: the newest run under --runs)",
    )
    p.add_argument("--runs", default="runs", metavar="DIR", help="where to look for runs (default ./runs)")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument(
        "--encoder",
        metavar="SPEC",
        help="condition encoder for embedding models, e.g. toy:64 (default: the run's)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="network weights (default auto: bf16 where the device is fast at it, else fp32)",
    )
    p.add_argument(
        "--train-set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides for the embedded default, when the demo trains it (no --ckpt, no run)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("gradio") is None:
        raise ValueError('the demo needs Gradio: pip install -e ".[demo]" (or pip install "gradio>=6,<7")')
    from ditkit.demo.serve import serve

    return serve(args)
