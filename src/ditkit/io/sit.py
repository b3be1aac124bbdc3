"""SiT checkpoints (Ma et al. 2024, willisma/SiT): DiT's network and keys, flow matching's time convention.

A SiT `.pt` file (`SiT-XL-2-256.pt`: a bare state dict; a train.py checkpoint: {"model", "ema", ...}) has
exactly the official DiT key layout, so nothing in the file tells the two apart — only the conventions do:

* SiT's time t runs over [0, 1] with **t = 0 noise, t = 1 data**, and is fed to the timestep embedder
  unscaled (the same sinusoid as DiT's, on values in [0, 1]);
* its network predicts the velocity u = x_data - eps of the path x_t = t x_data + (1 - t) eps;
* `learn_sigma=True` doubles the output channels, but SiT's forward returns the first C only.

`load_sit` builds a ditkit DiT whose config has ``time_input="sit"``: its forward takes SiT's t and its first
C output channels equal SiT's own forward on the same inputs. ditkit samples it with
:class:`ditkit.sampling.flow.FlowDenoiser` (noise level s = 1 - t, velocity d x / d s = -u). Load one with
``ditkit.load_model(path, family="sit")`` or ``--family sit`` on the CLI.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

FAMILIES: tuple[str, ...] = ("dit", "sit")

__all__ = ["FAMILIES", "check_family", "load_sit", "looks_like_sit", "sit_name", "sit_name_hint"]

# "SiT" as a word in a file name: SiT-XL-2-256.pt, sit_b2.pt, my-sit.pt (not "transit.pt", "site.pt").
_SIT_WORD = re.compile(r"(?<![a-z])sit(?![a-z])", re.IGNORECASE)


def check_family(family: str | None) -> str | None:
    """None (detect) or a known model family; a one-line ValueError otherwise."""
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}")
    return family


def looks_like_sit(path: str | os.PathLike) -> bool:
    """Whether a file's name says SiT (the keys cannot: SiT uses DiT's layout)."""
    return bool(_SIT_WORD.search(Path(path).name))


def sit_name_hint(path: str | os.PathLike) -> str:
    """The one-line error for a SiT-named file loaded as a DiT without saying which it is."""
    return (
        f"{path}: the keys fit DiT but the file name says SiT, whose time runs the other way (t in [0, 1], "
        "0 = noise) and whose network predicts a velocity: load it with family='sit' (CLI: --family sit), "
        "or family='dit' if it really is a DiT"
    )


def sit_name(dit_name: str | None) -> str | None:
    """'DiT-XL/2' -> 'SiT-XL/2' (SiT_models mirrors DiT_models); other names are kept."""
    if dit_name and dit_name.startswith("DiT-"):
        return "SiT-" + dit_name[len("DiT-") :]
    return dit_name


def load_sit(
    path: str | os.PathLike,
    *,
    use_ema: bool = True,
    arithmetic: str | None = None,
    num_heads: int | None = None,
):
    """Load a SiT `.pt` (or `.safetensors`) file as a ditkit DiT with ``time_input="sit"`` (a LoadedModel)."""
    from .loading import _model_from_state, load_any

    loaded = load_any(path, use_ema=use_ema, arithmetic=arithmetic, num_heads=num_heads, family="dit")
    config = loaded.model.config
    if config.time_input == "sit":  # a ditkit file saved from a SiT load already says so
        return loaded
    if not loaded.format.startswith("official"):
        raise ValueError(
            f"{loaded.path}: a {loaded.format} file, not a SiT checkpoint (SiT files use the official DiT "
            "key layout); load it without family= — ditkit files record their own time convention"
        )
    new_config = config.replace(time_input="sit", name=sit_name(config.name))
    model = _model_from_state(new_config, dict(loaded.model.state_dict()), str(loaded.path))
    loaded.model = model.eval()
    loaded.extra["family"] = "sit"
    loaded.notes.append(
        "SiT conventions: t in [0, 1] with 0 = noise, fed unscaled; the network predicts x - eps"
        + (
            "; only the first half of the output channels is used (learn_sigma)"
            if new_config.learn_sigma
            else ""
        )
    )
    return loaded
