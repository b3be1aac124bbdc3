"""State-dict layouts: the official DiT keys (ditkit's own) and diffusers' DiTTransformer2DModel keys.

Everything here is pure tensor bookkeeping, with no file access: infer a ModelConfig from tensor shapes, check a
state dict against the shapes a config implies, and map official <-> diffusers. Each mapping pops every key
it uses from a copy of its input and fails on leftovers, so a key can never be dropped silently.

Key mapping (dit-facts §2.3):
    x_embedder.proj.*                   <-> pos_embed.proj.*
    t_embedder.mlp.{0,2}.*              <-> transformer_blocks.{i}.norm1.emb.timestep_embedder.linear_{1,2}.*
    y_embedder.embedding_table.weight   <-> transformer_blocks.{i}.norm1.emb.class_embedder.embedding_table.weight
    blocks.{i}.adaLN_modulation.1.*     <-> transformer_blocks.{i}.norm1.linear.*
    blocks.{i}.attn.qkv.*  (q;k;v rows) <-> transformer_blocks.{i}.attn1.to_{q,k,v}.*
    blocks.{i}.attn.proj.*              <-> transformer_blocks.{i}.attn1.to_out.0.*
    blocks.{i}.mlp.fc1.* / fc2.*        <-> transformer_blocks.{i}.ff.net.0.proj.* / ff.net.2.*
    final_layer.adaLN_modulation.1.*    <-> proj_out_1.*
    final_layer.linear.*                <-> proj_out_2.*
    pos_embed (fixed sin-cos buffer)    <-> (none: diffusers recomputes it)
diffusers keeps one copy of the timestep/label embedders per block; ditkit (like the official model) has one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch

from ..models import ModelConfig

FREQUENCY_SIZE = 256  # width of the sinusoidal timestep features (official and diffusers)
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")
_DIFFUSERS_BLOCK_RE = re.compile(r"^transformer_blocks\.(\d+)\.")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")


# -- checks -----------------------------------------------------------------------------------------
def _short(keys, n: int = 4) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")


def check_state(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], where: str
) -> None:
    """Raise a one-line ValueError naming missing, unexpected and mis-shaped keys."""
    problems = []
    missing = set(expected) - set(state)
    extra = set(state) - set(expected)
    if missing:
        problems.append(f"missing {len(missing)} key(s): {_short(missing)}")
    if extra:
        problems.append(f"unexpected {len(extra)} key(s): {_short(extra)}")
    bad = [
        f"{k} has shape {tuple(state[k].shape)}, expected {tuple(expected[k])}"
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != tuple(expected[k])
    ]
    if bad:
        problems.append(
            f"{len(bad)} shape mismatch(es): " + "; ".join(bad[:3]) + (" ..." if len(bad) > 3 else "")
        )
    if problems:
        raise ValueError(f"{where}: " + "; ".join(problems))


def official_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of ditkit's (= the official) state dict for a config, without allocating anything."""
    from ..presets import build_model

    model = build_model(config, device="meta")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def diffusers_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of diffusers' DiTTransformer2DModel state dict for a config."""
    d, p = config.hidden_size, config.patch_size
    mlp = int(d * config.mlp_ratio)
    # diffusers always has the null row (its class_dropout_prob is fixed at 0.1)
    rows = config.num_classes + 1
    shapes: dict[str, tuple[int, ...]] = {
        "pos_embed.proj.weight": (d, config.in_channels, p, p),
        "pos_embed.proj.bias": (d,),
        "proj_out_1.weight": (2 * d, d),
        "proj_out_1.bias": (2 * d,),
        "proj_out_2.weight": (p * p * config.out_channels, d),
        "proj_out_2.bias": (p * p * config.out_channels,),
    }
    for i in range(config.depth):
        b = f"transformer_blocks.{i}."
        shapes.update(
            {
                b + "norm1.emb.timestep_embedder.linear_1.weight": (d, FREQUENCY_SIZE),
                b + "norm1.emb.timestep_embedder.linear_1.bias": (d,),
                b + "norm1.emb.timestep_embedder.linear_2.weight": (d, d),
                b + "norm1.emb.timestep_embedder.linear_2.bias": (d,),
                b + "norm1.emb.class_embedder.embedding_table.weight": (rows, d),
                b + "norm1.linear.weight": (6 * d, d),
                b + "norm1.linear.bias": (6 * d,),
                b + "ff.net.0.proj.weight": (mlp, d),
                b + "ff.net.0.proj.bias": (mlp,),
                b + "ff.net.2.weight": (d, mlp),
                b + "ff.net.2.bias": (d,),
            }
        )
        for name in ("to_q", "to_k", "to_v", "to_out.0"):
            shapes[b + f"attn1.{name}.weight"] = (d, d)
            shapes[b + f"attn1.{name}.bias"] = (d,)
    return shapes


