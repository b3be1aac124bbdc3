"""`ditkit encode`: cached VAE posteriors (image and mirror), shards, resume, ranks; training on a cache."""

from __future__ import annotations

import json

import pytest
import torch

from _data_helpers import TINY, broken, class_folder, tiny_vae
from ditkit.cli.main import main
from ditkit.codecs import VAECodec
from ditkit.config import load_config
from ditkit.data import LatentCache, open_dataset
from ditkit.train import load_checkpoint, train

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("encode")
    data = class_folder(tmp / "data", per_class=3)
    broken(data / "dog" / "zz_broken.png")
    vae = tiny_vae(tmp / "vae")
    return tmp, data, vae


def encode(data, vae, out, *extra):
    return main(["encode", "--data", str(data), "--vae", str(vae), "--out", str(out), "--image-size", "16",
                 "--shard-size", "3", "--batch-size", "2", "--no-progress", *extra])  # fmt: skip


@pytest.fixture(scope="module")
def cache(setup):
    tmp, data, vae = setup
    out = tmp / "cache"
    assert encode(data, vae, out) == 0
    return out


def test_index_and_shards(setup, cache):
    _, data, vae = setup
    index = json.loads((cache / "index.json").read_text())
    assert (
        index["format"] == "ditkit-latents" and index["num_images"] == 6 and index["num_source_images"] == 7
    )
    assert index["latent_shape"] == [4, 8, 8] and index["image_size"] == 16 and index["mirror"] is True
    assert index["scaling_factor"] == pytest.approx(0.18215) and index["label_names"] == ["cat", "dog"]
    assert [s["count"] for s in index["shards"]] == [3, 3, 0] and index["skipped"][0][0].endswith(
        "zz_broken.png"
    )
    # what is stored is the posterior of each image and of its mirror image
    ds = LatentCache(cache)
    moments, labels = ds.load_moments(torch.arange(6))
    assert moments.shape == (6, 2, 2, 4, 8, 8) and labels.tolist() == [0, 0, 0, 1, 1, 1]
    codec = VAECodec.from_pretrained(vae)
    images = open_dataset(data, 16).load(torch.arange(6))[0]
    mean, std = codec.encode_posterior(images)
    assert torch.allclose(moments[:, 0, 0], mean, atol=1e-5) and torch.allclose(
        moments[:, 0, 1], std, atol=1e-5
    )
    mirror_mean, _ = codec.encode_posterior(images.flip(-1))
    assert torch.allclose(moments[:, 1, 0], mirror_mean, atol=1e-5)


def test_resume_skips_finished_shards(setup, cache, capsys):
    _, data, vae = setup
    second = sorted(cache.glob("shard-*"))[1]
    before = {p.name: p.stat().st_mtime_ns for p in cache.glob("shard-*")}
    second.unlink()
    (cache / "index.json").unlink()
    capsys.readouterr()
    assert encode(data, vae, cache) == 0
    assert "wrote 1 shard(s), 2 already done" in capsys.readouterr().out
    after = {p.name: p.stat().st_mtime_ns for p in cache.glob("shard-*")}
    assert [n for n in after if after[n] != before.get(n)] == [second.name] and (
        cache / "index.json"
    ).exists()
    # other settings into the same folder: refused
    assert encode(data, vae, cache, "--label-columns", "none") == 2
    assert "made with other settings" in capsys.readouterr().err


def test_ranks_write_disjoint_shards(setup, monkeypatch, capsys):
    tmp, data, vae = setup
    out = tmp / "ranks"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert encode(data, vae, out) == 0
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-00001-of-00003.safetensors"]
    assert not (out / "index.json").exists()  # rank 0's shards are still missing
    monkeypatch.setenv("RANK", "0")
    assert encode(data, vae, out) == 0
    assert (
        len(list(out.glob("shard-*"))) == 3
        and json.loads((out / "index.json").read_text())["num_images"] == 6
    )
    capsys.readouterr()


def test_train_on_the_cache(setup, cache, tmp_path):
    _, _, vae = setup
    cfg = load_config(None, [*TINY, f"data.path={cache}", "train.batch_size=4", "train.max_steps=3", "data.hflip=true",
                             f"train.output_dir={tmp_path}"])  # fmt: skip
    result = train(cfg, progress=False, echo=False)
    ckpt = load_checkpoint(result.checkpoint)
    # the image size and the VAE come from the cache, so the checkpoint samples like any latent model
    assert ckpt["config"]["data"]["image_size"] == 16 and ckpt["config"]["data"]["vae"] == str(vae.resolve())
    assert ckpt["model_config"]["in_channels"] == 4 and ckpt["model_config"]["input_size"] == 8
    assert main(["sample", "--ckpt", str(result.checkpoint), "--labels", "dog", "--steps", "2", "--out",
                 str(tmp_path / "s"), "--no-progress"]) == 0  # fmt: skip


