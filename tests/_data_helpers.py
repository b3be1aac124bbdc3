"""Tiny data sets of every layout `ditkit train --data` reads, written inside the tests.

Images of class k are filled with a solid colour COLORS[k], so a test can tell from the pixels which class an
image belongs to (and check that a label always travels with its own image).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

COLORS = [(255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 0)]

# Tiny model and short runs: a few seconds per training run on one CPU thread.
TINY = [
    "process.kind=ddpm",  # written for DDPM; the flow default has its own tests (test_flow_*.py)
    "model.depth=1",
    "model.hidden_size=32",
    "model.num_heads=2",
    "model.patch_size=4",
    "train.threads=1",
    "train.log_every=2",
    "train.ckpt_every=1000",
    "train.sample_every=0",
    "sample.steps=2",
    "sample.num_per_label=1",
]


def solid(path: Path, color, size=(12, 10), mode: str = "RGB", fmt: str | None = None) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).convert(mode).save(path, format=fmt)
    return path


def png_bytes(color, size=(12, 10)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def broken(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not an image")
    return path


def truncated(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = png_bytes((10, 20, 30), size=(40, 40))
    path.write_bytes(data[: len(data) // 2])
    return path


def class_folder(root: Path, per_class: int = 3, classes=("cat", "dog")) -> Path:
    for k, name in enumerate(classes):
        for i in range(per_class):
            solid(root / name / f"{i}.png", COLORS[k])
    return root


def wikiart_rows(n: int = 8):
    """(genre id, style id) rows and the names of the tiny genre/style vocabularies."""
    genres = ["landscape", "portrait", "still_life"]
    styles = ["Impressionism", "Cubism"]
    rows = [(i % 3, (i // 3) % 2) for i in range(n)]
    return rows, genres, styles


def hf_wikiart_folder(path: Path, n: int = 8) -> Path:
    """A saved Hugging Face `datasets` folder in the huggan/wikiart layout (image, artist, genre, style)."""
    import datasets
    from PIL import Image

    rows, genres, styles = wikiart_rows(n)
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "artist": datasets.ClassLabel(names=["monet", "picasso"]),
            "genre": datasets.ClassLabel(names=genres),
            "style": datasets.ClassLabel(names=styles),
        }
    )
    ds = datasets.Dataset.from_dict(
        {
            "image": [Image.new("RGB", (12, 12), COLORS[g]) for g, _ in rows],
            "artist": [i % 2 for i in range(n)],
            "genre": [g for g, _ in rows],
            "style": [s for _, s in rows],
        },
        features=features,
    )
    ds.save_to_disk(str(path))
    return path


def parquet_table(path: Path, n: int = 6, label: str = "style", with_broken: bool = False) -> Path:
    """A Parquet file written with pyarrow alone: encoded PNG bytes and a string label column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = ["cubism", "impressionism"]
    images = [png_bytes(COLORS[i % 2]) for i in range(n)]
    if with_broken:
        images[1] = b"garbage"
    table = pa.table({"image": images, label: [names[i % 2] for i in range(n)], "score": [0.5] * n})
    pq.write_table(table, path)
    return path


def celeba_folder(root: Path, n: int = 6, csv: bool = False) -> Path:
    """img_align_celeba/ + list_attr_celeba.txt (or the Kaggle .csv) with three ±1 attributes."""
    attrs = ["Eyeglasses", "Male", "Smiling"]
    lines = []
    for i in range(n):
        name = f"{i + 1:06d}.jpg"
        male = 1 if i % 2 else -1
        solid(root / "img_align_celeba" / name, COLORS[int(male == 1)], size=(18, 22), fmt="JPEG")
        lines.append((name, [-1, male, 1 if i % 3 == 0 else -1]))
    if csv:
        text = "image_id," + ",".join(attrs) + "\n"
        text += "".join(f"{n},{','.join(map(str, v))}\n" for n, v in lines)
        (root / "list_attr_celeba.csv").write_text(text)
    else:
        text = f"{n}\n" + " ".join(attrs) + "\n"
        text += "".join(f"{n} " + " ".join(f"{x:2d}" for x in v) + "\n" for n, v in lines)
        (root / "list_attr_celeba.txt").write_text(text)
    return root


def manifest_folder(root: Path, kind: str = "csv", n: int = 6) -> Path:
    names = ["cat", "dog"]
    rows = []
    for i in range(n):
        solid(root / "images" / f"{i}.png", COLORS[i % 2])
        rows.append({"file_name": f"images/{i}.png", "label": names[i % 2], "caption": f"picture {i}"})
    if kind == "csv":
        text = "file_name,label,caption\n" + "".join(
            f"{r['file_name']},{r['label']},{r['caption']}\n" for r in rows
        )
        (root / "labels.csv").write_text(text)
    else:
        (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def tiny_vae_model(latent_channels: int = 4, scaling_factor: float | None = None):
    """A random diffusers AutoencoderKL (downsampling x2), in eval mode."""
    import diffusers
    import torch

    torch.manual_seed(0)
    kwargs = {} if scaling_factor is None else {"scaling_factor": scaling_factor}
    return diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=latent_channels,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=16,
        **kwargs,
    ).eval()


def tiny_vae(path: Path, latent_channels: int = 4) -> Path:
    """`tiny_vae_model` saved with save_pretrained."""
    tiny_vae_model(latent_channels).save_pretrained(str(path))
    return path


def color_of(image) -> int:
    """The index in COLORS closest to the mean colour of an image tensor (3, S, S) in [-1, 1]."""
    mean = ((image.float().mean(dim=(1, 2)) + 1) * 127.5).numpy()
    return int(np.argmin([np.abs(mean - np.array(c)).sum() for c in COLORS]))


# The smallest trainable run config, shared by the training, checkpoint and CLI tests (`--set` items).
TINY_RUN = [
    "process.kind=ddpm",  # the tests were written for DDPM; the flow default has its own (test_flow_*.py)
    "model.depth=1",
    "model.hidden_size=32",
    "model.num_heads=2",
    "model.patch_size=4",
    "data.image_size=8",
    "train.threads=1",
    "sample.num_per_label=1",
]