def require_official_layout(config: ModelConfig, target: str) -> None:
    """Official and diffusers files hold the paper's adaLN-Zero DiT with one class label and nothing else."""
    official = getattr(config, "is_official_layout", True)
    if not official:
        raise ValueError(
            f"this model ({_describe_variant(config)}) has no {target} equivalent: only the official adaLN-Zero "
            "DiT with sin-cos positions and a single class label converts; save it as ditkit safetensors instead"
        )


def _describe_variant(config: ModelConfig) -> str:
    fields = (
        ("block", "adaln-zero"),
        ("norm", "pre"),
        ("pos_embed", "sincos"),
        ("final_layer", "adaln"),
        ("cond_dim", 0),
    )
    parts = [f"{k}={getattr(config, k)!r}" for k, default in fields if getattr(config, k, default) != default]
    if isinstance(config.num_classes, tuple):
        parts.append(f"num_classes={config.num_classes}")
    return ", ".join(parts) or "a non-official variant"


# -- recognising layouts ----------------------------------------------------------------------------
def strip_wrapper_prefix(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str | None]:
    """Drop a prefix every key shares (DDP's `module.`, torch.compile's `_orig_mod.`)."""
    for prefix in _WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            return {k[len(prefix) :]: v for k, v in state.items()}, prefix
    return state, None


def is_official_layout(state: Mapping[str, object]) -> bool:
    return "x_embedder.proj.weight" in state and "final_layer.linear.weight" in state


def is_diffusers_layout(state: Mapping[str, object]) -> bool:
    return "pos_embed.proj.weight" in state and "proj_out_2.weight" in state


def _depth(state: Mapping[str, object], pattern: re.Pattern) -> int:
    ids = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    if ids and ids != set(range(max(ids) + 1)):
        missing = sorted(set(range(max(ids) + 1)) - ids)
        raise ValueError(f"blocks {missing[:5]} are missing (found blocks up to {max(ids)})")
    return len(ids)


def default_num_heads(hidden_size: int) -> int:
    """The official convention: head_dim 72 for width 1152 (XL), 64 otherwise."""
    if hidden_size == 1152:
        return 16
    if hidden_size % 64 == 0:
        return hidden_size // 64
    for head_dim in (32, 16, 8):
        if hidden_size % head_dim == 0:
            return hidden_size // head_dim
    return 1


def infer_official_config(
    state: Mapping[str, torch.Tensor], *, num_heads: int | None = None, where: str = "state dict"
) -> tuple[ModelConfig, list[str]]:
    """A ModelConfig from the tensor shapes of an official-layout state dict, plus notes on what was assumed.

    Heads do not change any shape: a preset with the same depth/width/patch gives them, else the official
    head_dim convention. The label table is assumed to carry the null row (official class_dropout_prob 0.1).
    """
    from ..presets import MODEL_PRESETS

    notes: list[str] = []
    try:
        w = state["x_embedder.proj.weight"]
        hidden, in_channels, patch, patch_w = (int(s) for s in w.shape)
        if patch != patch_w:
            raise ValueError(f"x_embedder.proj.weight has a non-square kernel {patch}x{patch_w}")
        depth = _depth(state, _BLOCK_RE)
        if depth == 0:
            raise ValueError("no transformer blocks (blocks.N.*) found")
        if "pos_embed" not in state:
            raise ValueError("no pos_embed, so the input size cannot be inferred")
        tokens = int(state["pos_embed"].shape[1])
        grid = math.isqrt(tokens)
        if grid * grid != tokens:
            raise ValueError(f"pos_embed has {tokens} tokens, not a square grid")
        out_features = int(state["final_layer.linear.weight"].shape[0])
        if out_features % (patch * patch):
            raise ValueError(f"final_layer.linear.weight has {out_features} rows, not a multiple of patch^2")
        out_channels = out_features // (patch * patch)
        if out_channels == 2 * in_channels:
            learn_sigma = True
        elif out_channels == in_channels:
            learn_sigma = False
        else:
            raise ValueError(
                f"{out_channels} output channels for {in_channels} input channels (expected {in_channels} or "
                f"{2 * in_channels})"
            )
        mlp_ratio = int(state["blocks.0.mlp.fc1.weight"].shape[0]) / hidden
        table = state.get("y_embedder.embedding_table.weight")
    except KeyError as err:
        raise ValueError(f"{where}: not a complete DiT state dict (no {err.args[0]})") from None
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    if table is None:
        num_classes, dropout = 0, 0.0
    else:
        num_classes, dropout = int(table.shape[0]) - 1, 0.1
        notes.append(
            f"{int(table.shape[0])} label rows read as {num_classes} classes + the null (CFG) row, as official"
        )
    name = None
    preset_heads = None
    for preset, spec in MODEL_PRESETS.items():
        if (spec["depth"], spec["hidden_size"], spec["patch_size"]) == (depth, hidden, patch):
            name, preset_heads = preset, spec["num_heads"]
            break
    if num_heads is None:
        num_heads = preset_heads or default_num_heads(hidden)
        if preset_heads is None:
            notes.append(
                f"head count is not stored in the file: assumed {num_heads} (head_dim {hidden // num_heads}); "
                "pass num_heads= if the model was trained with another"
            )
    config = ModelConfig(
        depth=depth,
        hidden_size=hidden,
        num_heads=num_heads,
        patch_size=patch,
        input_size=grid * patch,
        in_channels=in_channels,
        num_classes=num_classes,
        learn_sigma=learn_sigma,
        class_dropout_prob=dropout,
        mlp_ratio=mlp_ratio,
        arithmetic="official",
        name=name,
    )
    return config, notes


