"""The grid columns of `ditkit sample`: what each column is conditioned on, from the label, prompt and image flags.

`grid_columns` turns --labels/--label (class ids or names, ATTR=NAME for multi-attribute models), --prompt and
--image (embedding models) into one pipeline-kwargs dict per column, with a file tag and an npz label for each.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from typing import Any

Columns = tuple[list[dict[str, Any]], list[str], list[Any]]


# -- names -> ids -------------------------------------------------------------------------------------
def _single_ids(pipe, requested: list[str]) -> list[int]:
    n = pipe.transformer.config.num_classes
    names = [pipe.id2label.get(i, "") for i in range(n)] if pipe.id2label else None
    ids = []
    for item in requested:
        text = item
        if "=" in item and not (names and any(item.casefold() == x.casefold() for x in names)):
            text = item.split("=", 1)[1]  # "class=cat" -> "cat"
        ids.append(pipe.conditioning.attribute_id(0, text.strip()))
    return ids


def _multi_rows(pipe, requested: list[str]) -> list[tuple[int | None, ...]]:
    """Cross product of the values given per attribute (None: the attribute is left free)."""
    cfg = pipe.transformer.config
    attrs = list(pipe.attributes) if pipe.attributes else [f"attr{k}" for k in range(len(cfg.label_sizes))]
    lower = {a.casefold(): k for k, a in enumerate(attrs)}
    chosen: dict[int, list[int]] = {}
    for item in requested:
        if "=" not in item:
            raise ValueError(
                f"label {item!r}: this model has several attributes ({', '.join(attrs)}); pass ATTR=NAME, e.g. "
                f"--label {attrs[0]}=..."
            )
        attr, value = (s.strip() for s in item.split("=", 1))
        k = lower.get(attr.casefold())
        if k is None:
            raise ValueError(f"unknown attribute {attr!r}; this model has {', '.join(attrs)}")
        idx = pipe.conditioning.attribute_id(k, value)
        if idx not in chosen.setdefault(k, []):
            chosen[k].append(idx)
    missing = [attrs[k] for k in range(len(attrs)) if k not in chosen]
    if missing and not cfg.has_null_label:
        raise ValueError(
            f"this model was trained without label dropout, so every attribute needs a value; missing: "
            f"{', '.join(missing)}"
        )
    options = [chosen.get(k, [None]) for k in range(len(attrs))]
    return [tuple(row) for row in itertools.product(*options)]


def _read_condition_images(paths: list[str], size: int):
    import torch

    from ditkit.data.images import UnreadableImage, decode_image, to_model_space

    out = []
    for p in paths:
        if not Path(p).is_file():
            raise FileNotFoundError(f"--image {p}: no such file")
        try:
            arr, _ = decode_image(p, size)
        except UnreadableImage as err:
            raise ValueError(f"--image {p}: not a readable image ({err})") from None
        out.append(to_model_space(arr))
    return torch.stack(out)


# -- columns ------------------------------------------------------------------------------------------
def _embedding_columns(pipe, args: argparse.Namespace, labels: list[str], image_size: int | None) -> Columns:
    """One column per --prompt, then one per --image, through the pipeline's encoder."""
    import torch

    cfg = pipe.transformer.config
    if labels:
        raise ValueError(
            "this model is conditioned on embeddings: pass --prompt TEXT or --image PATH, not labels"
        )
    if not (args.prompt or args.image):
        raise ValueError("this model is conditioned on embeddings: pass --prompt TEXT or --image PATH")
    if pipe.encoder is None:
        raise ValueError("prompts and images need an encoder: pass --encoder SPEC (e.g. toy:64)")
    conds = []
    if args.prompt:
        conds.append(pipe.encoder.encode_text(list(args.prompt)).float())
    if args.image:
        images = _read_condition_images(args.image, image_size or 256)
        conds.append(pipe.encoder.encode_image(images).float())
    cond = torch.cat(conds).cpu()
    if cond.shape[1] != cfg.cond_dim:
        raise ValueError(
            f"the encoder gives {cond.shape[1]}-wide embeddings but this model expects {cfg.cond_dim}; use the "
            "encoder the model was trained with"
        )
    tags = [f"p{k}" for k in range(len(args.prompt))] + [f"i{k}" for k in range(len(args.image))]
    return [{"condition": c[None]} for c in cond], tags, list(range(len(tags)))


def _multi_label_columns(pipe, labels: list[str]) -> Columns:
    """One column per combination of the attribute values given (default: the first attribute's classes)."""
    cfg = pipe.transformer.config
    if labels:
        rows = _multi_rows(pipe, labels)
    else:  # like the training grid: the first attribute's classes, the others free
        free = None if cfg.has_null_label else 0
        rest = (free,) * (len(cfg.label_sizes) - 1)
        rows = [(i, *rest) for i in range(min(cfg.label_sizes[0], 8))]
    nulls = cfg.label_sizes
    tags = ["-".join("x" if v is None else str(v) for v in row) for row in rows]
    arrs = [[nulls[k] if v is None else v for k, v in enumerate(row)] for row in rows]
    return [{"class_labels": [list(row)]} for row in rows], tags, arrs


def grid_columns(pipe, args: argparse.Namespace, image_size: int | None) -> Columns:
    """(pipeline kwargs per column, file tag per column, npz label per column)."""
    cfg = pipe.transformer.config
    labels = [*(args.labels or []), *args.label]
    if cfg.cond_dim:
        return _embedding_columns(pipe, args, labels, image_size)
    if args.prompt or args.image:
        what = "class labels" if cfg.label_sizes else "nothing (unconditional)"
        raise ValueError(
            f"this model is conditioned on {what}; --prompt/--image need a model trained with an encoder "
            "(model.encoder)" + ("; use --label/--labels" if cfg.label_sizes else "")
        )
    if not cfg.label_sizes:
        if labels:
            raise ValueError("this model is unconditional; drop --labels")
        return [{}], [""], [-1]
    if cfg.multi_label:
        return _multi_label_columns(pipe, labels)
    n = cfg.num_classes
    ids = _single_ids(pipe, labels) if labels else (list(range(n)) if n <= 16 else list(range(8)))
    return [{"class_labels": [i]} for i in ids], [str(i) for i in ids], ids
