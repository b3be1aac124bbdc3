"""The trainer: LR schedules, AdamW groups, EMA, exact resume, accumulation, NaN stop, Ctrl-C, run folders."""

from __future__ import annotations

import math
import os
import signal

import pytest
import torch

import ditkit
from _data_helpers import TINY_RUN
from ditkit.config import apply_overrides, load_config
from ditkit.diffusion import GaussianDiffusion
from ditkit.train import (
    DDPMObjective,
    LRSchedule,
    TrainingDiverged,
    check_resume_config,
    ema_decay,
    list_checkpoints,
    load_checkpoint,
    make_ema,
    param_groups,
    train,
    update_ema,
)
from ditkit.train.runs import init_weights

TINY = [
    *TINY_RUN,
    "train.precision=fp32",  # equality tests: "auto" is bf16 on CPUs with AMX/AVX512-BF16
    "train.batch_size=16",
    "train.log_every=5",
    "train.ckpt_every=1000",
    "train.sample_every=0",
    "sample.steps=4",
]


def tiny(tmp_path, *extra):
    return load_config(None, [*TINY, f"train.output_dir={tmp_path / 'runs'}", *extra])


# -- LR schedules -----------------------------------------------------------------------------------
def test_constant_schedule_with_warmup():
    s = LRSchedule("constant", 1e-3, total_steps=100, warmup_steps=4)
    assert [s(i) for i in range(6)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    assert LRSchedule("constant", 1e-4, 10)(0) == 1e-4  # no warmup: the official recipe


def test_cosine_schedule_hand_computed():
    s = LRSchedule("cosine", 1.0, total_steps=10, warmup_steps=2)
    assert s(0) == pytest.approx(0.5) and s(1) == pytest.approx(1.0)  # linear warmup
    assert s(2) == pytest.approx(1.0)  # cosine starts at the peak
    assert s(4) == pytest.approx(0.5 * (1 + math.cos(math.pi * 2 / 8)))  # 0.853553...
    assert s(6) == pytest.approx(0.5)  # half way
    assert s(10) == pytest.approx(0.0)  # to zero at the end
    assert LRSchedule.from_state_dict(s.state_dict())(7) == s(7)


def test_wikiart_schedule():
    cfg = load_config("wikiart", ["train.max_steps=1000"])
    s = LRSchedule.from_config(cfg.train)
    assert s.warmup_steps == 10  # the first 1% of the steps
    assert s(0) == pytest.approx(3e-5) and s(9) == pytest.approx(3e-4) and s(10) == pytest.approx(3e-4)
    assert s(505) == pytest.approx(1.5e-4) and s(1000) == pytest.approx(0.0)


# -- AdamW groups -----------------------------------------------------------------------------------
def test_no_decay_on_biases_norms_and_embeddings():
    model = ditkit.create_model("DiT-S/8", input_size=16, num_classes=10)
    model.blocks[0].norm1 = torch.nn.LayerNorm(model.config.hidden_size)  # a norm with a learned gain
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert "y_embedder.embedding_table.weight" in kept
    assert "blocks.0.norm1.weight" in kept and "blocks.0.norm1.bias" in kept
    assert all(n.endswith("bias") for n in kept if "embedding" not in n and "norm" not in n)
    assert "blocks.0.attn.qkv.weight" in decayed and "x_embedder.proj.weight" in decayed
    assert "t_embedder.mlp.0.weight" in decayed and "final_layer.linear.weight" in decayed
    assert decayed | kept == set(names.values()) and not decayed & kept
    learned = ditkit.create_model("DiT-S/8", input_size=16, num_classes=10, pos_embed="learned")
    kept_learned = {
        n
        for n, p in learned.named_parameters()
        if any(p is q for q in param_groups(learned, 0.1)[1]["params"])
    }
    assert "pos_embed" in kept_learned

    # and AdamW really leaves them alone: with zero gradients only decoupled decay moves a weight
    opt = torch.optim.AdamW([decay, no_decay], lr=0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        expected = before[n] * (1 - 0.5 * 0.1) if n in decayed else before[n]
        assert torch.allclose(p, expected), n


# -- EMA --------------------------------------------------------------------------------------------
def test_ema_decay_warmup():
    assert ema_decay(0, 0.9999) == pytest.approx(0.1)
    assert ema_decay(90, 0.9999) == pytest.approx(0.91)
    assert ema_decay(10**7, 0.9999) == 0.9999
    assert ema_decay(0, 0.9999, warmup=False) == 0.9999


def test_ema_update_formula():
    torch.manual_seed(0)
    model = ditkit.create_model("DiT-S/8", input_size=16, num_classes=10)
    ema = make_ema(model)
    assert not any(p.requires_grad for p in ema.parameters()) and not ema.training
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
        model.pos_embed.mul_(2)
    old = {n: p.clone() for n, p in ema.named_parameters()}
    update_ema(ema, model, 0.9)
    for n, p in model.named_parameters():
        assert torch.allclose(dict(ema.named_parameters())[n], 0.9 * old[n] + 0.1 * p, atol=1e-6), n
    assert torch.equal(ema.pos_embed, model.pos_embed)  # buffers are copied, not averaged


# -- the loop ---------------------------------------------------------------------------------------
def test_run_folder_contents(tmp_path):
    cfg = tiny(
        tmp_path, "train.max_steps=12", "train.ckpt_every=4", "train.keep_last=2", "train.sample_every=6"
    )
    result = train(cfg, progress=False, echo=False)
    run = result.run_dir
    assert run.name == "001-DiT-Digits" and run.parent == tmp_path / "runs"
    assert result.status == "done" and result.step == 12 and len(result.losses) == 12
    assert [p.name for p in list_checkpoints(run)] == ["0000008.pt", "0000012.pt"]  # the last K
    assert apply_overrides(load_config(str(run / "config.yaml")), []) == cfg
    for name in ("log.txt", "metrics.jsonl", "loss_curve.png", "grid.png", "samples/0000006.png"):
        assert (run / name).exists(), name
    assert any((run / "tb").iterdir())
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt["step"] == 12 and ckpt["label_names"] == [str(i) for i in range(10)]
    from PIL import Image

    grid = Image.open(result.grid)
    assert grid.size[0] > grid.size[1]  # ten columns (digits), one row
    second = train(cfg, progress=False, echo=False)
    assert second.run_dir.name == "002-DiT-Digits"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_exact_resume_bit_for_bit(tmp_path, precision):
    """k + m steps straight == k steps, save, resume, m steps: same losses and weights, bit for bit, in fp32
    and under bf16 autocast (fp32 master weights) alike."""
    extra = [
        f"train.precision={precision}",
        "train.max_steps=10",
        "train.lr_schedule=cosine",
        "train.warmup_steps=2",
        "train.weight_decay=0.01",
        "train.grad_accum=2",
        "data.hflip=true",
        "model.class_dropout_prob=0.5",
    ]
    straight = train(tiny(tmp_path / "a", *extra), progress=False, echo=False)
    first = train(tiny(tmp_path / "b", *extra), progress=False, echo=False, stop_at=4)
    assert first.status == "stopped" and first.step == 4
    assert first.losses == straight.losses[:4]
    resumed = train(tiny(tmp_path / "b", *extra), resume=first.run_dir, progress=False, echo=False)
    assert resumed.resumed_from.name == "0000004.pt" and resumed.run_dir == first.run_dir
    assert resumed.losses == straight.losses[4:]  # exact float equality
    a, b = load_checkpoint(straight.checkpoint), load_checkpoint(resumed.checkpoint)
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    assert torch.equal(a["rng"]["generator"], b["rng"]["generator"])


def test_grad_accumulation_matches_one_big_batch(tmp_path):
    one = train(tiny(tmp_path / "a", "train.max_steps=3"), progress=False, echo=False)
    four = train(tiny(tmp_path / "b", "train.max_steps=3", "train.grad_accum=4"), progress=False, echo=False)
    assert one.losses == pytest.approx(four.losses, rel=1e-5)
    a, b = load_checkpoint(one.checkpoint)["model"], load_checkpoint(four.checkpoint)["model"]
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5), name


class PoisonedObjective(DDPMObjective):
    """DiT's loss, turned NaN from the 7th training step on (a public seam: `train(objective=...)`)."""

    def __init__(self, process, after):
        super().__init__(process)
        self.after, self.steps = after, 0

    def losses(self, model, x0, cond, **kwargs):
        terms = super().losses(model, x0, cond, **kwargs)
        if torch.is_grad_enabled() and self.steps >= self.after:
            terms["loss"] = terms["loss"] * float("nan")
        return terms


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = tiny(tmp_path, "train.max_steps=20", "train.ckpt_every=5")
    objective = PoisonedObjective(GaussianDiffusion.from_schedule("linear", 1000), after=6)
    with pytest.raises(TrainingDiverged) as info:
        train(cfg, progress=False, echo=False, objective=objective,
              on_step=lambda step: setattr(objective, "steps", step))  # fmt: skip
    message = str(info.value)
    assert "loss is nan at step 7" in message and "0000005.pt" in message and "\n" not in message
    run = tmp_path / "runs" / "001-DiT-Digits"
    assert [p.name for p in list_checkpoints(run)] == ["0000005.pt"]
    good = load_checkpoint(list_checkpoints(run)[0])
    assert all(torch.isfinite(v).all() for v in good["model"].values())


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_saves_a_checkpoint_and_stops(tmp_path, signum):
    def interrupt(step):
        if step == 3:
            os.kill(os.getpid(), signum)  # what Ctrl-C (or a cluster scheduler) sends

    # the handlers in place before the run (SIG_IGN for SIGINT when pytest runs in the background, e.g.
    # under nohup) are the ones in place after it
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    result = train(tiny(tmp_path, "train.max_steps=50"), progress=False, echo=False, on_step=interrupt)
    assert result.status == "interrupted" and result.step == 3
    assert load_checkpoint(result.checkpoint)["step"] == 3
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # restored


def test_resume_refuses_a_conflicting_config(tmp_path):
    cfg = tiny(tmp_path, "train.max_steps=2")
    first = train(cfg, progress=False, echo=False)
    changed = apply_overrides(cfg, ["train.lr=0.5", "model.depth=2", "train.max_steps=4"])
    with pytest.raises(ValueError) as info:
        train(changed, resume=first.run_dir, progress=False, echo=False)
    assert "model.depth (checkpoint 1, now 2)" in str(info.value) and "train.lr" in str(info.value)
    assert "train.max_steps" not in str(info.value)  # allowed to change
    check_resume_config(cfg, apply_overrides(cfg, ["train.max_steps=9", "sample.steps=7"]))  # no error
    with pytest.raises(ValueError, match="reaches train.max_steps=2"):
        train(cfg, resume="auto", progress=False, echo=False)
    more = train(apply_overrides(cfg, ["train.max_steps=4"]), resume="auto", progress=False, echo=False)
    assert more.step == 4 and more.run_dir == first.run_dir and len(more.losses) == 2


def test_latent_training_on_an_image_folder(tmp_path):
    """A folder of RGB images, encoded by a (tiny, random) AutoencoderKL every step; then sampled and decoded."""
    pytest.importorskip("diffusers")
    from diffusers import AutoencoderKL
    from PIL import Image

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )
    vae.save_pretrained(tmp_path / "vae")
    for label, color in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        for i in range(3):
            (tmp_path / "data" / label).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (20 + i, 18), color).save(tmp_path / "data" / label / f"{i}.png")
    cfg = tiny(
        tmp_path,
        f"data.path={tmp_path / 'data'}",
        f"data.vae={tmp_path / 'vae'}",
        "data.image_size=16",
        "model.patch_size=2",
        "data.hflip=true",
        "data.num_workers=1",  # images decoded ahead in a worker process
        "train.batch_size=4",
        "train.max_steps=3",
    )
    result = train(cfg, progress=False, echo=False)
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt["model_config"]["in_channels"] == 4 and ckpt["model_config"]["input_size"] == 8
    assert ckpt["label_names"] == ["blue", "red"]
    from PIL import Image as PILImage

    assert PILImage.open(result.grid).mode == "RGB"  # decoded through the VAE