def _fake_cache(root, vae, mean_orig=1.0, mean_mirror=-1.0, std=1e-3, n=4):
    """A hand-made cache whose original/mirror means are constants, to see what training draws."""
    from safetensors.torch import save_file

    root.mkdir()
    shape = (n, 2, 4, 4, 4)
    mean = torch.empty(shape)
    mean[:, 0], mean[:, 1] = mean_orig, mean_mirror
    save_file({"mean": mean, "std": torch.full(shape, std), "index": torch.arange(n)}, str(root / "s.safetensors"),
              metadata={"skipped": "[]", "upscaled": "0"})  # fmt: skip
    index = {"format": "ditkit-latents", "version": 1, "num_images": n, "source": "fake", "image_size": 8,
             "vae": str(vae), "scaling_factor": 0.18215, "latent_shape": [4, 4, 4], "label_columns": [],
             "label_names": None, "shards": [{"file": "s.safetensors", "count": n}], "skipped": [], "upscaled": 0}  # fmt: skip
    (root / "index.json").write_text(json.dumps(index))
    return root


@pytest.mark.parametrize("hflip", [True, False])
def test_fresh_posterior_sample_and_flip_every_step(setup, tmp_path, monkeypatch, hflip):
    _, _, vae = setup
    root = _fake_cache(tmp_path / "fake", vae)
    seen = []
    from ditkit.train.objectives import DDPMObjective

    original = DDPMObjective.losses

    def spy(self, model, x0, *args, **kwargs):  # what the objective is handed: the scaled latents
        seen.append(x0.detach().clone() / 0.18215)
        return original(self, model, x0, *args, **kwargs)

    monkeypatch.setattr(DDPMObjective, "losses", spy)
    cfg = load_config(None, [*TINY, f"data.path={root}", "train.batch_size=4", "train.max_steps=4",
                             f"data.hflip={hflip}", f"train.output_dir={tmp_path / 'runs'}", "model.patch_size=2"])  # fmt: skip
    train(cfg, progress=False, echo=False)
    # the trainer may run the objective twice on one step's batch (a first-step check): one entry per step
    seen = [x for k, x in enumerate(seen) if k == 0 or not torch.equal(x, seen[k - 1])]
    assert len(seen) == 4
    x = torch.stack(seen)  # (steps, 4 images, C, h, w) in unscaled latent units
    signs = x.mean(dim=(2, 3, 4)).sign()
    if hflip:
        assert set(signs.flatten().tolist()) == {-1.0, 1.0}  # both the image and its stored mirror are used
    else:
        assert set(signs.flatten().tolist()) == {1.0}
    noise = (x - signs[..., None, None, None]) / 1e-3  # the eps of mean + std * eps
    assert 0.5 < float(noise.std()) < 1.5  # a real posterior sample, not the mean
    assert not torch.allclose(noise[0], noise[1])  # fresh every step


def test_cache_errors(setup, tmp_path, capsys):
    _, data, vae = setup
    root = _fake_cache(tmp_path / "fake", tmp_path / "gone")
    cfg = load_config(None, [*TINY, f"data.path={root}", f"train.output_dir={tmp_path}"])
    with pytest.raises(FileNotFoundError, match="not on this machine; pass --vae"):
        train(cfg, progress=False, echo=False)
    # mixed image sizes in one cache
    from safetensors.torch import save_file

    index = json.loads((root / "index.json").read_text())
    save_file({"mean": torch.zeros(1, 2, 4, 8, 8), "std": torch.zeros(1, 2, 4, 8, 8), "index": torch.zeros(1).long()},
              str(root / "t.safetensors"))  # fmt: skip
    index["shards"].append({"file": "t.safetensors", "count": 1})
    (root / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="mixed image sizes"):
        LatentCache(root)
    # unfinished caches, non-empty output folders, label columns the cache lacks, encoder + cache
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "plan.json").write_text(json.dumps({"num_shards": 3}))
    with pytest.raises(ValueError, match="unfinished latent cache"):
        open_dataset(unfinished, 8)
    assert encode(data, vae, data) == 2
    assert "not empty" in capsys.readouterr().err


def test_cache_label_columns_and_encoder(setup, cache, tmp_path):
    with pytest.raises(ValueError, match="encoded with: class"):
        LatentCache(cache, ["genre"])
    assert LatentCache(cache, ["none"]).num_classes == 0
    cfg = load_config(
        None, [*TINY, f"data.path={cache}", "model.encoder=toy:8", f"train.output_dir={tmp_path}"]
    )
    with pytest.raises(ValueError, match="not on\\s+a latent cache|not on a latent cache"):
        train(cfg, progress=False, echo=False)
