"""Fine-tuning: start a new model from the weights of another (`ditkit train --init-from PATH`).

The source is anything `ditkit.load_model` reads (the official DiT-XL-2-256x256.pt, a diffusers folder, a
ditkit checkpoint or weights file); EMA weights are taken when the file has them. The transformer body must
have the same depth, width and patch size (pick the matching preset with --model); everything else adapts,
and a report says what happened to every tensor:

    kept         same name, same shape, same meaning: copied.
    resized      copied in part:
                 - a label table whose class set differs: a fresh N(0, 0.02) table (the official init) in which
                   the rows of classes with the *same name* in the source are copied (names compared
                   case-insensitively, any comma-separated synonym counts, ambiguous names are not used);
                   rows are never copied by index between different class sets, because class 3 of ImageNet
                   has nothing to do with class 3 of your folders. The null (guidance) row is the
                   unconditional embedding, which means the same thing for any class set: it is copied when
                   both models have one.
                 - the output layer when one model learns sigma and the other does not: the noise half is
                   copied, the variance half starts at zero (the official init).
    initialised  kept at the new model's own init: tensors the source lacks or whose shape differs (a new
                 token grid gets its own sin-cos position table, a new channel count a new patch embedding).
    ignored      source tensors the new model has no place for.

A label table is kept whole when the class set is the same: same count and same names, or the same count
with names missing on one side (then the report says that rows were kept by index).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

from .models import DiT


@dataclass
class InitReport:
    source: str
    format: str
    kept: list[str] = field(default_factory=list)
    resized: list[tuple[str, str]] = field(default_factory=list)  # (name, what was done)
    initialised: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [
            f"init from {self.source} ({self.format}): kept {len(self.kept)} tensors, resized "
            f"{len(self.resized)}, initialised {len(self.initialised)}, ignored {len(self.ignored)}"
        ]
        out += [f"  resized      {name}: {why}" for name, why in self.resized]
        out += [f"  initialised  {name}: {why}" for name, why in self.initialised]
        if self.ignored:
            shown = ", ".join(self.ignored[:6]) + (", ..." if len(self.ignored) > 6 else "")
            out.append(f"  ignored      {shown}")
        out += [f"  note: {n}" for n in self.notes]
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


def _shape(t: torch.Tensor) -> str:
    return "x".join(str(s) for s in t.shape)


def _name_index(names: list[str] | None) -> dict[str, int]:
    """casefolded name or synonym -> class id, for names that point at exactly one class."""
    if not names:
        return {}
    seen: dict[str, set[int]] = {}
    for i, label in enumerate(names):
        for syn in str(label).split(","):
            key = " ".join(syn.split()).casefold()
            if key:
                seen.setdefault(key, set()).add(i)
    return {k: next(iter(v)) for k, v in seen.items() if len(v) == 1}


def _same_names(a: list[str], b: list[str]) -> bool:
    return [" ".join(x.split()).casefold() for x in a] == [" ".join(x.split()).casefold() for x in b]


def _adapt_table(
    src: torch.Tensor,
    dst: torch.Tensor,
    src_names: list[str] | None,
    dst_names: list[str] | None,
    src_classes: int,
    dst_classes: int,
    src_null: bool,
    dst_null: bool,
) -> tuple[torch.Tensor, str, str]:
    """(new table, "kept" | "resized" | "initialised", explanation)."""
    out = dst.clone()
    same_count = src_classes == dst_classes
    if same_count and (src_names is None or dst_names is None or _same_names(src_names, dst_names)):
        out[:dst_classes] = src[:src_classes]
        why = (
            "same class set"
            if src_names and dst_names
            else "same class count, no names to compare: kept by index"
        )
        if dst_null and src_null:
            out[dst_classes] = src[src_classes]
            return out, ("kept" if src.shape == dst.shape else "resized"), why
        if dst_null:
            return out, "resized", f"{why}; the null row is new (the source has none)"
        return (
            out,
            ("kept" if src.shape == dst.shape else "resized"),
            why + ("; source null row dropped" if src_null else ""),
        )
    index = _name_index(src_names)
    copied = []
    for i, label in enumerate(dst_names or []):
        for syn in str(label).split(","):
            j = index.get(" ".join(syn.split()).casefold())
            if j is not None:
                out[i] = src[j]
                copied.append(i)
                break
    parts = [
        f"{src_classes} -> {dst_classes} classes, class set differs: {len(copied)} row(s) copied by name"
    ]
    if dst_null and src_null:
        out[dst_classes] = src[src_classes]
        parts.append("null row copied")
    if not copied and not (dst_null and src_null):
        return (
            dst.clone(),
            "initialised",
            parts[0].replace("0 row(s) copied by name", "no class name in common"),
        )
    if src_names is None:
        parts.append("the source has no class names")
    return out, "resized", "; ".join(parts)


def _label_tables(model: DiT) -> list[tuple[str, int]]:
    """(state-dict key, class count) of each label table."""
    cfg = model.config
    if cfg.cond_dim or not cfg.label_sizes:
        return []
    if cfg.multi_label:
        return [(f"y_embedder.tables.{k}.weight", n) for k, n in enumerate(cfg.label_sizes)]
    return [("y_embedder.embedding_table.weight", cfg.num_classes)]


def _attribute_names(
    label_names: Any, model: DiT, attributes: dict[str, list[str]] | None = None
) -> list[tuple[str | None, list[str] | None]]:
    """(attribute name, class names) per label table of `model`."""
    tables = _label_tables(model)
    if isinstance(label_names, dict) or attributes:
        names = attributes or label_names
        return [(k, list(v)) for k, v in names.items()][: len(tables)] or [(None, None)] * len(tables)
    if isinstance(label_names, list | tuple):
        return [(None, [str(n) for n in label_names])]
    return [(None, None)] * len(tables)


def _adapt_final(src: torch.Tensor, dst: torch.Tensor, p: int, d_src: int, d_dst: int) -> torch.Tensor | None:
    """final_layer.linear weight/bias between learn_sigma and not: rows are (p, p, C_out) in that order."""
    if src.shape[1:] != dst.shape[1:]:
        return None
    c_src, c_dst = src.shape[0] // (p * p), dst.shape[0] // (p * p)
    if c_src * p * p != src.shape[0] or c_dst * p * p != dst.shape[0]:
        return None
    keep = min(c_src, c_dst)
    if keep not in (d_src, d_dst) or {c_src, c_dst} != {keep, 2 * keep}:
        return None
    s = src.reshape(p * p, c_src, *src.shape[1:])
    out = torch.zeros(p * p, c_dst, *dst.shape[1:], dtype=dst.dtype)
    out[:, :keep] = s[:, :keep]
    return out.reshape(dst.shape)


def load_source(path: str | os.PathLike):
    """The source model of a fine-tune (EMA weights when present), via ditkit.io.load_any."""
    from .io import load_any

    return load_any(path, use_ema=True)


def check_compatible(source_cfg, target_cfg, path: str, heads_known: bool = True) -> None:
    """The transformer body must match; otherwise name the preset to use."""
    from .presets import MODEL_PRESETS

    diffs = [
        f"{k} {getattr(source_cfg, k)} (config: {getattr(target_cfg, k)})"
        for k in ("depth", "hidden_size", "patch_size")
        if getattr(source_cfg, k) != getattr(target_cfg, k)
    ]
    if not diffs:
        return
    match = [
        name
        for name, p in MODEL_PRESETS.items()
        if (p.get("depth"), p.get("hidden_size"), p.get("patch_size"))
        == (source_cfg.depth, source_cfg.hidden_size, source_cfg.patch_size)
    ]
    hint = (
        f"train with --model {match[0]}"
        if match
        else f"set model.depth={source_cfg.depth} model.hidden_size={source_cfg.hidden_size} "
        + (f"model.num_heads={source_cfg.num_heads} " if heads_known else "")
        + f"model.patch_size={source_cfg.patch_size}"
    )
    raise ValueError(f"--init-from {path}: the source model has {', '.join(diffs)}; {hint}")


def _check_finite(state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    for name, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(
                f"--init-from {path}: non-finite weights (NaN/inf) in key {name!r}; the file is damaged or comes "
                "from a run that diverged: start from an earlier checkpoint"
            )


def _add_notes(report: InitReport, loaded: Any, scfg, tcfg) -> None:
    """Differences that do not stop the copy: attention heads, the loader's own notes, block, arithmetic."""
    if scfg.num_heads != tcfg.num_heads and loaded.format.startswith("ditkit"):
        report.notes.append(
            f"the source has {scfg.num_heads} attention heads, this model {tcfg.num_heads}: the weights fit but "
            "compute differently; set model.num_heads to match"
        )
    for note in getattr(loaded, "notes", []) or []:
        report.notes.append(note)
    if scfg.block != tcfg.block:
        report.notes.append(f"block design differs: source {scfg.block}, this model {tcfg.block}")
    if scfg.arithmetic != tcfg.arithmetic:
        report.notes.append(f"the source uses {scfg.arithmetic} arithmetic, this model {tcfg.arithmetic}")


