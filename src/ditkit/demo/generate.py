"""One demo request -> images: validation against the bounds, the pipeline call, the downloads.

No Gradio here: the page and the API call `generate`, and a ValueError becomes the page's one-line error.
"""

from __future__ import annotations

import inspect
import io
import random
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .spec import ANY_ID, Bounds, DemoSpec

Progress = Callable[[int, int], None]  # (steps done, steps in all)


@dataclass
class GenerateRequest:
    class_id: int | None = None
    attributes: dict[str, int] = field(default_factory=dict)  # attribute -> id; ANY_ID (-1) leaves it free
    prompt: str = ""
    image_path: str | None = None
    sampler: str = "ddim"
    steps: int = 50
    guidance_scale: float = 4.0
    guidance_interval: tuple[float, float] = (0.0, 1.0)
    seed: int | None = None  # None: a random seed (reported back)
    num_images: int = 4


@dataclass
class Generation:
    images: list  # PIL images at the checkpoint's resolution
    uint8: np.ndarray  # (N, H, W, 3)
    labels: np.ndarray  # (N,) class ids, (N, K) attribute ids (-1 = free), or -1 when there are none
    seed: int
    info: dict[str, Any]
    zip_path: Path | None = None
    npz_path: Path | None = None


def parse_seed(value: Any) -> int | None:
    """'random' / '' / None -> None; an integer (or its text) in 0..2**63-1 -> that integer."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "random")):
        return None
    try:
        seed = int(str(value).strip()) if not isinstance(value, (int, float)) else int(value)
    except ValueError:
        raise ValueError(f"seed must be an integer or 'random', got {value!r}") from None
    if isinstance(value, float) and value != seed:
        raise ValueError(f"seed must be an integer or 'random', got {value!r}")
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must lie in 0..{2**63 - 1} (or be 'random'), got {seed}")
    return seed


def _in_range(name: str, value: Any, lo: float, hi: float, integer: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and value != int(value)):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {kind} in {lo:g}..{hi:g}, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must lie in {lo:g}..{hi:g}, got {value:g}")


def validate(spec: DemoSpec, req: GenerateRequest) -> None:
    """Refuse anything outside the bounds with a one-line ValueError naming the bound."""
    b = spec.bounds
    if req.sampler not in spec.samplers:
        raise ValueError(f"unknown sampler {req.sampler!r}; choose one of {', '.join(spec.samplers)}")
    _in_range("steps", req.steps, 1, spec.max_steps, integer=True)
    _in_range("number of images", req.num_images, 1, b.max_images, integer=True)
    _in_range("guidance scale", req.guidance_scale, b.min_guidance, b.max_guidance)
    if not spec.guidance and req.guidance_scale != 1:
        raise ValueError("this model has no null label (or no condition), so guidance is off: use guidance 1")
    lo, hi = req.guidance_interval
    _in_range("guidance interval start", lo, 0, 1)
    _in_range("guidance interval end", hi, 0, 1)
    if lo > hi:
        raise ValueError(f"the guidance interval start ({lo:g}) must not exceed its end ({hi:g})")
    _validate_labels(spec, req)


def _validate_labels(spec: DemoSpec, req: GenerateRequest) -> None:
    picker = spec.picker
    if picker.kind == "classes":
        n = len(picker.classes)
        if req.class_id is None:
            raise ValueError("pick a class")
        _in_range("class", req.class_id, 0, n - 1, integer=True)
    elif picker.kind == "attributes":
        unknown = sorted(set(req.attributes) - set(picker.attributes))
        if unknown:
            raise ValueError(f"unknown attribute(s) {unknown}; this model has {', '.join(picker.attributes)}")
        for attr, value in req.attributes.items():
            _in_range(attr, value, ANY_ID, len(picker.attributes[attr]) - 2, integer=True)
    elif picker.kind == "embedding":
        prompt, image = (req.prompt or "").strip(), req.image_path
        if len(req.prompt or "") > spec.bounds.max_prompt_chars:
            raise ValueError(
                f"the prompt has {len(req.prompt)} characters; at most {spec.bounds.max_prompt_chars}"
            )
        if bool(prompt) == bool(image):
            raise ValueError("give a prompt or an image (exactly one)")
        if not picker.has_encoder:
            raise ValueError("this checkpoint has no condition encoder; restart with a run that names one")


def load_upload(path: str | Path, bounds: Bounds):
    """An uploaded image as RGB, after checking its type, size and pixel count (one-line errors)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    kinds = ", ".join(t.lstrip(".") for t in bounds.upload_types)
    if path.suffix.lower() not in bounds.upload_types:
        raise ValueError(f"{path.name}: not an image file; upload one of {kinds}")
    size = path.stat().st_size
    if size > bounds.max_upload_bytes:
        raise ValueError(
            f"{path.name}: {size / 2**20:.1f} MB; uploads are limited to {bounds.max_upload_bytes // 2**20} MB"
        )
    try:
        with Image.open(path) as img:
            if img.width * img.height > bounds.max_upload_pixels:
                raise ValueError(
                    f"{path.name}: {img.width}x{img.height} pixels is too large; at most 4096x4096"
                )
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError):
        raise ValueError(f"{path.name}: not a readable image; upload one of {kinds}") from None


