"""Whole user journeys through the CLI: an official checkpoint sampled by ImageNet name through a VAE, and
a WikiArt-layout DiT trained on genre + style and sampled by names."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ditkit
from _data_helpers import hf_wikiart_folder, tiny_vae
from ditkit.cli.main import main as cli_main

pytest.importorskip("diffusers")


def test_official_checkpoint_samples_by_imagenet_name_through_a_vae(tmp_path, capsys):
    """`ditkit sample --ckpt DiT-XL-2-256x256.pt --vae PATH --labels "golden retriever" 360` on a small file
    with the official layout (bare state dict, 1000 classes + null) and a tiny SD-style VAE (f = 2 here)."""
    model = ditkit.create_model("DiT-S/8", input_size=8, depth=1)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    torch.save(model.state_dict(), tmp_path / "DiT-official.pt")
    vae = tiny_vae(tmp_path / "vae")
    out = tmp_path / "samples"
    code = cli_main(
        [
            "sample",
            "--ckpt",
            str(tmp_path / "DiT-official.pt"),
            "--vae",
            str(vae),
            "--labels",
            "golden retriever",
            "360",
            "--num-per-label",
            "1",
            "--steps",
            "3",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    data = np.load(out / "samples.npz")
    assert data["arr_0"].shape == (2, 16, 16, 3) and data["arr_0"].dtype == np.uint8  # decoded: 8 latents x 2
    assert data["arr_1"].tolist() == [207, 360] and data["arr_1"].dtype == np.int64
    assert (out / "grid.png").exists()
    # an unknown name lists close valid ones, one line, exit 2
    code = cli_main(
        [
            "sample",
            "--ckpt",
            str(tmp_path / "DiT-official.pt"),
            "--vae",
            str(vae),
            "--labels",
            "golden retreiver",
            "--steps",
            "2",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "golden retriever" in err and "Traceback" not in err


def test_wikiart_layout_trains_on_genre_and_style_and_samples_by_name(tmp_path, capsys):
    data = hf_wikiart_folder(tmp_path / "wikiart", n=8)
    run_dir = tmp_path / "runs"
    code = cli_main(
        [
            "train",
            "--model",
            "DiT-WikiArt-S",
            "--data",
            str(data),
            "--label-columns",
            "genre",
            "style",
            "--image-size",
            "16",
            "--max-steps",
            "3",
            "--batch-size",
            "4",
            "--ckpt-every",
            "3",
            "--sample-every",
            "0",
            "--output-dir",
            str(run_dir),
            "--no-progress",
            "--set",
            "model.depth=1",
            "model.hidden_size=48",
            "model.num_heads=2",
        ]
    )
    assert code == 0, capsys.readouterr().err
    ckpt = sorted(run_dir.glob("*/checkpoints/*.pt"))[-1]
    model = ditkit.load_model(ckpt)
    c = model.config
    assert (c.norm, c.pos_embed, c.final_layer, c.learn_sigma, c.multi_label) == (
        "post",
        "learned",
        "linear",
        False,
        True,
    )
    pipe = ditkit.DiTPipeline.from_pretrained(ckpt)
    genres = pipe.attributes["genre"]
    out = tmp_path / "s"
    code = cli_main(
        [
            "sample",
            "--ckpt",
            str(ckpt),
            "--label",
            f"genre={genres[0]}",
            "--label",
            f"style={pipe.attributes['style'][0].upper()}",
            "--num-per-label",
            "2",
            "--steps",
            "2",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert np.load(out / "samples.npz")["arr_0"].shape == (2, 16, 16, 3)
