"""Embedding-conditioned training (seed 003): image embeddings in training, prompts or images at sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _data_helpers import TINY, class_folder
from ditkit.cli.main import main
from ditkit.config import load_config
from ditkit.diffusion import GaussianDiffusion
from ditkit.train import DDPMObjective, load_checkpoint, train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("embed")
    data = class_folder(tmp / "data")
    code = main(["train", "--data", str(data), "--encoder", "toy:16", "--image-size", "8", "--batch-size", "4",
                 "--max-steps", "3", "--output-dir", str(tmp / "runs"), "--no-progress", "--set", *TINY])  # fmt: skip
    assert code == 0
    return tmp, data, sorted((tmp / "runs").iterdir())[-1]


def test_checkpoint_carries_the_encoder(run):
    _, _, folder = run
    ckpt = load_checkpoint(sorted((folder / "checkpoints").iterdir())[-1])
    assert ckpt["config"]["model"]["encoder"] == "toy:16"
    assert ckpt["model_config"]["cond_dim"] == 16 and ckpt["model_config"]["num_classes"] == 0
    assert ckpt["label_names"] is None and "y_embedder.null_embedding" in ckpt["model"]
    assert (folder / "grid.png").exists()


def test_sample_from_prompts_and_images(run, capsys):
    tmp, data, folder = run
    out = tmp / "s"
    code = main(["sample", "--ckpt", str(folder), "--prompt", "a red cat", "--prompt", "a blue dog", "--image",
                 str(data / "cat" / "0.png"), "--steps", "2", "--num-per-label", "2", "--out", str(out),
                 "--no-progress"])  # fmt: skip
    assert code == 0
    arrays = np.load(out / "samples.npz")
    assert arrays["arr_0"].shape == (6, 8, 8, 3) and arrays["arr_1"].tolist() == [0, 1, 2, 0, 1, 2]
    assert (out / "000000_p0.png").exists() and (out / "000002_i0.png").exists()
    capsys.readouterr()
    assert main(["sample", "--ckpt", str(folder), "--labels", "cat", "--steps", "2"]) == 2
    assert "conditioned on embeddings" in capsys.readouterr().err
    assert main(["sample", "--ckpt", str(folder), "--prompt", "x", "--encoder", "toy:8", "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "8-wide embeddings but this model expects 16" in err and err.count("\n") == 1


class SpyObjective(DDPMObjective):
    """DiT's loss, recording the condition of every training call."""

    def __init__(self):
        super().__init__(GaussianDiffusion.from_schedule("linear", 1000))
        self.seen = []

    def losses(self, model, x0, cond, **kwargs):
        self.seen.append(cond.detach().clone())
        return super().losses(model, x0, cond, **kwargs)


def test_label_dropout_zeroes_the_embedding(tmp_path):
    data = class_folder(tmp_path / "data")
    spy = SpyObjective()
    cfg = load_config(None, [*TINY, f"data.path={data}", "data.image_size=8", "train.batch_size=6",
                             "train.max_steps=4", "model.encoder=toy:16", "model.class_dropout_prob=0.5",
                             f"train.output_dir={tmp_path / 'runs'}"])  # fmt: skip
    train(cfg, progress=False, echo=False, objective=spy)
    y = torch.cat(spy.seen[-4:])  # the 4 steps (an earlier call is the time probe before step 1)
    null = (y == 0).all(dim=1)
    assert y.shape == (24, 16) and 0 < int(null.sum()) < 24
    assert torch.allclose(y[~null].norm(dim=1), torch.ones(int((~null).sum())))  # unit-norm embeddings


def test_embedding_config_errors(tmp_path):
    data = class_folder(tmp_path / "data")
    with pytest.raises(ValueError, match="model.cond_dim needs model.encoder"):
        load_config(None, ["model.cond_dim=16"])
    cfg = load_config(None, [*TINY, f"data.path={data}", "model.encoder=toy:16", "model.cond_dim=8",
                             f"train.output_dir={tmp_path}"])  # fmt: skip
    with pytest.raises(ValueError, match="gives 16-wide embeddings"):
        train(cfg, progress=False, echo=False)
    cfg = load_config(
        None, [*TINY, f"data.path={data}", "model.encoder=clip:x", f"train.output_dir={tmp_path}"]
    )
    with pytest.raises(ValueError, match="unknown encoder 'clip'"):
        train(cfg, progress=False, echo=False)
