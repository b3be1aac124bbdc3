"""Official DiT files (bare state dicts, train.py checkpoints), ditkit's own files, and bad input."""

from __future__ import annotations

import argparse
import builtins
import pickle

import pytest
import torch

import ditkit
from ditkit.io import atomic_torch_save, load_any, load_model, save_official, save_safetensors, set_arithmetic
from ditkit.io.layouts import diffusers_to_official, infer_official_config, official_to_diffusers
from ditkit.labels import imagenet_id2label

TINY = ditkit.ModelConfig(depth=2, hidden_size=64, num_heads=1, patch_size=2, input_size=8, num_classes=10)


def random_model(config: ditkit.ModelConfig = TINY, seed: int = 0, std: float = 0.05) -> ditkit.DiT:
    """Every weight random (the official init zeroes the output, which would hide mistakes)."""
    model = ditkit.build_model(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def inputs(config: ditkit.ModelConfig = TINY, n: int = 3):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, config.in_channels, config.input_size, config.input_size, generator=g)
    t = torch.tensor([0, 517, 999][:n])
    y = torch.tensor([0, config.num_classes - 1, config.num_classes][:n])  # includes the null label
    return x, t, y


def assert_same_weights(a: ditkit.DiT, b: ditkit.DiT) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


class Evil:
    """Unpickling this would create a file: the marker proves whether any code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


# -- official files ----------------------------------------------------------------------------------
def test_bare_state_dict_round_trip(tmp_path):
    model = random_model()
    save_official(model, tmp_path / "dit.pt")
    loaded = load_any(tmp_path / "dit.pt")
    assert loaded.format == "official-state-dict" and loaded.has_ema is None
    c = loaded.model.config
    assert (c.depth, c.hidden_size, c.patch_size, c.input_size, c.in_channels) == (2, 64, 2, 8, 4)
    assert (c.num_classes, c.learn_sigma, c.has_null_label, c.arithmetic) == (10, True, True, "official")
    assert c.num_heads == 1  # head_dim 64, the official convention
    assert not loaded.model.training
    assert_same_weights(model, loaded.model)
    x, t, y = inputs()
    with torch.no_grad():
        assert torch.equal(model(x, t, y), loaded.model(x, t, y))
    assert torch.equal(load_model(tmp_path / "dit.pt").pos_embed, model.pos_embed)


def test_config_inference_for_the_published_models():
    for name, heads in (("DiT-XL/2", 16), ("DiT-B/4", 12), ("DiT-S/8", 6)):
        state = ditkit.create_model(name, device="meta").state_dict()
        config, notes = infer_official_config(state)
        assert (config.name, config.num_heads, config.input_size, config.num_classes) == (
            name,
            heads,
            32,
            1000,
        )
    state = ditkit.create_model("DiT-XL/2", input_size=64, device="meta").state_dict()  # the 512px model
    assert infer_official_config(state)[0].input_size == 64
    unconditional = ditkit.build_model(TINY.replace(num_classes=0, learn_sigma=False), device="meta")
    config, _ = infer_official_config(unconditional.state_dict())
    assert (config.num_classes, config.learn_sigma) == (0, False)


def test_official_train_checkpoint_uses_ema_and_allows_only_namespace(tmp_path):
    model, ema = random_model(seed=0), random_model(seed=1)
    args = argparse.Namespace(model="DiT-XL/2", image_size=64, num_classes=10, global_seed=0)
    ckpt = {
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "opt": {"state": {}, "param_groups": []},
        "args": args,
    }
    torch.save(ckpt, tmp_path / "0050000.pt")
    loaded = load_any(tmp_path / "0050000.pt")
    assert loaded.format == "official-train" and loaded.has_ema is True
    assert_same_weights(ema, loaded.model)
    assert any("image_size=64" in n for n in loaded.notes)
    assert_same_weights(model, load_any(tmp_path / "0050000.pt", use_ema=False).model)
    # The allow-list admits Namespace only: anything else inside it is still refused, and nothing runs.
    marker = tmp_path / "pwned"
    ckpt["args"] = argparse.Namespace(model=Evil(marker))
    torch.save(ckpt, tmp_path / "evil_train.pt")
    with pytest.raises(ValueError, match="refused to load"):
        load_any(tmp_path / "evil_train.pt")
    assert not marker.exists()


def test_official_files_get_imagenet_names(tmp_path):
    model = random_model(TINY.replace(num_classes=1000))
    save_official(model, tmp_path / "in.pt")
    loaded = load_any(tmp_path / "in.pt")
    assert loaded.id2label == imagenet_id2label()
    assert loaded.label_names[207] == "golden retriever"


def test_safetensors_and_wrapped_state_dicts(tmp_path):
    from safetensors.torch import save_file

    model = random_model()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "dit.safetensors")
    loaded = load_any(tmp_path / "dit.safetensors")
    assert loaded.format == "official-state-dict"
    assert_same_weights(model, loaded.model)
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "ddp.pt")
    loaded = load_any(tmp_path / "ddp.pt")
    assert_same_weights(model, loaded.model)
    assert any("module." in n for n in loaded.notes)


def test_arithmetic_switch(tmp_path):
    model = random_model()
    save_official(model, tmp_path / "dit.pt")
    loaded = load_any(tmp_path / "dit.pt", arithmetic="diffusers")
    assert loaded.model.config.arithmetic == "diffusers"
    assert_same_weights(model, loaded.model)
    x, t, y = inputs()
    with torch.no_grad():
        same = set_arithmetic(loaded.model, "official")(x, t, y)
        assert torch.equal(same, model(x, t, y))
        assert not torch.allclose(loaded.model(x, t, y), same, atol=1e-3)
    with pytest.raises(ValueError, match="unknown arithmetic"):
        load_any(tmp_path / "dit.pt", arithmetic="jax")


# -- ditkit files ------------------------------------------------------------------------------------
def test_ditkit_checkpoint_and_safetensors(tmp_path):
    model, ema = random_model(seed=0), random_model(seed=1)
    names = [f"class {i}" for i in range(10)]
    ckpt = {
        "format": "ditkit-checkpoint",
        "version": 1,
        "model_config": TINY.to_dict(),
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "label_names": names,
        "step": 7,
    }
    atomic_torch_save(ckpt, tmp_path / "ckpt.pt")
    loaded = load_any(tmp_path / "ckpt.pt")
    assert (loaded.format, loaded.has_ema, loaded.label_names) == ("ditkit-checkpoint", True, names)
    assert_same_weights(ema, loaded.model)
    assert_same_weights(model, load_any(tmp_path / "ckpt.pt", use_ema=False).model)
    save_safetensors(model, tmp_path / "w.safetensors", label_names=names)
    loaded = load_any(tmp_path / "w.safetensors")
    assert (loaded.format, loaded.id2label[3]) == ("ditkit-safetensors", "class 3")
    assert_same_weights(model, loaded.model)


# -- bad input ----------------------------------------------------------------------------------------
def test_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hello, I am not a checkpoint\n")
    with pytest.raises(ValueError, match=r"notes.txt: not a readable checkpoint"):
        load_any(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_any(tmp_path / "missing.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a DiT checkpoint .*list"):
        load_any(tmp_path / "list.pt")
    torch.save({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="no DiT weights found .*encoder.weight"):
        load_any(tmp_path / "other.pt")
    torch.save({"format": "someone-else", "weights": {}}, tmp_path / "fmt.pt")
    with pytest.raises(ValueError, match="unknown checkpoint format 'someone-else'"):
        load_any(tmp_path / "fmt.pt")


def test_truncated_files(tmp_path):
    model = random_model()
    save_official(model, tmp_path / "dit.pt")
    data = (tmp_path / "dit.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.pt: not a readable checkpoint .*corrupt or truncated"):
        load_any(tmp_path / "cut.pt")
    save_safetensors(model, tmp_path / "w.safetensors")
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(ValueError, match="cut.safetensors: .*corrupt or truncated"):
        load_any(tmp_path / "cut.safetensors")


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_code_running_pickles_are_refused(tmp_path, writer):
    marker = tmp_path / "pwned"
    payload = {"x_embedder.proj.weight": torch.zeros(1), "evil": Evil(marker)}
    path = tmp_path / "evil.pt"
    if writer == "torch":
        torch.save(payload, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump(payload, fh, protocol=2)
    assert not marker.exists()
    with pytest.raises(ValueError, match="evil.pt: .*(refused to load|not a readable checkpoint)"):
        load_any(path)
    assert not marker.exists()


def test_shape_mismatches_and_missing_keys_are_named(tmp_path):
    state = random_model().state_dict()
    broken = dict(state)
    broken["blocks.1.mlp.fc2.weight"] = torch.zeros(64, 100)
    torch.save(broken, tmp_path / "shape.pt")
    with pytest.raises(
        ValueError, match=r"blocks.1.mlp.fc2.weight has shape \(64, 100\), expected \(64, 256\)"
    ):
        load_any(tmp_path / "shape.pt")
    missing = {k: v for k, v in state.items() if k != "blocks.0.attn.proj.bias"}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="missing 1 key.*blocks.0.attn.proj.bias"):
        load_any(tmp_path / "missing.pt")
    extra = {**state, "blocks.0.attn.q_norm.weight": torch.ones(64)}
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match="unexpected 1 key.*q_norm"):
        load_any(tmp_path / "extra.pt")
    gap = {k: v for k, v in state.items() if not k.startswith("blocks.0.")}
    torch.save(gap, tmp_path / "gap.pt")
    with pytest.raises(ValueError, match=r"blocks \[0\] are missing"):
        load_any(tmp_path / "gap.pt")


def test_converters_consume_every_key():
    state = random_model().state_dict()
    with pytest.raises(ValueError, match="unexpected 1 key.*stray"):
        official_to_diffusers({**state, "stray": torch.zeros(1)}, TINY)
    dstate = official_to_diffusers(state, TINY)
    cfg = TINY.replace(arithmetic="diffusers")
    with pytest.raises(ValueError, match="unexpected 1 key.*transformer_blocks.0.attn1.norm_q.weight"):
        diffusers_to_official(
            {**dstate, "transformer_blocks.0.attn1.norm_q.weight": torch.ones(64)}, cfg, "folder"
        )
    short = {k: v for k, v in dstate.items() if k != "proj_out_2.bias"}
    with pytest.raises(ValueError, match="missing 1 key.*proj_out_2.bias"):
        diffusers_to_official(short, cfg, "folder")
    back = diffusers_to_official(dstate, cfg, "folder")
    assert set(back) == set(state) - {"pos_embed"}
    assert all(torch.equal(back[k], state[k]) for k in back)
