"""Training on your own data: every layout trains a few steps, multi-attribute models sample by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _data_helpers import (
    TINY,
    broken,
    celeba_folder,
    class_folder,
    hf_wikiart_folder,
    manifest_folder,
    parquet_table,
    solid,
    truncated,
)
from ditkit.cli.main import main
from ditkit.config import load_config
from ditkit.train import load_checkpoint, train


def run_cfg(tmp_path, data, *extra):
    return load_config(
        None,
        [*TINY, f"data.path={data}", "data.image_size=8", "train.batch_size=4", "train.max_steps=3",
         f"train.output_dir={tmp_path / 'runs'}", *extra],
    )  # fmt: skip


def cli_train(tmp_path, *args):
    return main(
        ["train", "--image-size", "8", "--batch-size", "4", "--max-steps", "3", "--output-dir", str(tmp_path / "runs"),
         "--no-progress", *args, "--set", *TINY]
    )  # fmt: skip


def newest_run(tmp_path):
    return sorted((tmp_path / "runs").iterdir())[-1]


@pytest.fixture(scope="module")
def wikiart_run(tmp_path_factory):
    """A genre + style model trained through the CLI on a saved datasets folder (Parquet if no datasets)."""
    pytest.importorskip("pyarrow")
    tmp = tmp_path_factory.mktemp("wikiart")
    try:
        data = hf_wikiart_folder(tmp / "wikiart")
    except ImportError:
        data = tmp / "wikiart.parquet"
        import pyarrow as pa
        import pyarrow.parquet as pq

        from _data_helpers import COLORS, png_bytes, wikiart_rows

        rows, genres, styles = wikiart_rows()
        pq.write_table(
            pa.table({"image": [png_bytes(COLORS[g]) for g, _ in rows], "genre": [genres[g] for g, _ in rows],
                      "style": [styles[s] for _, s in rows]}), data)  # fmt: skip
    code = cli_train(
        tmp,
        "--data",
        str(data),
        "--label-columns",
        "genre",
        "style",
        "--hflip",
        "--set",
        "model.attribute_dropout_prob=0.3",
    )
    assert code == 0
    return tmp, newest_run(tmp)


def test_multi_attribute_checkpoint(wikiart_run):
    _, run = wikiart_run
    ckpt = load_checkpoint(sorted((run / "checkpoints").iterdir())[-1])
    assert ckpt["model_config"]["num_classes"] == [3, 2] or ckpt["model_config"]["num_classes"] == (3, 2)
    names = ckpt["label_names"]
    assert list(names) == ["genre", "style"] and len(names["genre"]) == 3 and len(names["style"]) == 2
    assert ckpt["config"]["data"]["label_columns"] == ["genre", "style"]
    assert ckpt["config"]["model"]["attribute_dropout_prob"] == 0.3
    assert ckpt["model"]["y_embedder.tables.0.weight"].shape[0] == 4  # 3 genres + the null row
    assert (run / "grid.png").exists()


def test_sample_by_names_on_the_command_line(wikiart_run, capsys):
    tmp, run = wikiart_run
    out = tmp / "samples"
    code = main(
        ["sample", "--ckpt", str(run), "--label", "genre=Landscape", "--label", "style=impressionism", "--label",
         "genre=portrait", "--num-per-label", "2", "--steps", "2", "--out", str(out), "--no-progress"]
    )  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    data = np.load(out / "samples.npz")
    genres = ["landscape", "portrait", "still_life"]
    landscape, portrait = genres.index("landscape"), genres.index("portrait")
    assert data["arr_1"].tolist() == [[landscape, 0], [portrait, 0]] * 2
    assert "genre=landscape, style=Impressionism" in text
    # a missing attribute is left free (its null row)
    code = main(["sample", "--ckpt", str(run), "--label", "style=cubism", "--steps", "2", "--out", str(tmp / "s2"),
                 "--no-progress"])  # fmt: skip
    assert code == 0 and np.load(tmp / "s2" / "samples.npz")["arr_1"].tolist()[0] == [3, 1]
    capsys.readouterr()
    # typos get suggestions, unknown attributes the list of attributes: one line, exit 2
    assert main(["sample", "--ckpt", str(run), "--label", "genre=landscap", "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'landscape'" in err and err.count("\n") == 1
    assert main(["sample", "--ckpt", str(run), "--label", "mood=happy", "--steps", "2"]) == 2
    assert "this model has genre, style" in capsys.readouterr().err
    assert main(["sample", "--ckpt", str(run), "--prompt", "a sunset", "--steps", "2"]) == 2
    assert "conditioned on class labels" in capsys.readouterr().err


def test_multi_attribute_pipeline_api(wikiart_run):
    from ditkit.pipeline import DiTPipeline

    _, run = wikiart_run
    pipe = DiTPipeline.from_pretrained(sorted((run / "checkpoints").iterdir())[-1])
    assert list(pipe.attributes) == ["genre", "style"]
    out = pipe(class_labels=[{"genre": "landscape", "style": "Impressionism"}, {"style": "Cubism"}],
               num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert out.images.shape == (2, 8, 8, 3)


def test_resume_a_multi_attribute_run(wikiart_run):
    _, run = wikiart_run
    code = main(["train", "--resume", str(run), "--max-steps", "5", "--no-progress"])
    assert code == 0
    assert load_checkpoint(sorted((run / "checkpoints").iterdir())[-1])["step"] == 5


def test_folder_with_broken_gray_rgba_and_16bit_images(tmp_path):
    from PIL import Image

    root = class_folder(tmp_path / "data", per_class=2)
    broken(root / "cat" / "broken.png")
    truncated(root / "dog" / "truncated.png")
    solid(root / "cat" / "gray.png", (90, 90, 90), mode="L")
    solid(root / "dog" / "alpha.png", (0, 0, 255), mode="RGBA")
    Image.fromarray(np.full((10, 10), 40000, dtype=np.uint16)).save(root / "dog" / "deep.png")
    solid(root / "cat" / "tiny.jpg", (255, 0, 0), size=(4, 4))
    result = train(
        run_cfg(tmp_path, root, "train.batch_size=10", "train.max_steps=2"), progress=False, echo=False
    )
    assert result.step == 2
    skipped = (result.run_dir / "skipped_images.txt").read_text().splitlines()
    assert sorted(line.split("\t")[0].rsplit("/", 1)[-1] for line in skipped) == [
        "broken.png",
        "truncated.png",
    ]
    log = (result.run_dir / "log.txt").read_text()
    assert "skipped 2 unreadable image(s)" in log
    assert "are upscaled (first:" in log and "tiny.jpg" in log


def test_manifest_parquet_and_celeba_train(tmp_path):
    pytest.importorskip("pyarrow")
    r1 = train(run_cfg(tmp_path, manifest_folder(tmp_path / "m", kind="jsonl")), progress=False, echo=False)
    assert load_checkpoint(r1.checkpoint)["label_names"] == ["cat", "dog"]
    r2 = train(run_cfg(tmp_path, parquet_table(tmp_path / "t.parquet")), progress=False, echo=False)
    ckpt = load_checkpoint(r2.checkpoint)  # no label column asked for and none named "label": unconditional
    assert ckpt["label_names"] is None and ckpt["model_config"]["num_classes"] == 0
    r3 = train(run_cfg(tmp_path, celeba_folder(tmp_path / "celeba"), "data.label_columns=[Male]"), progress=False,
               echo=False)  # fmt: skip
    ckpt = load_checkpoint(r3.checkpoint)
    assert ckpt["label_names"] == ["not Male, female", "Male, male"]
    out = tmp_path / "s"
    assert main(["sample", "--ckpt", str(r3.checkpoint), "--labels", "female", "male", "--steps", "2", "--out",
                 str(out), "--no-progress"]) == 0  # fmt: skip
    assert np.load(out / "samples.npz")["arr_1"].tolist()[:2] == [0, 1]


def test_block_designs_on_multi_attribute_data(tmp_path):
    data = celeba_folder(tmp_path / "celeba")
    for block in ("cross-attention", "in-context"):
        cfg = run_cfg(tmp_path, data, "data.label_columns=[Male, Smiling]", f"model.block={block}",
                      "train.max_steps=2")  # fmt: skip
        result = train(cfg, progress=False, echo=False)
        assert load_checkpoint(result.checkpoint)["model_config"]["block"] == block


def test_bad_input_is_one_line(tmp_path, capsys):
    data = class_folder(tmp_path / "data")
    assert cli_train(tmp_path, "--data", str(data), "--label-columns", "genre") == 2
    err = capsys.readouterr().err
    assert "no label column 'genre'" in err and "columns: class" in err and err.count("\n") == 1
    (tmp_path / "notes.txt").write_text("x")
    assert cli_train(tmp_path, "--data", str(tmp_path / "notes.txt")) == 2
    assert "not a data set ditkit reads" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli_train(tmp_path, "--data", str(tmp_path / "empty")) == 2
    assert "no images found" in capsys.readouterr().err
    assert cli_train(tmp_path, "--data", str(data), "--set", "model.attribute_dropout_prob=0.2",
                     "model.class_dropout_prob=0") == 2  # fmt: skip
    assert "needs model.class_dropout_prob > 0" in capsys.readouterr().err
