"""The trainer's parts driven directly: the objective on a fixed batch, the checkpoint schema (round trip and
one-line errors), one step, the conditioning schema, the objective registry, and the bookkeeping."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from _data_helpers import TINY_RUN
from ditkit.conditioning import Conditioning
from ditkit.config import ARCHITECTURE_KEYS, DECIDED_ELSEWHERE, apply_overrides, load_config
from ditkit.diffusion import GaussianDiffusion
from ditkit.models import ModelConfig, drop_labels
from ditkit.train import DDPMObjective, TrainState, read_inference_parts, validate_checkpoint
from ditkit.train.objectives import OBJECTIVES, build_objective, register_objective
from ditkit.train.setup import build_run
from ditkit.train.step import StepContext, draw, train_step

CFG = [*TINY_RUN, "train.batch_size=8", "train.precision=fp32"]


def zero_model(x, t, y=None):
    return torch.zeros_like(x)


# -- the objective ----------------------------------------------------------------------------------
def test_ddpm_objective_on_a_fixed_batch_matches_the_closed_form():
    """A network that predicts eps = 0 has loss |noise|^2 per sample (epsilon MSE, no learned sigma)."""
    process = GaussianDiffusion.from_schedule("linear", 1000, learn_sigma=False)
    objective = DDPMObjective(process)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 1, 8, 8, generator=g)
    t, noise = objective.draw(4, (1, 8, 8), g)
    terms = objective.losses(zero_model, x0, None, t=t, noise=noise)
    assert terms["loss"].shape == (4,)
    assert torch.allclose(terms["loss"], noise.pow(2).mean(dim=(1, 2, 3)), atol=1e-6)
    assert torch.allclose(terms["t"], t.float() / 1000) and bool(
        ((terms["t"] >= 0) & (terms["t"] <= 1)).all()
    )


def test_registry_unknown_kind_lists_the_choices_and_a_registered_one_is_built():
    cfg = load_config(None, CFG)
    mcfg = ModelConfig(depth=1, hidden_size=32, num_heads=2, input_size=8, in_channels=1, num_classes=10)
    with pytest.raises(ValueError, match=r"process.kind must be one of ddpm.*got 'nope'"):
        build_objective(dataclasses.replace(cfg.process, kind="nope"), mcfg)
    register_objective("test-zero", lambda process, model_config: "built")
    try:
        assert build_objective(dataclasses.replace(cfg.process, kind="test-zero"), mcfg) == "built"
    finally:
        OBJECTIVES.pop("test-zero")


# -- the checkpoint schema --------------------------------------------------------------------------
def tiny_state():
    cfg = load_config(None, CFG)
    run = build_run(cfg, torch.device("cpu"))
    from ditkit.train.distributed import DistInfo
    from ditkit.train.runs import prepare_state

    state, _ = prepare_state(run, None, "fp32", torch.device("cpu"), DistInfo())
    return run, state


def test_state_round_trip_and_inference_parts():
    run, state = tiny_state()
    state.step = 7
    ckpt = state.to_dict()
    back = TrainState.from_dict(ckpt, origin="x.pt")
    assert back.step == 7 and back.conditioning == state.conditioning and back.precision == "fp32"
    for name, value in state.net.state_dict().items():
        assert torch.equal(value, back.net.state_dict()[name]), name
    assert torch.equal(back.generator.get_state(), state.generator.get_state())
    parts = read_inference_parts(ckpt)
    assert parts.used_ema and parts.process["kind"] == "ddpm" and parts.conditioning.sizes == (10,)
    assert parts.weights is ckpt["ema"]


def test_inference_parts_of_a_stripped_checkpoint_and_checksums_of_the_weights():
    _, state = tiny_state()
    ckpt = state.to_dict()
    shared = {k: v for k, v in ckpt.items() if k not in ("optimizer", "scheduler", "rng", "config")}
    parts = read_inference_parts(shared, origin="shared.pt")  # stripped to share it: it still samples
    assert parts.used_ema and parts.config == {} and parts.process == {"kind": "ddpm"}
    with pytest.raises(ValueError, match="shared.pt: incomplete checkpoint, missing optimizer"):
        validate_checkpoint(shared, "shared.pt")  # ... but it does not resume
    ckpt["ema"]["final_layer.linear.bias"] += 1.0  # changed after the checksums were taken
    with pytest.raises(ValueError, match=r"^x.pt \(ema weights\): the file is damaged"):
        read_inference_parts(ckpt, origin="x.pt")
    assert read_inference_parts(ckpt, use_ema=False, origin="x.pt").weights is ckpt["model"]
    with pytest.raises(ValueError, match=r"^x.pt \(ema weights\): the file is damaged"):
        TrainState.from_dict(ckpt, origin="x.pt")
    ckpt["weights_sha256"] = "abc"
    with pytest.raises(ValueError, match="field 'weights_sha256' must be a mapping"):
        validate_checkpoint(ckpt, "x.pt")


def test_a_vae_that_is_not_a_local_folder_says_how_to_get_it():
    from ditkit.train.setup import build_codec

    cfg = load_config(None, ["data.vae=stabilityai/sd-vae-ft-ema"])
    with pytest.raises(FileNotFoundError) as info:
        build_codec(cfg.data, torch.device("cpu"))
    assert str(info.value) == (
        "--vae 'stabilityai/sd-vae-ft-ema' is not a local folder; download it once, e.g. hf download "
        "stabilityai/sd-vae-ft-ema --local-dir vae, and pass --vae vae"
    )


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda c: c["rng"].pop("generator"), "'rng.generator' is missing"),
        (lambda c: c.__setitem__("step", "7"), "field 'step' must be an integer >= 0, got '7'"),
        (lambda c: c.__setitem__("model", {"w": 1}), "field 'model' must be a state dict"),
        (lambda c: c.pop("optimizer"), "missing optimizer"),
        (lambda c: c["model_config"].__setitem__("depth", "x"), "field 'model_config'"),
    ],
)
def test_damaged_checkpoint_fields_are_one_line_errors(damage, message):
    _, state = tiny_state()
    ckpt = state.to_dict()
    damage(ckpt)
    with pytest.raises(ValueError) as info:
        validate_checkpoint(ckpt, "runs/001/checkpoints/0000007.pt")
    text = str(info.value)
    assert message in text and text.startswith("runs/001/checkpoints/0000007.pt: ") and "\n" not in text


# -- one step ---------------------------------------------------------------------------------------
def test_one_step_equals_a_hand_written_step():
    run, state = tiny_state()
    objective = build_objective(run.config.process, run.model_config)
    from ditkit.data import IndexStream, StepBatches

    stream = IndexStream(len(run.dataset), 0)
    reader = StepBatches(run.dataset, stream, 8, 1, 1, 0)
    draws = draw(run, objective, stream, state.generator, 0)
    micro = reader[0]
    before = {k: v.clone() for k, v in state.net.state_dict().items()}
    # the reference: the same loss by hand, one AdamW step on a copy
    ref = build_run(run.config, torch.device("cpu"))
    import copy

    net = copy.deepcopy(state.net)
    opt = torch.optim.AdamW(net.parameters(), lr=run.config.train.lr, betas=(0.9, 0.999), weight_decay=0.0)
    y = (
        torch.where(draws.drop, torch.tensor(10), micro[0].labels)
        if draws.drop is not None
        else micro[0].labels
    )
    loss = objective.losses(net, micro[0].images, y, t=draws.t, noise=draws.noise)["loss"].mean()
    loss.backward()
    state.schedule.apply(state.optimizer, 0)
    ctx = StepContext(state.net, objective, torch.device("cpu"), lambda: torch.autocast("cpu", enabled=False))
    result = train_step(state, ctx, ref, micro, [slice(0, 8)], draws, measure_grad=True)
    opt.step()
    assert state.step == 1 and torch.allclose(result.loss, loss.detach(), atol=1e-6)
    assert result.grad_norm is not None and float(result.grad_norm) > 0 and int(result.bad_index) == -1
    for name, value in state.net.state_dict().items():
        assert torch.allclose(value, net.state_dict()[name], atol=1e-6), name
    decay = 0.1  # EMA warmup at step 0: min(0.9999, 1/10)
    for name, p in state.ema.named_parameters():
        expected = decay * before[name] + (1 - decay) * state.net.state_dict()[name]
        assert torch.allclose(p, expected, atol=1e-6), name


def test_a_non_finite_input_is_named_by_its_data_index():
    run, state = tiny_state()
    objective = build_objective(run.config.process, run.model_config)
    from ditkit.data import IndexStream, StepBatches

    stream = IndexStream(len(run.dataset), 0)
    draws = draw(run, objective, stream, state.generator, 0)
    micro = StepBatches(run.dataset, stream, 8, 1, 1, 0)[0]
    micro[0].images[3, 0, 2, 2] = float("nan")
    ctx = StepContext(state.net, objective, torch.device("cpu"), lambda: torch.autocast("cpu", enabled=False))
    result = train_step(state, ctx, run, micro, [slice(0, 8)], draws, measure_grad=False)
    assert int(result.bad_index) == int(draws.idx[3])
    from ditkit.train.bookkeeping import StepLog, TrainingDiverged
    from ditkit.train.distributed import DistInfo

    book = StepLog(DistInfo(), None, None, 10, True)
    book.add(result)
    with pytest.raises(TrainingDiverged, match=rf"non-finite data \(NaN/inf\) at index {int(draws.idx[3])} "):
        book.collect(1)


# -- the conditioning schema ------------------------------------------------------------------------
def test_conditioning_round_trip_resolution_and_null():
    cond = Conditioning.from_labels({"genre": ["landscape", "portrait"], "style": ["a", "b", "c"]}, dropout=0.1,
                                    attribute_dropout=0.2)  # fmt: skip
    assert Conditioning.from_dict(cond.to_dict()) == cond and cond.null_label == (2, 3)
    assert cond.rows([{"genre": "Portrait"}, [0, "c"]]) == [(1, 3), (0, 2)]  # missing = free = null row
    with pytest.raises(ValueError, match="genre: unknown label 'landscap' \\(did you mean 'landscape'"):
        cond.rows([{"genre": "landscap"}])
    assert cond.null_condition(2).tolist() == [[2, 3], [2, 3]]
    strict = Conditioning.from_labels(["cat", "dog"], dropout=0.0)
    with pytest.raises(ValueError, match="trained without label dropout"):
        strict.attribute_id(0, None)
    assert strict.class_ids(["dog", 0, "1"]) == [1, 0, 1] and strict.null_condition(1).tolist() == [2]
    with pytest.raises(ValueError, match="out of range; valid ids are 0..1"):
        strict.class_ids([5])
    emb = Conditioning.from_labels(None, cond_dim=4, dropout=0.5)
    assert emb.null_condition(3).shape == (3, 4) and not emb.null_condition(3).any()


def test_dropout_rule_is_drop_labels():
    cond = Conditioning.from_labels(["a", "b", "c"], dropout=0.5)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    mask = cond.drop_mask(y, 6, torch.Generator().manual_seed(3))
    ref = drop_labels(y, 0.5, 3, generator=torch.Generator().manual_seed(3))
    assert torch.equal(cond.apply_drop(y, mask), ref)


# -- one model config -------------------------------------------------------------------------------
def test_model_section_keys_follow_model_config():
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    assert set(ARCHITECTURE_KEYS) == fields - DECIDED_ELSEWHERE
    cfg = apply_overrides(load_config(None, []), ["model.arithmetic=diffusers", "model.depth=2"])
    assert cfg.model.architecture() == {"arithmetic": "diffusers", "depth": 2}
    with pytest.raises(ValueError, match="model.depth expects an integer or null"):
        apply_overrides(cfg, ["model.depth=deep"])


def test_ddpm_on_the_digits_default_points_to_the_tuned_recipe():
    from ditkit.config import load_config, recipe
    from ditkit.train.setup import DIGITS_DDPM_NOTE

    cpu = torch.device("cpu")
    assert DIGITS_DDPM_NOTE in build_run(load_config(None, ["process.kind=ddpm"]), cpu).notes
    assert DIGITS_DDPM_NOTE not in build_run(load_config(None, []), cpu).notes  # flow: the default
    assert DIGITS_DDPM_NOTE not in build_run(recipe("digits-ddpm"), cpu).notes  # the tuned recipe itself
