"""The Gradio page: the model card, a label picker fitted to the checkpoint, the sampling controls, Generate,
a progress bar, a gallery and the downloads. The API endpoint is `/generate` (same inputs as the page)."""

from __future__ import annotations

import inspect
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

from .generate import GenerateRequest, generate, parse_seed
from .spec import ANY_ID, DemoSpec

CSS = "#card { font-size: 0.9em; }"
SMOOTH_FROM = 128  # images smaller than this are upscaled in the gallery with nearest-neighbour pixels
PIXELATED = " #gallery img { image-rendering: pixelated; }"


def page_css(spec: DemoSpec) -> str:
    """The page's CSS: tiny images (8x8 digits) show their pixels instead of a blur."""
    return CSS + (PIXELATED if max(spec.resolution) < SMOOTH_FROM else "")


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def label_inputs(spec: DemoSpec) -> list:
    """The label picker's components, in the order the handler reads them."""
    import gradio as gr

    picker = spec.picker
    if picker.kind == "classes":
        first = picker.classes[0][1] if picker.classes else None
        return [
            gr.Dropdown(
                choices=picker.classes,
                value=first,
                label=f"Class ({len(picker.classes)}; type to search)",
                filterable=True,
                elem_id="class",
            )
        ]
    if picker.kind == "attributes":
        return [
            gr.Dropdown(
                choices=choices, value=ANY_ID, label=f"{attr} ('any' = unguided)", elem_id=f"attr-{attr}"
            )
            for attr, choices in picker.attributes.items()
        ]
    if picker.kind == "embedding":
        return [
            gr.Textbox(
                label="Prompt",
                max_length=spec.bounds.max_prompt_chars,
                placeholder="a text condition (or upload an image below)",
                elem_id="prompt",
            ),
            _checked_image(
                gr.Image(
                    label="Image condition",
                    type="filepath",
                    sources=["upload"],
                    elem_id="image",
                    height=160,
                ),
                spec,
            ),
        ]
    return []


def _checked_image(component: Any, spec: DemoSpec) -> Any:
    """An upload that isn't an image gets a one-line error instead of Gradio's several lines."""
    import gradio as gr

    decode = component.preprocess
    kinds = ", ".join(t.lstrip(".") for t in spec.bounds.upload_types)

    def preprocess(payload: Any) -> Any:
        try:
            return decode(payload)
        except Exception:
            name = getattr(payload, "orig_name", None) or "the upload"
            raise gr.Error(
                f"{name}: not a readable image; upload one of {kinds}", print_exception=False
            ) from None

    component.preprocess = preprocess
    return component


def make_request(spec: DemoSpec, values: list[Any]) -> GenerateRequest:
    """Widget values (label inputs first, then sampler, steps, guidance, interval start/end, seed, images)."""
    n_labels = {"classes": 1, "attributes": len(spec.picker.attributes), "embedding": 2}.get(
        spec.picker.kind, 0
    )
    labels, rest = values[:n_labels], values[n_labels:]
    if len(rest) != 7:
        raise ValueError(f"expected {n_labels + 7} inputs, got {len(values)}")
    sampler, steps, guidance, lo, hi, seed, num = rest
    req = GenerateRequest(
        sampler=sampler,
        steps=steps,
        guidance_scale=guidance,
        guidance_interval=(lo, hi),
        seed=parse_seed(seed),
        num_images=num,
    )
    kind = spec.picker.kind
    if kind == "classes":
        req.class_id = labels[0]
    elif kind == "attributes":
        req.attributes = {a: (ANY_ID if v is None else v) for a, v in zip(spec.picker.attributes, labels)}
    elif kind == "embedding":
        req.prompt, req.image_path = labels[0] or "", labels[1] or None
    return req


def _run_info(info: dict[str, Any]) -> str:
    keys = ("seed", "sampler", "steps", "guidance_scale", "guidance_interval", "nfe", "precision")
    return " · ".join(f"{k}: {info[k]}" for k in keys if info.get(k) is not None)


