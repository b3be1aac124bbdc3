"""diffusers folders: a `DiTTransformer2DModel` (config.json + diffusion_pytorch_model.*) and a whole
`DiTPipeline` (model_index.json + transformer/ + vae/ + scheduler/), read and written without importing
diffusers (it is needed only to *run* them in diffusers, or for the VAE codec).

A model read from a diffusers folder gets `arithmetic="diffusers"`, so ditkit reproduces diffusers' forward;
the two differ from the official model in the timestep-frequency divisor and one LayerNorm eps (§2.2).
The config.json translation itself is `ditkit.io.diffusers_config_json`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ..models import DiT, ModelConfig
from .diffusers_config_json import (
    ARITHMETIC_KEY,
    PROCESS_KEY,
    config_from_diffusers,
    diffusers_config,
    diffusers_version,
)
from .layouts import cast_state, diffusers_to_official, official_to_diffusers
from .native import (
    CHECKSUM_KEY,
    atomic_write,
    prepare_output_dir,
    read_safetensors,
    safe_torch_load,
    weights_checksum,
)

TRANSFORMER_CLASSES = ("DiTTransformer2DModel", "Transformer2DModel")
PIPELINE_CLASS = "DiTPipeline"
WEIGHTS_NAME = "diffusion_pytorch_model"
# Written into config.json; diffusers ignores keys that start with "_".
LABELS_KEY = "_ditkit_id2label"  # class names of a transformer exported alone (not for ImageNet's)
# The scheduler the official converter ships with DiT pipelines (dit-facts §2.3).
DDIM_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "DDIMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
    "set_alpha_to_one": True,
    "steps_offset": 0,
}


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _write_json(path: Path, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


# -- reading ----------------------------------------------------------------------------------------
def is_transformer_folder(folder: Path) -> bool:
    if not (folder / "config.json").is_file():
        return False
    try:
        return read_json(folder / "config.json").get("_class_name") in TRANSFORMER_CLASSES
    except ValueError:
        return False


def _weight_files(folder: Path) -> tuple[list[Path], list[str]]:
    notes: list[str] = []
    for name in (f"{WEIGHTS_NAME}.safetensors", f"{WEIGHTS_NAME}.bin"):
        if (folder / name).is_file():
            return [folder / name], notes
    for index_name in (f"{WEIGHTS_NAME}.safetensors.index.json", f"{WEIGHTS_NAME}.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ValueError(f"{index}: no weight_map")
            shards = [folder / s for s in sorted(set(weight_map.values()))]
            for shard in shards:
                if not shard.is_file():
                    raise ValueError(f"{folder}: shard {shard.name} listed in {index_name} is missing")
            return shards, notes
    variants = sorted(folder.glob(f"{WEIGHTS_NAME}.*.safetensors")) + sorted(
        folder.glob(f"{WEIGHTS_NAME}.*.bin")
    )
    variants = [v for v in variants if "index" not in v.name]
    if variants:
        notes.append(f"read the variant weights file {variants[0].name}")
        return [variants[0]], notes
    raise ValueError(f"{folder}: transformer weights missing (no {WEIGHTS_NAME}.safetensors or .bin)")


def _read_weights(files: list[Path]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for f in files:
        if f.name.endswith(".safetensors"):
            part, _ = read_safetensors(f)
        else:
            part = safe_torch_load(f)
            if not isinstance(part, dict) or not all(isinstance(v, torch.Tensor) for v in part.values()):
                raise ValueError(f"{f}: not a state dict of tensors")
        state.update(part)
    return state


def read_transformer_folder(
    folder: Path,
) -> tuple[ModelConfig, dict[str, torch.Tensor], list[str], dict[str, str] | None, dict[str, Any] | None]:
    """(config with diffusers arithmetic, official-layout state dict without pos_embed, notes, id2label, the
    flow-matching process section ditkit exported with a flow model or None)."""
    cfg = read_json(folder / "config.json")
    cls = cfg.get("_class_name")
    if cls not in TRANSFORMER_CLASSES:
        raise ValueError(f"{folder}: config.json describes a {cls!r}, not a DiTTransformer2DModel")
    files, notes = _weight_files(folder)
    state = _read_weights(files)
    mlp = state.get("transformer_blocks.0.ff.net.0.proj.weight")
    config = config_from_diffusers(cfg, int(mlp.shape[0]) if mlp is not None else None, str(folder))
    official = diffusers_to_official(state, config, str(folder))
    origin = cfg.get(ARITHMETIC_KEY)
    if origin == "official":
        notes.append(
            "exported by ditkit from a model with official arithmetic; loaded with diffusers arithmetic to "
            "match diffusers; its outputs differ slightly from the original model's (which used the official "
            "arithmetic)"
        )
    labels = cfg.get(LABELS_KEY)
    if labels is not None and not isinstance(labels, dict):
        raise ValueError(
            f"{folder / 'config.json'}: {LABELS_KEY} is a {type(labels).__name__}, expected a mapping of class "
            "id to name"
        )
    process = cfg.get(PROCESS_KEY)
    flow = isinstance(process, dict) and process.get("kind") == "flow" and config.time_input == "flow"
    return config, official, notes, labels, dict(process) if flow else None


def diffusers_pos_embed(config: ModelConfig) -> torch.Tensor | None:
    """diffusers' own pos-embed values for this config when diffusers is importable (else None).

    ditkit's sin-cos table equals diffusers' bit for bit at every size we have checked, but a faithful load
    takes diffusers' numbers when they are at hand rather than trust that.
    """
    try:
        from diffusers.models.embeddings import get_2d_sincos_pos_embed
    except ImportError:  # pragma: no cover
        return None
    grid = config.input_size // config.patch_size
    try:
        table = get_2d_sincos_pos_embed(config.hidden_size, grid, base_size=grid, interpolation_scale=1)
    except Exception:  # pragma: no cover - an API change in diffusers; fall back to ditkit's table
        return None
    table = torch.as_tensor(table).float().reshape(1, grid * grid, config.hidden_size)
    return table


def read_pipeline_index(folder: Path) -> dict[str, Any]:
    """model_index.json of a DiTPipeline folder, after checking that every part it lists is there."""
    index = read_json(folder / "model_index.json")
    cls = index.get("_class_name")
    if cls != PIPELINE_CLASS:
        raise ValueError(f"{folder}: model_index.json describes a {cls!r}, not a DiTPipeline")
    for part in ("transformer", "vae", "scheduler"):
        spec = index.get(part)
        if spec is None or (isinstance(spec, list) and spec[:1] == [None]):
            if part == "transformer":
                raise ValueError(f"{folder}: model_index.json lists no transformer")
            continue
        sub = folder / part
        if not sub.is_dir():
            raise ValueError(
                f"{folder}: the pipeline's {part}/ folder is missing (model_index.json lists it)"
            )
        config_name = "scheduler_config.json" if part == "scheduler" else "config.json"
        if not (sub / config_name).is_file():
            raise ValueError(f"{sub}: {config_name} is missing")
    return index


# -- writing ----------------------------------------------------------------------------------------
def save_diffusers_transformer(
    model: DiT,
    folder: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    id2label: dict[int, str] | None = None,
    process: dict[str, Any] | None = None,
) -> Path:
    """A folder `DiTTransformer2DModel.from_pretrained` loads with no missing or unexpected keys.

    Class names other than ImageNet's, a time convention other than DDPM's and a flow-matching `process`
    section go into config.json under private keys diffusers ignores (ditkit reads them back)."""
    from safetensors.torch import save_file

    from ..labels import imagenet_id2label, normalize_id2label

    folder = Path(folder)
    config = diffusers_config(model.config)
    if id2label:
        labels = normalize_id2label(id2label)
        if labels != imagenet_id2label():
            config[LABELS_KEY] = {str(k): v for k, v in labels.items()}
    if process:
        config[PROCESS_KEY] = dict(process)
    state = cast_state(official_to_diffusers(model.state_dict(), model.config), dtype)
    prepare_output_dir(folder, "output folder")
    weights = folder / f"{WEIGHTS_NAME}.safetensors"
    metadata = {"format": "pt", CHECKSUM_KEY: weights_checksum(state)}  # diffusers reads "format" only
    atomic_write(weights, lambda tmp: save_file(state, tmp, metadata=metadata))
    _write_json(folder / "config.json", config)
    return folder


def check_vae_channels(model: DiT, vae: Any) -> None:
    """The VAE's latent channels must be the model's input channels (a folder path, codec or AutoencoderKL)."""
    from ..codecs import VAECodec, check_codec_compat, find_vae_folder

    if isinstance(vae, (str, os.PathLike)):
        folder = find_vae_folder(vae)
        channels = read_json(folder / "config.json").get("latent_channels", 4)
        if channels != model.config.in_channels:
            raise ValueError(
                f"the VAE at {folder} has {channels} latent channels but the model expects "
                f"{model.config.in_channels}; use the VAE the model was trained with"
            )
    elif isinstance(vae, VAECodec):
        check_codec_compat(model, vae)
    elif hasattr(vae, "config") and hasattr(vae.config, "latent_channels"):
        if vae.config.latent_channels != model.config.in_channels:
            raise ValueError(
                f"the VAE has {vae.config.latent_channels} latent channels but the model expects "
                f"{model.config.in_channels}; use the VAE the model was trained with"
            )


def copy_vae(vae: Any, dest: Path) -> Path:
    """Put a VAE at `dest`: a folder path is copied, a VAECodec / AutoencoderKL is saved with save_pretrained."""
    from ..codecs import VAECodec, find_vae_folder

    if isinstance(vae, (str, os.PathLike)):
        src = find_vae_folder(vae)
        if src.resolve() == dest.resolve():
            return dest
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(src, dest)
        return dest
    module = vae.vae if isinstance(vae, VAECodec) else vae
    if not hasattr(module, "save_pretrained"):
        raise ValueError(f"cannot save a VAE of type {type(vae).__name__}; pass a folder or an AutoencoderKL")
    module.save_pretrained(str(dest))
    return dest


def save_diffusers_pipeline(
    model: DiT,
    folder: str | os.PathLike,
    *,
    vae: Any,
    id2label: dict[int, str] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """A folder `diffusers.DiTPipeline.from_pretrained` loads: transformer/, vae/, a DDIM scheduler/ as the
    official converter ships it, and model_index.json with id2label (as on the hub)."""
    if vae is None:
        raise ValueError(
            "a diffusers DiTPipeline needs a VAE (diffusers cannot load one without it); pass a VAE folder "
            "(--vae PATH), or export the transformer alone"
        )
    check_vae_channels(model, vae)
    folder = Path(folder)
    prepare_output_dir(folder, "output folder")
    save_diffusers_transformer(model, folder / "transformer", dtype=dtype)
    copy_vae(vae, folder / "vae")
    version = diffusers_version()
    _write_json(
        folder / "scheduler" / "scheduler_config.json",
        {**DDIM_SCHEDULER_CONFIG, "_diffusers_version": version},
    )
    index: dict[str, Any] = {
        "_class_name": PIPELINE_CLASS,
        "_diffusers_version": version,
        "scheduler": ["diffusers", "DDIMScheduler"],
        "transformer": ["diffusers", "DiTTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    if id2label is not None:
        index["id2label"] = {str(k): v for k, v in sorted(id2label.items())}
    _write_json(folder / "model_index.json", index)
    return folder