def _source_table(
    k: int, attr: str | None, src_by_attr: dict[str, int], n_src_tables: int, n_dst_tables: int
) -> int | None:
    """Which source label table feeds table k of the new model: same attribute name, else same position."""
    if attr is not None and attr in src_by_attr:
        return src_by_attr[attr]
    if n_src_tables == n_dst_tables:
        return k
    return None


def _copy_label_tables(
    net: DiT,
    loaded: Any,
    label_names: Any,
    src_state: dict[str, torch.Tensor],
    new_state: dict[str, torch.Tensor],
    report: InitReport,
) -> set[str]:
    """Adapt each label table of `net` from the source's (into `new_state`); the keys handled."""
    source, dst_state = loaded.model, net.state_dict()
    handled: set[str] = set()
    src_tables, dst_tables = _label_tables(source), _label_tables(net)
    if dst_tables:
        src_names = _attribute_names(
            loaded.id2label and [loaded.id2label[i] for i in sorted(loaded.id2label)],
            source,
            getattr(loaded, "attributes", None),
        )
        dst_names = _attribute_names(label_names, net)
        src_by_attr = {a: k for k, (a, _) in enumerate(src_names) if a is not None}
        for k, (key, n_dst) in enumerate(dst_tables):
            attr, names = dst_names[k] if k < len(dst_names) else (None, None)
            j = _source_table(k, attr, src_by_attr, len(src_tables), len(dst_tables))
            label = f"{key}" + (f" ({attr})" if attr else "")
            if j is None or j >= len(src_tables):
                what = (
                    "the source has no matching label table"
                    if src_tables
                    else "the source has no label table"
                )
                report.initialised.append((label, what))
                handled.add(key)
                continue
            skey, n_src = src_tables[j]
            table, verdict, why = _adapt_table(
                src_state[skey],
                dst_state[key],
                src_names[j][1],
                names,
                n_src,
                n_dst,
                source.config.has_null_label,
                net.config.has_null_label,
            )
            new_state[key] = table
            shapes = f"{_shape(src_state[skey])} -> {_shape(dst_state[key])}"
            if verdict == "kept":
                report.kept.append(key)
            elif verdict == "resized":
                report.resized.append((label, f"{shapes}; {why}"))
            else:
                report.initialised.append((label, f"{shapes}; {why}"))
            handled.add(key)
            handled.add(skey)
    for skey, _ in src_tables:
        handled.add(skey)
    return handled


