"""Training checkpoints carry checksums of their weights and are read through their schema: a flipped byte
names the damaged file on resume and on load, weights that do not fit their config are one line, an output
folder that cannot be written is one line before any run folder exists, and pipeline folders store the
conditioning schema."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch

from _data_helpers import TINY_RUN
from ditkit.cli.main import main
from ditkit.config import load_config
from ditkit.io import load_any, save_ditkit_pipeline
from ditkit.io.native import CHECKSUM_KEY, checkpoint_checksums, weights_checksum
from ditkit.train import load_checkpoint, train
from ditkit.train.state import TrainState

TINY = [*TINY_RUN, "train.batch_size=8", "train.precision=fp32", "train.sample_every=0", "sample.steps=2"]


def tiny(root: Path, *extra: str):
    return load_config(None, [*TINY, f"train.output_dir={root}", *extra])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("integrity") / "runs"
    return train(tiny(root, "train.max_steps=2", "train.ckpt_every=2"), progress=False, echo=False)


def _flip_a_weight_byte(src: Path, dst: Path, tensor: torch.Tensor) -> Path:
    """Flip one byte inside the stored bytes of `tensor` (found in the zip by its content), as a disk error
    would: the file still loads, one weight is different."""
    data = bytearray(src.read_bytes())
    raw = tensor.contiguous().view(torch.uint8).numpy().tobytes()
    with zipfile.ZipFile(src) as zf:
        for info in zf.infolist():
            if "/data/" in info.filename and zf.read(info) == raw:
                offset = data.index(raw, info.header_offset)
                break
        else:
            raise AssertionError("tensor not found in the checkpoint archive")
    data[offset + len(raw) // 2] ^= 0x40
    dst.write_bytes(bytes(data))
    return dst


def test_checkpoints_store_the_checksums_of_their_weights(run):
    ckpt = torch.load(run.checkpoint, map_location="cpu", weights_only=True)
    assert ckpt[CHECKSUM_KEY] == {k: weights_checksum(ckpt[k]) for k in ("model", "ema")}
    assert TrainState.from_dict(ckpt).step == 2  # a state rebuilt from the file checks and accepts them


def test_a_flipped_byte_names_the_file_on_resume_and_load(run, tmp_path, capsys):
    ckpt = load_checkpoint(run.checkpoint)
    key = "blocks.0.attn.qkv.weight"
    bad = _flip_a_weight_byte(run.checkpoint, tmp_path / "flipped.pt", ckpt["ema"][key])
    loaded = torch.load(bad, map_location="cpu", weights_only=True)  # the file still loads ...
    changed = [k for k in ("model", "ema") if not torch.equal(loaded[k][key], ckpt[k][key])]
    assert len(changed) == 1  # ... with one weight changed (in the model or the EMA copy: equal bytes)
    damaged = f"{bad} ({changed[0]} weights): the file is damaged"
    with pytest.raises(ValueError, match="the file is damaged") as info:
        train(tiny(tmp_path / "runs", "train.max_steps=4"), resume=bad, progress=False, echo=False)
    assert str(info.value).startswith(damaged) and "\n" not in str(info.value)
    assert not (tmp_path / "runs").exists()  # checked before any folder is made
    with pytest.raises(ValueError, match="the file is damaged"):
        load_any(bad, use_ema=changed[0] == "ema")
    assert main(["inspect", str(bad), *([] if changed[0] == "ema" else ["--no-ema"])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ditkit inspect: error: ") and damaged in err and "\n" not in err
    with pytest.raises(ValueError, match="damaged"):
        TrainState.from_dict(loaded, origin=str(bad))


def test_resume_of_weights_that_do_not_fit_their_config_is_one_line(run, tmp_path):
    ckpt = load_checkpoint(run.checkpoint)
    for key in ("model", "ema"):
        ckpt[key]["final_layer.linear.bias"] = torch.zeros(3)
        ckpt[key].pop("x_embedder.proj.bias")
    ckpt[CHECKSUM_KEY] = checkpoint_checksums(ckpt)
    bad = tmp_path / "shapes.pt"
    torch.save(ckpt, bad)
    with pytest.raises(ValueError) as info:
        train(tiny(tmp_path / "runs", "train.max_steps=4"), resume=bad, progress=False, echo=False)
    text = str(info.value)
    assert text.startswith(f"{bad} (model weights): ") and "\n" not in text
    assert "x_embedder.proj.bias" in text or "final_layer.linear.bias" in text


def test_load_any_reads_a_checkpoint_through_its_schema(run, tmp_path):
    loaded = load_any(run.checkpoint)
    assert loaded.format == "ditkit-checkpoint" and loaded.extra["step"] == 2
    assert loaded.conditioning.kind == "class" and loaded.conditioning.sizes == (10,)
    assert loaded.id2label == {i: str(i) for i in range(10)}
    ckpt = load_checkpoint(run.checkpoint)
    ckpt["step"] = "two"  # a mistyped field used to load silently
    torch.save(ckpt, tmp_path / "typed.pt")
    with pytest.raises(ValueError, match=r"typed.pt: checkpoint field 'step' must be an integer"):
        load_any(tmp_path / "typed.pt")


def test_an_output_dir_that_is_a_file_is_one_line_and_exit_2(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("mine")
    argv = ["train", "--output-dir", str(blocker), "--max-steps", "1", "--no-progress", "--set", *TINY]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ditkit train: error: ") and "\n" not in err
    assert "--output-dir must be a folder, but a file is there" in err
    assert blocker.read_text() == "mine"
    below = [
        "train",
        "--output-dir",
        str(blocker / "runs"),
        "--max-steps",
        "1",
        "--no-progress",
        "--set",
        *TINY,
    ]
    assert main(below) == 2
    assert "a parent of it is a file" in capsys.readouterr().err


def _tiny_model(num_classes):
    import ditkit

    return ditkit.create_model(
        "DiT-S/8", input_size=8, in_channels=1, num_classes=num_classes, depth=1, hidden_size=32, num_heads=2
    )


def test_pipeline_folders_store_the_conditioning_schema(tmp_path):
    import json

    from ditkit.conditioning import Conditioning

    model = _tiny_model(3)
    folder = save_ditkit_pipeline(tmp_path / "pipe", model, {0: "cat", 1: "dog", 2: "owl"})
    index = json.loads((folder / "ditkit_pipeline.json").read_text())
    stored = Conditioning.from_dict(index["conditioning"])
    assert stored.kind == "class" and stored.label_names() == ["cat", "dog", "owl"] and stored.has_null
    loaded = load_any(folder)
    assert loaded.conditioning == stored and loaded.id2label == {0: "cat", 1: "dog", 2: "owl"}

    multi = _tiny_model((2, 3))
    names = {"genre": ["a", "b"], "style": ["x", "y", "z"]}
    cond = Conditioning.from_labels(names, dropout=0.1, attribute_dropout=0.05)
    folder = save_ditkit_pipeline(tmp_path / "multi", multi, extra={"attributes": names}, conditioning=cond)
    back = load_any(folder)
    assert back.conditioning == cond and back.attributes == names

    old = save_ditkit_pipeline(tmp_path / "old", model, {0: "cat", 1: "dog", 2: "owl"})
    index = json.loads((old / "ditkit_pipeline.json").read_text())
    del index["conditioning"]  # a folder written before the schema was stored
    (old / "ditkit_pipeline.json").write_text(json.dumps(index))
    assert load_any(old).conditioning == stored

    index["conditioning"] = {**stored.to_dict(), "sizes": [4], "names": {"label": None}}
    (old / "ditkit_pipeline.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"ditkit_pipeline.json: its conditioning has class counts \[4\]"):
        load_any(old)
