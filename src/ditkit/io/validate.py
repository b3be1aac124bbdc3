"""Checks every loader runs before a file's tensors become a model, so that a damaged or mismatched file is a
one-line `ValueError` naming the file, never a traceback or a silently changed model.

- `config_from_stored(value, where)`: a ModelConfig from what a file stores (a dict, or JSON text), with
  wrong types and unknown keys reported against the file.
- `check_config_fits(config, state, where)`: the sizes a config implies are checked against the tensors the
  file really holds *before* anything is built (a config claiming hidden_size 1e9 would otherwise try to
  build a table of 1e18 numbers).
- `build_checked_model(config, state, where)`: build on the meta device, check names, shapes and dtypes of
  every tensor, then adopt the tensors (no second copy). The one entry every loader (and the trainer's
  resume) uses.
- `check_finite(state, where)`: refuse NaN/inf weights, naming the first bad key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch

from ..models import DiT, ModelConfig

# A position table above this many numbers (tokens x width) is not a DiT anyone trained: DiT-XL/2 on
# 1024px images (128x128 latents) has 4096 x 1152 = 4.7M.
MAX_POS_TABLE = 1 << 27


def config_from_stored(value: Any, where: str) -> ModelConfig:
    """The ModelConfig a file stores (a dict, or the JSON text of one), or a one-line error naming `where`."""
    if value is None:
        raise ValueError(
            f"{where}: the file has no model config (model_config); it was not written by ditkit"
        )
    if isinstance(value, str | bytes):
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(
                f"{where}: its model config is not valid JSON ({err.msg}); the file is damaged"
            ) from None
    if not isinstance(value, Mapping):
        raise ValueError(
            f"{where}: its model config is a {type(value).__name__}, not a mapping of settings; the file is damaged"
        )
    if not all(isinstance(k, str) for k in value):
        raise ValueError(f"{where}: its model config has non-text keys; the file is damaged")
    try:
        return ModelConfig.from_dict(dict(value))
    except (ValueError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{where}: its model config is invalid: {first[:200]}") from None


def _lower_bound_params(config: ModelConfig) -> int:
    """A lower bound on the numbers a config's state dict holds (attention and MLP of every block)."""
    d = config.hidden_size
    mlp = int(d * config.mlp_ratio)
    return config.depth * (4 * d * d + 2 * d * mlp)


def check_config_fits(
    config: ModelConfig,
    state: Mapping[str, torch.Tensor] | None,
    where: str,
    *,
    pos_embed_stored: bool = True,
) -> None:
    """Refuse a config whose implied sizes are absurd or far beyond the tensors the file holds, before
    anything is allocated. `pos_embed_stored=False` for layouts whose position table is recomputed."""
    tokens, d = config.num_tokens, config.hidden_size
    if tokens * d > MAX_POS_TABLE:
        raise ValueError(
            f"{where}: its config implies {tokens:,} tokens x width {d:,} (input {config.input_size}, patch "
            f"{config.patch_size}); that is not a DiT this file can hold: the config is damaged"
        )
    if state is None:
        return
    held = sum(int(t.numel()) for t in state.values() if isinstance(t, torch.Tensor))
    need = _lower_bound_params(config) + (tokens * d if pos_embed_stored else 0)
    if need > 2 * held + (1 << 20):
        raise ValueError(
            f"{where}: its config (depth {config.depth}, width {d:,}, input {config.input_size}) implies at "
            f"least {need:,} weights but the file holds {held:,}; the config does not fit the tensors"
        )


def _describe_mismatch(model_state: Mapping[str, torch.Tensor], state: Mapping[str, Any], where: str) -> None:
    from .layouts import check_state

    not_tensors = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise ValueError(f"{where}: entries that are not tensors: {', '.join(not_tensors[:4])}")
    check_state(state, {k: tuple(v.shape) for k, v in model_state.items()}, where)
    for key, want in model_state.items():
        got = state[key]
        if want.is_floating_point() and not got.is_floating_point():
            raise ValueError(f"{where}: {key} holds {got.dtype} numbers, expected floating point weights")


def build_checked_model(config: ModelConfig, state: Mapping[str, torch.Tensor], where: str) -> DiT:
    """The DiT of `config` holding `state` (eval mode), or a one-line ValueError naming what does not fit:
    missing/unexpected keys, shapes, dtypes, or a config that implies more weights than the file holds."""
    from ..presets import build_model

    if not isinstance(state, Mapping) or not state:
        raise ValueError(f"{where}: no weights (expected a state dict of tensors)")
    check_config_fits(config, state, where)
    try:
        model = build_model(config, device="meta")
    except (RuntimeError, MemoryError, OverflowError) as err:
        raise ValueError(
            f"{where}: its config cannot be built ({str(err)[:120]}); the config is damaged"
        ) from None
    _describe_mismatch(model.state_dict(), state, where)
    try:
        model.load_state_dict(dict(state), strict=True, assign=True)
    except RuntimeError as err:  # pragma: no cover - the checks above catch what torch would refuse
        first = str(err).strip().splitlines()
        raise ValueError(f"{where}: the weights do not fit the model ({' '.join(first[:2])[:200]})") from None
    return model.eval()


def check_finite(state: Mapping[str, torch.Tensor], where: str) -> None:
    """Raise a one-line ValueError naming the first tensor holding NaN or inf (key order of the dict)."""
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel():
            finite = torch.isfinite(value)
            if not bool(finite.all()):
                bad = int((~finite).sum())
                flat = int((~finite).flatten().nonzero()[0])
                index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), value.shape))
                raise ValueError(
                    f"{where}: weight {key} holds {bad} non-finite value(s) (NaN/inf), first at index "
                    f"{list(index)}; the weights are damaged (a diverged run or a bad file)"
                )


__all__ = [
    "MAX_POS_TABLE",
    "build_checked_model",
    "check_config_fits",
    "check_finite",
    "config_from_stored",
]