def make_handler(pipe: Any, spec: DemoSpec, work_dir: Path):
    import gradio as gr

    def run(*values, **kwargs):
        values, progress = list(values), kwargs.get("progress")
        if values and isinstance(values[-1], gr.Progress):  # Gradio passes it by position
            progress = values.pop()
        progress = progress or (lambda *a, **k: None)
        try:
            req = make_request(spec, values)
            progress((0, int(req.steps)), desc="sampling")
            out_dir = Path(tempfile.mkdtemp(prefix="gen-", dir=work_dir))
            done = generate(
                pipe, spec, req, progress=lambda i, n: progress((i, n), desc="sampling"), out_dir=out_dir
            )
        except ValueError as err:
            raise gr.Error(_one_line(err), print_exception=False) from None
        except Exception as err:  # the server keeps running; the page shows one line, the log the traceback
            traceback.print_exc(file=sys.stderr)
            raise gr.Error(
                f"generation failed: {type(err).__name__}: {_one_line(err)}", print_exception=False
            ) from None
        files = [str(done.zip_path), str(done.npz_path)]
        return done.images, files, _run_info(done.info)

    # Named API parameters (client.predict(class_id=3, steps=20, api_name="/generate")), then Gradio's progress.
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter(n, kind) for n in api_names(spec)]
    params.append(inspect.Parameter("progress", kind, default=gr.Progress()))
    run.__signature__ = inspect.Signature(params)
    return run


CONTROL_NAMES = ["sampler", "steps", "guidance_scale", "interval_start", "interval_end", "seed", "num_images"]


def api_names(spec: DemoSpec) -> list[str]:
    """The endpoint's parameter names: the label inputs, then CONTROL_NAMES."""
    kind = spec.picker.kind
    if kind == "classes":
        labels = ["class_id"]
    elif kind == "attributes":
        labels = []
        for k, attr in enumerate(spec.picker.attributes):
            name = attr if attr.isidentifier() and attr not in CONTROL_NAMES + labels else f"attr{k}"
            labels.append(name)
    elif kind == "embedding":
        labels = ["prompt", "image"]
    else:
        labels = []
    return labels + CONTROL_NAMES


def _controls(spec: DemoSpec) -> list:
    """Sampler, steps, guidance scale, guidance interval (start, end), seed, number of images."""
    import gradio as gr

    b, on = spec.bounds, spec.guidance
    sampler = gr.Dropdown(
        choices=spec.samplers, value=spec.default_sampler, label="Sampler", elem_id="sampler"
    )
    steps = gr.Slider(
        1,
        spec.max_steps,
        value=spec.default_steps[spec.default_sampler],
        step=1,
        label="Steps",
        elem_id="steps",
    )
    guidance = gr.Slider(
        b.min_guidance,
        b.max_guidance,
        value=spec.default_guidance if on else 1.0,
        step=0.1,
        label="Guidance scale" + ("" if on else " (off: the model has no null label)"),
        interactive=on,
        elem_id="guidance",
    )
    with gr.Row():
        lo = gr.Slider(
            0, 1, value=0, step=0.01, label="Guide from noise level", interactive=on, elem_id="interval-lo"
        )
        hi = gr.Slider(
            0, 1, value=1, step=0.01, label="to noise level", interactive=on, elem_id="interval-hi"
        )
    seed = gr.Textbox(value="random", label="Seed (an integer, or 'random')", max_lines=1, elem_id="seed")
    num = gr.Slider(1, b.max_images, value=min(4, b.max_images), step=1, label="Images", elem_id="num-images")
    sampler.change(
        lambda s: gr.update(value=spec.default_steps.get(s, 50)),
        sampler,
        steps,
        api_visibility="private",
        queue=False,
    )
    return [sampler, steps, guidance, lo, hi, seed, num]


def build_app(pipe: Any, spec: DemoSpec, work_dir: str | Path | None = None):
    """The page for one loaded pipeline (a gr.Blocks; the caller queues and launches it, with page_css(spec))."""
    import gradio as gr

    work = Path(work_dir or tempfile.mkdtemp(prefix="ditkit-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    title = f"ditkit demo: {spec.name}"
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f"## {title}")
        gr.Markdown(spec.card_markdown(), elem_id="card")
        with gr.Row():
            with gr.Column(scale=1):
                inputs = label_inputs(spec) + _controls(spec)
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=2):
                gallery = gr.Gallery(
                    label="Samples", format="png", columns=4, elem_id="gallery", interactive=False
                )
                files = gr.File(
                    label="Downloads (PNGs as a zip, samples.npz)", file_count="multiple", elem_id="downloads"
                )
                info = gr.Markdown(elem_id="run-info")
        button.click(
            make_handler(pipe, spec, work),
            inputs=inputs,
            outputs=[gallery, files, info],
            api_name="generate",
            concurrency_limit=1,
        )
    return demo