def _why_initialised(key: str, src: torch.Tensor, dst: torch.Tensor, scfg, tcfg) -> str:
    """The report's reason for keeping a tensor whose shape differs at the new model's own init."""
    if key == "pos_embed":
        return f"{_shape(src)} -> {_shape(dst)}: new token grid " + (
            "(its own sin-cos table)" if tcfg.pos_embed == "sincos" else "(fresh learned table)"
        )
    if key.startswith("x_embedder."):
        return f"{_shape(src)} -> {_shape(dst)}: {scfg.in_channels} -> {tcfg.in_channels} input channels"
    return f"shape {_shape(src)} in the source, {_shape(dst)} here"


def _copy_rest(
    net: DiT,
    source: DiT,
    src_state: dict[str, torch.Tensor],
    new_state: dict[str, torch.Tensor],
    handled: set[str],
    report: InitReport,
) -> None:
    """Every tensor but the label tables: copied when the shape matches, the output layer adapted between
    learn_sigma and not, the rest left at the new model's init."""
    scfg, tcfg = source.config, net.config
    p = tcfg.patch_size
    for key, dst in net.state_dict().items():
        if key in handled:
            continue
        src = src_state.get(key)
        if src is None:
            report.initialised.append((key, "not in the source"))
            continue
        if src.shape == dst.shape:
            new_state[key] = src.to(dst.dtype)
            report.kept.append(key)
            continue
        if key.startswith("final_layer.linear."):
            adapted = _adapt_final(src, dst, p, scfg.in_channels, tcfg.in_channels)
            if adapted is not None:
                new_state[key] = adapted.to(dst.dtype)
                report.resized.append(
                    (
                        key,
                        f"{_shape(src)} -> {_shape(dst)}; noise channels copied, variance channels "
                        + ("dropped" if src.shape[0] > dst.shape[0] else "start at zero"),
                    )
                )
                continue
        report.initialised.append((key, _why_initialised(key, src, dst, scfg, tcfg)))


@torch.no_grad()
def init_from(
    net: DiT, path: str | os.PathLike, *, label_names: Any = None, loaded: Any = None
) -> InitReport:
    """Copy what fits from the model at `path` into `net` (in place) and report it (see the module docstring).

    `label_names` are the new model's class names: a `ditkit.conditioning.Conditioning`, a list, or a dict
    attribute -> list. Source weights with NaN/inf are refused, naming the first bad tensor."""
    from .conditioning import Conditioning

    if isinstance(label_names, Conditioning):
        label_names = label_names.label_names()
    loaded = loaded if loaded is not None else load_source(path)
    source = loaded.model
    src_state = source.state_dict()
    _check_finite(src_state, path)
    check_compatible(source.config, net.config, str(path), heads_known=loaded.format.startswith("ditkit"))
    report = InitReport(str(path), loaded.format)
    _add_notes(report, loaded, source.config, net.config)
    dst_state = net.state_dict()
    new_state = dict(dst_state)
    handled = _copy_label_tables(net, loaded, label_names, src_state, new_state, report)
    _copy_rest(net, source, src_state, new_state, handled, report)
    report.ignored = sorted(k for k in src_state if k not in dst_state and k not in handled)
    net.load_state_dict(new_state, strict=True)
    return report