def test_missing_vae_folder_is_a_clear_error(tmp_path):
    cfg = tiny(tmp_path, "data.vae=stabilityai/sd-vae-ft-ema")
    with pytest.raises(FileNotFoundError, match="not a local folder"):
        train(cfg, progress=False, echo=False)


def test_init_from_keeps_matching_tensors(tmp_path):
    source = train(tiny(tmp_path / "src", "train.max_steps=2"), progress=False, echo=False)
    ema = ditkit.io.model_from_checkpoint(load_checkpoint(source.checkpoint))
    # a model for 4 unnamed classes: everything but the label table comes from the checkpoint; the class
    # rows stay fresh (a different class set), the null (guidance) row is copied
    net = ditkit.create_model("DiT-Digits", input_size=8, in_channels=1, num_classes=4, depth=1, hidden_size=32,
                              num_heads=2, patch_size=4)  # fmt: skip
    fresh_table = net.y_embedder.embedding_table.weight.detach().clone()
    messages = init_weights(net, str(source.checkpoint), None)
    assert torch.equal(net.blocks[0].attn.qkv.weight, ema.blocks[0].attn.qkv.weight)
    table = net.y_embedder.embedding_table.weight
    assert torch.equal(table[:4], fresh_table[:4])
    assert torch.equal(table[4], ema.y_embedder.embedding_table.weight[10])
    assert "resized      y_embedder.embedding_table.weight" in "\n".join(messages)


def test_bf16_autocast_keeps_fp32_weights_and_loss(tmp_path):
    result = train(tiny(tmp_path, "train.max_steps=3", "train.precision=bf16"), progress=False, echo=False)
    assert all(math.isfinite(v) for v in result.losses)
    ckpt = load_checkpoint(result.checkpoint)
    assert all(v.dtype == torch.float32 for v in ckpt["model"].values())  # autocast, not a bf16 model
    assert "precision bf16 (autocast)" in (result.run_dir / "log.txt").read_text()
    with pytest.raises(ValueError, match="precision fp16 is not supported on device cpu"):
        train(tiny(tmp_path, "train.precision=fp16"), progress=False, echo=False)
