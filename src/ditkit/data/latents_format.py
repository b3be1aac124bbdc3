"""The on-disk names of a latent cache folder (see ditkit.data.latents): format tags, file names, store
dtypes and the JSON helpers that the writer (latents_encode) and the reader (latents) share.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

LATENTS_FORMAT = "ditkit-latents"
LATENTS_VERSION = 1
INDEX_FILE = "index.json"
PLAN_FILE = "plan.json"
STORE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def is_latent_cache(path: Path) -> bool:
    return path.is_dir() and ((path / INDEX_FILE).is_file() or (path / PLAN_FILE).is_file())


def shard_name(k: int, total: int) -> str:
    return f"shard-{k:05d}-of-{total:05d}.safetensors"


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def write_json(path: Path, data: dict[str, Any]) -> None:
    from ..io.native import atomic_write

    text = json.dumps(data, indent=1)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