# -- official <-> diffusers -------------------------------------------------------------------------
class _Taker:
    """Pops keys from a copy of a state dict; `leftovers()` names what nobody consumed."""

    def __init__(self, state: Mapping[str, torch.Tensor], where: str) -> None:
        self.left = dict(state)
        self.where = where

    def __call__(self, key: str) -> torch.Tensor:
        try:
            return self.left.pop(key)
        except KeyError:
            raise ValueError(f"{self.where}: missing key {key}") from None

    def finish(self) -> None:
        if self.left:
            raise ValueError(
                f"{self.where}: {len(self.left)} key(s) not consumed by the conversion: {_short(self.left)}"
            )


def official_to_diffusers(state: Mapping[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Official/ditkit state dict -> diffusers DiTTransformer2DModel state dict (fresh tensors, no sharing).

    The single timestep/label embedder is copied into every block. A model without a null label row (trained
    without label dropout) gets an all-zero one, and an unconditional model a single zero row: diffusers
    always adds a label embedding, and adding zero is the identity.
    """
    require_official_layout(config, "diffusers")
    check_state(state, official_shapes(config), "official state dict")
    take = _Taker(state, "official state dict")
    take("pos_embed")  # a fixed function of the config; diffusers recomputes it
    out: dict[str, torch.Tensor] = {
        "pos_embed.proj.weight": take("x_embedder.proj.weight"),
        "pos_embed.proj.bias": take("x_embedder.proj.bias"),
    }
    t_emb = {
        "linear_1.weight": take("t_embedder.mlp.0.weight"),
        "linear_1.bias": take("t_embedder.mlp.0.bias"),
        "linear_2.weight": take("t_embedder.mlp.2.weight"),
        "linear_2.bias": take("t_embedder.mlp.2.bias"),
    }
    d = config.hidden_size
    if config.num_classes > 0:
        table = take("y_embedder.embedding_table.weight")
        if not config.has_null_label:
            table = torch.cat([table, table.new_zeros(1, d)])
    else:
        table = t_emb["linear_1.bias"].new_zeros(1, d)
    for i in range(config.depth):
        src, dst = f"blocks.{i}.", f"transformer_blocks.{i}."
        for name, tensor in t_emb.items():
            out[dst + f"norm1.emb.timestep_embedder.{name}"] = tensor.clone()
        out[dst + "norm1.emb.class_embedder.embedding_table.weight"] = table.clone()
        out[dst + "norm1.linear.weight"] = take(src + "adaLN_modulation.1.weight")
        out[dst + "norm1.linear.bias"] = take(src + "adaLN_modulation.1.bias")
        for part in ("weight", "bias"):
            q, k, v = take(src + f"attn.qkv.{part}").chunk(3, dim=0)
            out[dst + f"attn1.to_q.{part}"] = q.clone()
            out[dst + f"attn1.to_k.{part}"] = k.clone()
            out[dst + f"attn1.to_v.{part}"] = v.clone()
            out[dst + f"attn1.to_out.0.{part}"] = take(src + f"attn.proj.{part}")
            out[dst + f"ff.net.0.proj.{part}"] = take(src + f"mlp.fc1.{part}")
            out[dst + f"ff.net.2.{part}"] = take(src + f"mlp.fc2.{part}")
    for part in ("weight", "bias"):
        out[f"proj_out_1.{part}"] = take(f"final_layer.adaLN_modulation.1.{part}")
        out[f"proj_out_2.{part}"] = take(f"final_layer.linear.{part}")
    take.finish()
    check_state(out, diffusers_shapes(config), "converted diffusers state dict")
    return {k: v.detach().contiguous() for k, v in out.items()}


def check_shared_embedders(state: Mapping[str, torch.Tensor], depth: int, where: str) -> None:
    """diffusers gives every block its own timestep/label embedder. ditkit's DiT has one, so the copies must
    be identical (as in every converted official checkpoint); a model trained natively in diffusers is not."""
    prefix0 = "transformer_blocks.0.norm1.emb."
    names = [k[len(prefix0) :] for k in state if k.startswith(prefix0)]
    for i in range(1, depth):
        for name in names:
            key = f"transformer_blocks.{i}.norm1.emb.{name}"
            if key in state and not torch.equal(state[key], state[prefix0 + name]):
                raise ValueError(
                    f"{where}: the per-block embedders differ ({key} != block 0's), as in a model trained "
                    "natively in diffusers; ditkit's DiT shares one timestep/label embedder (as the official "
                    "model does) and cannot represent this model faithfully"
                )


def diffusers_to_official(
    state: Mapping[str, torch.Tensor], config: ModelConfig, where: str
) -> dict[str, torch.Tensor]:
    """diffusers DiTTransformer2DModel state dict -> official/ditkit keys (pos_embed not included)."""
    check_state(state, diffusers_shapes(config), where)
    check_shared_embedders(state, config.depth, where)
    take = _Taker(state, where)
    out: dict[str, torch.Tensor] = {
        "x_embedder.proj.weight": take("pos_embed.proj.weight"),
        "x_embedder.proj.bias": take("pos_embed.proj.bias"),
    }
    for i in range(config.depth):
        src, dst = f"transformer_blocks.{i}.", f"blocks.{i}."
        t1w = take(src + "norm1.emb.timestep_embedder.linear_1.weight")
        t1b = take(src + "norm1.emb.timestep_embedder.linear_1.bias")
        t2w = take(src + "norm1.emb.timestep_embedder.linear_2.weight")
        t2b = take(src + "norm1.emb.timestep_embedder.linear_2.bias")
        table = take(src + "norm1.emb.class_embedder.embedding_table.weight")
        if i == 0:
            out["t_embedder.mlp.0.weight"], out["t_embedder.mlp.0.bias"] = t1w, t1b
            out["t_embedder.mlp.2.weight"], out["t_embedder.mlp.2.bias"] = t2w, t2b
            if config.num_classes > 0:
                out["y_embedder.embedding_table.weight"] = table
            elif bool(table.any()):
                raise ValueError(
                    f"{where}: an unconditional model (num_embeds_ada_norm=0) with a non-zero learned null "
                    "embedding cannot be represented by ditkit's unconditional DiT"
                )
        out[dst + "adaLN_modulation.1.weight"] = take(src + "norm1.linear.weight")
        out[dst + "adaLN_modulation.1.bias"] = take(src + "norm1.linear.bias")
        for part in ("weight", "bias"):
            qkv = [take(src + f"attn1.to_{n}.{part}") for n in ("q", "k", "v")]
            out[dst + f"attn.qkv.{part}"] = torch.cat(qkv, dim=0)
            out[dst + f"attn.proj.{part}"] = take(src + f"attn1.to_out.0.{part}")
            out[dst + f"mlp.fc1.{part}"] = take(src + f"ff.net.0.proj.{part}")
            out[dst + f"mlp.fc2.{part}"] = take(src + f"ff.net.2.{part}")
    for part in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{part}"] = take(f"proj_out_1.{part}")
        out[f"final_layer.linear.{part}"] = take(f"proj_out_2.{part}")
    take.finish()
    return out


def cast_state(state: Mapping[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Floating tensors to `dtype` (others untouched), contiguous and detached."""
    return {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous()
        for k, v in state.items()
    }
