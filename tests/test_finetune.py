"""Fine-tuning (`--init-from`): what is kept, resized and initialised, and the MindONE recipe."""

from __future__ import annotations

import pytest
import torch

import ditkit
from _data_helpers import TINY, class_folder
from ditkit.cli.main import main
from ditkit.config import load_config
from ditkit.finetune import init_from
from ditkit.io import save_official
from ditkit.presets import build_model, model_config
from ditkit.train import load_checkpoint

SIZES = {"depth": 1, "hidden_size": 32, "num_heads": 2, "patch_size": 4}


def random_model(**overrides):
    torch.manual_seed(1)
    model = build_model(model_config("DiT-S/2", **{**SIZES, "input_size": 8, "in_channels": 3, **overrides}))
    for p in model.parameters():
        p.data.normal_(std=0.05)
    return model


@pytest.fixture
def official_file(tmp_path):
    """A tiny model in the official layout (a bare state dict, like DiT-XL-2-256x256.pt), 7 classes."""
    model = random_model(num_classes=7)
    return model, save_official(model, tmp_path / "tiny-official.pt")


def test_new_class_set_keeps_the_body_and_resizes_the_table(official_file):
    source, path = official_file
    net = build_model(model_config("DiT-S/2", **SIZES, input_size=8, in_channels=3, num_classes=3))
    fresh = net.y_embedder.embedding_table.weight.detach().clone()
    report = init_from(net, path, label_names=["a", "b", "c"])
    assert torch.equal(net.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    table = net.y_embedder.embedding_table.weight
    assert torch.equal(table[:3], fresh[:3])  # unnamed source classes: no row is copied by index
    assert torch.equal(table[3], source.y_embedder.embedding_table.weight[7])  # the null row is copied
    assert [name for name, _ in report.resized] == ["y_embedder.embedding_table.weight"]
    assert "7 -> 3 classes" in report.resized[0][1] and not report.initialised
    assert len(report.kept) == len(net.state_dict()) - 1


def test_rows_copied_by_class_name(tmp_path):
    source = random_model(num_classes=3)
    path = tmp_path / "src.safetensors"
    ditkit.io.save_safetensors(source, path, label_names=["cat", "dog", "bird"])
    net = build_model(model_config("DiT-S/2", **SIZES, input_size=8, in_channels=3, num_classes=2))
    init_from(net, path, label_names=["Dog", "fish"])
    assert torch.equal(net.y_embedder.embedding_table.weight[0], source.y_embedder.embedding_table.weight[1])
    same = build_model(model_config("DiT-S/2", **SIZES, input_size=8, in_channels=3, num_classes=3))
    report = init_from(same, path, label_names=["cat", "dog", "bird"])
    assert "y_embedder.embedding_table.weight" in report.kept and not report.resized  # same class set: kept


def test_sigma_channels_grid_and_channels(official_file):
    source, path = official_file
    net = build_model(model_config("DiT-S/2", **SIZES, input_size=16, in_channels=3, num_classes=7,
                                   learn_sigma=False))  # fmt: skip
    report = init_from(net, path)
    # noise-only output: the first C channels of each patch position come from the source
    src = source.final_layer.linear.weight.view(16, 6, -1)[:, :3]
    assert torch.equal(net.final_layer.linear.weight.view(16, 3, -1), src)
    assert dict(report.initialised)["pos_embed"].endswith("new token grid (its own sin-cos table)")
    assert "y_embedder.embedding_table.weight" in report.kept  # 7 unnamed classes both sides: kept by index
    deeper = build_model(model_config("DiT-S/2", **{**SIZES, "depth": 2}, input_size=8, num_classes=3))
    with pytest.raises(ValueError, match="the source model has depth 1 \\(config: 2\\)"):
        init_from(deeper, path)


def test_multi_attribute_tables_matched_by_attribute_name(tmp_path):
    source = random_model(num_classes=(2, 3))
    path = tmp_path / "multi.safetensors"
    ditkit.io.save_safetensors(source, path, label_names={"genre": ["a", "b"], "style": ["x", "y", "z"]})
    net = build_model(model_config("DiT-S/2", **SIZES, input_size=8, in_channels=3, num_classes=(3, 2)))
    init_from(net, path, label_names={"style": ["x", "y", "z"], "genre": ["a", "b"]})
    assert torch.equal(net.y_embedder.tables[0].weight, source.y_embedder.tables[1].weight)  # style <- style
    assert torch.equal(net.y_embedder.tables[1].weight, source.y_embedder.tables[0].weight)


def test_finetune_from_an_official_file_on_the_command_line(official_file, tmp_path, capsys):
    _, path = official_file
    data = class_folder(tmp_path / "data")
    code = main(
        ["train", "--data", str(data), "--init-from", str(path), "--image-size", "8", "--batch-size", "4",
         "--max-steps", "2", "--output-dir", str(tmp_path / "runs"), "--no-progress", "--set", *TINY,
         "model.name=DiT-S/2"]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "init from" in out and "resized      y_embedder.embedding_table.weight" in out
    run = sorted((tmp_path / "runs").iterdir())[-1]
    assert "7 -> 2 classes" in (run / "init_report.txt").read_text()
    assert load_checkpoint(sorted((run / "checkpoints").iterdir())[-1])["label_names"] == ["cat", "dog"]
    # the body must match: a wrong preset names the right one (or the sizes to set)
    code = main(["train", "--data", str(data), "--init-from", str(path), "--image-size", "8", "--output-dir",
                 str(tmp_path / "runs"), "--no-progress"])  # fmt: skip
    # with --data and no recipe named, the generic recipe picks DiT-S/2 (depth 12) for 8x8 inputs
    assert code == 2 and "the source model has depth 1 (config: 12)" in capsys.readouterr().err


def test_finetune_recipe_is_mindones():
    cfg = load_config("finetune")
    t = cfg.train
    assert (t.lr, t.lr_schedule, t.warmup_steps, t.batch_size, t.weight_decay) == (
        5e-5,
        "constant",
        10,
        2,
        0.01,
    )
    assert cfg.model.name == "DiT-XL/2" and cfg.data.hflip
