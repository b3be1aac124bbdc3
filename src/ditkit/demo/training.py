"""`ditkit demo` with no checkpoint and no run: a page that trains the embedded default, then serves it.

The training page has one button; its progress bar follows the trainer's own tqdm bar. When training ends
the page polls the server and reloads once the generation page (started by `serve`) answers.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

TRAIN_TITLE = "ditkit demo: train the embedded default"

# Reload once the server answers with another page title (the generation page replaced this one).
RELOAD_JS = f"""
async () => {{
  for (let i = 0; i < 600; i++) {{
    await new Promise((r) => setTimeout(r, 1000));
    try {{
      const r = await fetch("config", {{ cache: "no-store" }});
      if (r.ok && (await r.json()).title !== {TRAIN_TITLE!r}) {{ location.reload(); return; }}
    }} catch (e) {{}}
  }}
}}
"""


def train_default(overrides: list[str] | None = None, output_dir: str | Path = "runs", progress: bool = True):
    """Train the embedded default recipe (digits) into `output_dir`; returns the checkpoint path."""
    from ..config import load_config
    from ..train import train

    config = load_config(None, [f"train.output_dir={output_dir}", *(overrides or [])])
    result = train(config, progress=progress, echo=False)
    if result.status != "done" or result.checkpoint is None:
        raise ValueError(
            f"training ended early ({result.status}); resume it with ditkit train --resume {result.run_dir}"
        )
    return Path(result.checkpoint)


class TrainerPage:
    """The training page; `done` is set (and `checkpoint` filled) when the run has finished."""

    def __init__(self, overrides: list[str] | None = None, output_dir: str | Path = "runs") -> None:
        self.overrides = list(overrides or [])
        self.output_dir = output_dir
        self.done = threading.Event()
        self.checkpoint: Path | None = None
        self._lock = threading.Lock()

    def _train(self, progress: Any) -> str:
        import gradio as gr

        if not self._lock.acquire(blocking=False) or self.done.is_set():
            raise gr.Error("training is already running (or done): wait for the page to reload")
        try:
            progress(0, desc="training the embedded default")
            self.checkpoint = train_default(self.overrides, self.output_dir, progress=True)
        except ValueError as err:
            self._lock.release()
            raise gr.Error(str(err).splitlines()[0], print_exception=False) from None
        self.done.set()
        return f"Trained: `{self.checkpoint}`. Starting the generation page; this page reloads by itself."

    def build(self):
        import gradio as gr

        def run(progress=gr.Progress(track_tqdm=True)):  # noqa: B008 (Gradio reads the default)
            return self._train(progress)

        with gr.Blocks(title=TRAIN_TITLE, analytics_enabled=False) as demo:
            gr.Markdown("## ditkit demo")
            gr.Markdown(
                f"No checkpoint given and no run under `{self.output_dir}/`. Train the embedded default (a small "
                "DiT on scikit-learn's digits, about a minute on a CPU), and the demo serves it when it is done."
            )
            button = gr.Button("Train the embedded default", variant="primary", elem_id="train")
            status = gr.Markdown(elem_id="train-status")
            button.click(run, None, status, api_name="train", concurrency_limit=1).success(None, js=RELOAD_JS)
        return demo
