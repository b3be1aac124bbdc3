"""Loading the checkpoint, checking the address, launching the page (never a public share link)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .spec import Bounds, build_spec

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def offline_env() -> None:
    """Keep Gradio (and huggingface_hub) off the network: no analytics, no version check, no hub."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def resolve_checkpoint(ckpt: str | None, runs_dir: str | Path = "runs") -> Path | None:
    """--ckpt as a path to load (a run or runs folder -> its newest checkpoint); None: the newest run under
    runs_dir, or None when there is none."""
    from ..train.checkpoint import find_checkpoint, list_runs, model_path

    if ckpt is None:
        if not list_runs(runs_dir):
            return None
        try:
            return find_checkpoint(runs_dir)
        except FileNotFoundError:
            return None
    return model_path(ckpt)


def checkpoint_name(path: Path) -> str:
    path = Path(path)
    if path.parent.name == "checkpoints" and path.stem.isdigit():
        return f"{path.parent.parent.name} (step {int(path.stem)})"
    return path.name


def load_pipeline(path: Path, device: str = "auto", precision: str = "auto", encoder: str | None = None):
    """DiTPipeline.from_pretrained(path) on the device and precision asked for; any failure is one line.
    `encoder`: a spec for ditkit.encoders.load_encoder (embedding models; default: the run's own)."""
    from ..encoders import load_encoder
    from ..pipeline import DiTPipeline
    from ..runtime import pick_device, resolve_precision

    dev = pick_device(device)
    resolve_precision(precision, dev)  # a precision the device can't run: one line, before any loading
    enc = load_encoder(encoder) if encoder else None
    try:
        pipe = DiTPipeline.from_pretrained(path, encoder=enc, device=dev, precision=precision)
    except (ValueError, FileNotFoundError):
        raise
    except Exception as err:  # a damaged file: name it, never show a traceback
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"{path}: cannot load this checkpoint ({type(err).__name__}: {first})") from None
    return pipe


def _free_port(host: str, start: int) -> int | None:
    for port in range(start + 1, min(start + 50, 65536)):
        if port_problem(host, port) is None:
            return port
    return None


def port_problem(host: str, port: int) -> str | None:
    """None when (host, port) can be bound now, else why not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return f"cannot resolve host {host!r}"
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            sock.bind(addr)
        except OSError as err:
            return err.strerror or str(err)
    return None


def check_address(host: str, port: int) -> None:
    if not 1 <= port <= 65535:
        raise ValueError(f"--port must lie in 1..65535, got {port}")
    problem = port_problem(host, port)
    if problem is None:
        return
    if problem.startswith("cannot resolve"):
        raise ValueError(f"{problem}; use --host 127.0.0.1 (this machine only) or an address of this machine")
    other = _free_port(host, port)
    hint = f"; pick another, e.g. --port {other}" if other else "; pick another with --port"
    raise ValueError(f"port {port} on {host} is not free ({problem}){hint}")


def launch(demo: Any, host: str, port: int, bounds: Bounds, css: str | None = None) -> None:
    """Queue and serve `demo`; `css` is the page's (default: ditkit.demo.app.CSS)."""
    from .app import CSS

    demo.queue(default_concurrency_limit=1, max_size=32)
    try:
        _launch(demo, host, port, bounds, CSS if css is None else css)
    except OSError as err:  # taken between the check and the launch
        raise ValueError(f"port {port} on {host} is not free ({err}); pick another with --port") from None


def _launch(demo: Any, host: str, port: int, bounds: Bounds, css: str) -> None:
    demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        inbrowser=False,
        prevent_thread_lock=True,
        show_error=True,
        quiet=True,
        max_file_size=bounds.max_upload_bytes,
        ssr_mode=False,
        pwa=False,
        mcp_server=False,
        enable_monitoring=False,
        run_history=False,
        css=css,
    )


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://[{shown}]:{port}/" if ":" in shown else f"http://{shown}:{port}/"


def _stop_on_sigterm() -> None:
    """SIGTERM stops the demo as Ctrl-C does (the server closes, temporary files go)."""

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)


def _wait(demo: Any) -> None:
    _stop_on_sigterm()
    try:
        while True:
            time.sleep(0.5)
    finally:
        demo.close()


def serve(args: Any) -> int:
    """The whole `ditkit demo` command after argument parsing (see cli/demo.py)."""
    offline_env()
    bounds = Bounds()
    path = resolve_checkpoint(args.ckpt, args.runs)
    pipe = load_pipeline(path, args.device, args.precision, args.encoder) if path is not None else None
    check_address(args.host, args.port)
    if args.host not in LOCAL_HOSTS:
        print(
            f"ditkit demo: warning: serving on {args.host}: anyone who can reach this machine on port "
            f"{args.port} can use the demo (no login); use --host 127.0.0.1 to keep it local",
            file=sys.stderr,
        )
    work = Path(tempfile.mkdtemp(prefix="ditkit-demo-"))
    before = os.environ.get("GRADIO_TEMP_DIR")
    if before is None:
        os.environ["GRADIO_TEMP_DIR"] = str(work / "gradio")  # served files go when the demo stops
    try:
        from .app import build_app, page_css

        if pipe is None:
            path = _train_first(args, bounds)
            pipe = load_pipeline(path, args.device, args.precision, args.encoder)
        spec = build_spec(pipe, checkpoint_name(path), bounds)
        demo = build_app(pipe, spec, work)
        launch(demo, args.host, args.port, bounds, page_css(spec))
        print(f"ditkit demo: serving {spec.name} at {_url(args.host, args.port)} (Ctrl-C stops)", flush=True)
        _wait(demo)
    finally:
        if before is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _train_first(args: Any, bounds: Bounds) -> Path:
    from .training import TrainerPage

    page = TrainerPage(getattr(args, "train_set", None), args.runs)
    demo = page.build()
    launch(demo, args.host, args.port, bounds)
    print(
        f"ditkit demo: no checkpoint and no run under {args.runs}/: open {_url(args.host, args.port)} to train "
        "the embedded default (Ctrl-C stops)",
        flush=True,
    )
    _stop_on_sigterm()
    try:
        while not page.done.wait(0.5):
            pass
    except BaseException:
        demo.close()
        raise
    time.sleep(1.0)  # let the page receive the result before the server goes
    demo.close()
    for _ in range(40):  # the old server has to let go of the port
        if port_problem(args.host, args.port) is None:
            break
        time.sleep(0.25)
    return page.checkpoint