def _supports(pipe: Any, keyword: str) -> bool:
    try:
        return keyword in inspect.signature(pipe.__call__).parameters
    except (TypeError, ValueError):
        return False


def _condition_kwargs(pipe: Any, spec: DemoSpec, req: GenerateRequest) -> tuple[dict[str, Any], np.ndarray]:
    n, kind = req.num_images, spec.picker.kind
    if kind == "classes":
        return {"class_labels": [int(req.class_id)] * n}, np.full(n, int(req.class_id), dtype=np.int64)
    if kind == "attributes":
        row = {a: int(v) for a, v in req.attributes.items() if int(v) != ANY_ID}
        ids = [int(req.attributes.get(a, ANY_ID)) for a in spec.picker.attributes]
        return {"class_labels": [dict(row) for _ in range(n)]}, np.tile(
            np.asarray(ids, dtype=np.int64), (n, 1)
        )
    free = np.full(n, -1, dtype=np.int64)
    if kind == "embedding":
        if (req.prompt or "").strip():
            return {"prompt": [req.prompt.strip()] * n}, free
        return {"image": [load_upload(req.image_path, spec.bounds)] * n}, free
    return {"num_images": n}, free


def generate(
    pipe: Any,
    spec: DemoSpec,
    req: GenerateRequest,
    progress: Progress | None = None,
    out_dir: Path | None = None,
) -> Generation:
    """Validate, sample `req.num_images` images, and (with `out_dir`) write images.zip and samples.npz."""
    import torch

    validate(spec, req)
    kwargs, labels = _condition_kwargs(pipe, spec, req)
    seed = req.seed if req.seed is not None else random.SystemRandom().randrange(2**31)
    kwargs["generator"] = [torch.Generator().manual_seed(seed * 1_000_003 + i) for i in range(req.num_images)]
    interval = tuple(float(v) for v in req.guidance_interval)
    if _supports(pipe, "guidance_interval"):
        kwargs["guidance_interval"] = interval
    elif interval != (0.0, 1.0):
        raise ValueError("this ditkit's pipeline has no guidance interval; leave it at 0..1")
    if progress is not None and _supports(pipe, "callback"):
        kwargs["callback"] = lambda i, total, _x: progress(i + 1, total)
    out = pipe(
        **kwargs,
        num_inference_steps=int(req.steps),
        guidance_scale=float(req.guidance_scale) if spec.guidance else 1.0,
        output_type="np",
        sampler=req.sampler,
    )
    u8 = (np.asarray(out.images) * 255).round().clip(0, 255).astype(np.uint8)
    u8 = np.repeat(u8, 3, axis=-1) if u8.shape[-1] == 1 else u8[..., :3]
    from PIL import Image

    images = [Image.fromarray(a) for a in u8]
    info = dict(getattr(out, "info", None) or {})
    info.update(seed=seed, sampler=req.sampler, steps=int(req.steps), images=len(images))
    result = Generation(images, u8, labels, seed, info)
    if out_dir is not None:
        result.zip_path, result.npz_path = write_downloads(images, u8, labels, Path(out_dir))
    return result


def write_downloads(images: list, u8: np.ndarray, labels: np.ndarray, out_dir: Path) -> tuple[Path, Path]:
    """out_dir/images.zip (one PNG per image) and out_dir/samples.npz (arr_0 uint8 NxHxWx3, arr_1 int64)."""
    from ..io.native import atomic_write

    def write_zip(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for i, img in enumerate(images):
                buf = io.BytesIO()
                img.save(buf, format="PNG")
                zf.writestr(f"{i:06d}.png", buf.getvalue())

    def write_npz(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, arr_0=u8, arr_1=labels.astype(np.int64))

    return atomic_write(out_dir / "images.zip", write_zip), atomic_write(out_dir / "samples.npz", write_npz)
