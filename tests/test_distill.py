"""Distillation objectives against closed forms: copied students have zero loss, a zero w-embedding leaves the
teacher's function unchanged, and the progressive-distillation target on the exact denoiser of Gaussian data."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from ditkit.diffusion import GaussianDiffusion
from ditkit.distill import (
    DistillSection,
    GuidanceDistillation,
    OutputDistillation,
    ProcessObjective,
    StepsDistillation,
    Teacher,
    check_mode,
    check_student,
    init_student,
    load_teacher,
    pruned_blocks,
)
from ditkit.distill.targets import alpha_sigma, student_target_eps, teacher_ddim
from ditkit.models import DiT, ModelConfig


def tiny(**changes) -> ModelConfig:
    base = dict(
        depth=2, hidden_size=32, num_heads=2, patch_size=2, input_size=4, in_channels=1, num_classes=3
    )
    return ModelConfig(**{**base, **changes})


def random_teacher(cfg: ModelConfig, seed: int = 0) -> Teacher:
    """A teacher whose every weight is random (the official init outputs exactly zero)."""
    torch.manual_seed(seed)
    net = DiT(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.1)
    return Teacher(model=net.eval().requires_grad_(False), path=Path("memory"), format="test", digest="abc")


def batch(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, 1, 4, 4, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    noise = torch.randn(n, 1, 4, 4, generator=g)
    return x0, y, t, noise


PROCESS = GaussianDiffusion.from_schedule("linear", 1000, learn_sigma=True)


def test_output_loss_is_zero_when_the_student_is_the_teacher():
    teacher = random_teacher(tiny())
    student = DiT(tiny())
    init_student(student, teacher.model, "teacher")
    obj = OutputDistillation(teacher, ProcessObjective(PROCESS))
    x0, y, t, noise = batch()
    terms = obj.losses(student, x0, y, t=t, noise=noise)
    # eps and learned-variance channels match (to rounding: the student runs with autograd, the teacher without)
    assert terms["loss"].abs().max() < 1e-10
    assert terms["data"].min() > 0  # ... while the data loss of the same model is not zero
    other = DiT(tiny(depth=1))
    terms = obj.losses(other, x0, y, t=t, noise=noise)
    assert terms["loss"].min() > 0
    terms["loss"].mean().backward()
    assert other.final_layer.linear.weight.grad.abs().sum() > 0


def test_output_alpha_one_is_the_data_loss():
    teacher = random_teacher(tiny())
    student = random_teacher(tiny(), seed=3).model.train().requires_grad_(True)
    x0, y, t, noise = batch()
    mixed = OutputDistillation(teacher, ProcessObjective(PROCESS), alpha=1.0).losses(
        student, x0, y, t=t, noise=noise
    )
    data = PROCESS.training_losses(student, x0, {"y": y}, t=t, noise=noise)["loss"]
    torch.testing.assert_close(mixed["loss"], data, rtol=0, atol=0)
    assert torch.equal(mixed["t"], t.float() / 1000)


def test_output_variance_from_data_when_the_teacher_has_none():
    teacher = random_teacher(tiny(learn_sigma=False))
    student = DiT(tiny())
    x0, y, t, noise = batch()
    terms = OutputDistillation(teacher, ProcessObjective(PROCESS)).losses(student, x0, y, t=t, noise=noise)
    data = PROCESS.training_losses(student, x0, {"y": y}, t=t, noise=noise)
    eps = student(PROCESS.q_sample(x0, t, noise), t, y)[:, :1]
    ref = teacher.model(PROCESS.q_sample(x0, t, noise), t, y)
    expected = ((eps - ref) ** 2).mean(dim=(1, 2, 3)) + data["vb"]
    torch.testing.assert_close(terms["loss"], expected)


def test_guidance_student_with_zero_w_embedding_is_the_teacher():
    teacher = random_teacher(tiny())
    student = DiT(tiny(guidance_embed=True))
    lines = init_student(student, teacher.model, "teacher")
    assert any("w_embedder" in line for line in lines)  # reported as left at its (zero-output) init
    x0, y, t, noise = batch()
    x_t = PROCESS.q_sample(x0, t, noise)
    ref = teacher.model(x_t, t, y)
    for w in (1.0, 2.5, 7.0):
        torch.testing.assert_close(student(x_t, t, y, w=torch.full((6,), w)), ref, rtol=0, atol=1e-6)
    obj = GuidanceDistillation(teacher, ProcessObjective(PROCESS), w_min=1.0, w_max=1.0)
    assert obj.losses(student, x0, y, t=t, noise=noise)["loss"].abs().max() < 1e-10  # w = 1: unguided


def test_guidance_target_is_classifier_free_guidance():
    teacher = random_teacher(tiny())
    student = DiT(tiny(guidance_embed=True))
    init_student(student, teacher.model, "teacher")
    x0, y, t, noise = batch()
    w = torch.tensor([1.0, 1.5, 2.0, 3.0, 4.0, 1.25])
    terms = GuidanceDistillation(teacher, ProcessObjective(PROCESS), w_min=1, w_max=4).losses(
        student, x0, y, t=t, noise=noise, w=w
    )
    x_t = PROCESS.q_sample(x0, t, noise)
    cond, uncond = teacher.model(x_t, t, y), teacher.model(x_t, t, torch.full_like(y, 3))
    guided_eps = uncond[:, :1] + w.view(-1, 1, 1, 1) * (cond[:, :1] - uncond[:, :1])
    expected = ((cond[:, :1] - guided_eps) ** 2).mean(dim=(1, 2, 3))  # the student still outputs `cond`
    torch.testing.assert_close(terms["loss"], expected)
    assert terms["loss"][0] < 1e-10 and terms["loss"][1:].min() > 0


def test_guidance_weights_follow_the_noise_and_are_uniform():
    x0 = torch.zeros(4000, 1, 2, 2)
    noise = torch.randn(4000, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    from ditkit.distill.objectives import _draw_w

    w = _draw_w(1.0, 4.0, x0, noise, None)
    torch.testing.assert_close(w[:10], _draw_w(1.0, 4.0, x0[:10], noise[:10], None))  # per sample: DDP-safe
    assert 1.0 <= float(w.min()) and float(w.max()) <= 4.0
    counts = torch.histc(w, bins=6, min=1.0, max=4.0)
    assert counts.min() > 4000 / 6 * 0.8  # roughly uniform


# -- progressive distillation on the exact denoiser of Gaussian data ------------------------------------------
class GaussianOracle(nn.Module):
    """The exact eps-prediction E[eps | x_t] for data x0 ~ N(mu, s^2) elementwise."""

    def __init__(self, mu: float, s: float) -> None:
        super().__init__()
        self.mu, self.s = mu, s
        self.config = SimpleNamespace(has_null_label=False, guidance_embed=False, conditional=False)

    def forward(self, x, t):
        a, sig = alpha_sigma(torch.tensor(PROCESS.alphas_cumprod.copy()), t)
        return (sig * (x.double() - a * self.mu) / (a**2 * self.s**2 + sig**2)).float()


def _abar(t: int) -> float:
    return 1.0 if t < 0 else float(PROCESS.alphas_cumprod[t])


def _ddim_scalar(x: float, t: int, s: int, mu: float, sd: float) -> float:
    """One DDIM step of the oracle in plain floats (an independent implementation)."""
    at, st = math.sqrt(_abar(t)), math.sqrt(1 - _abar(t))
    as_, ss = math.sqrt(_abar(s)), math.sqrt(1 - _abar(s))
    eps = st * (x - at * mu) / (at**2 * sd**2 + st**2)
    return as_ * (x - st * eps) / at + ss * eps


def test_steps_target_two_teacher_steps_equal_one_student_step_gaussian_oracle():
    mu, sd = 0.3, 0.7
    teacher = Teacher(model=GaussianOracle(mu, sd), path=Path("oracle"), format="test")
    grid = [999, 749, 499, 249, -1]  # the teacher's 4 steps -> a 2-step student on [999, 499, -1]
    obj = StepsDistillation(teacher, PROCESS, grid, 2)
    assert obj.student_grid.tolist() == [999, 499, -1]
    g = torch.Generator().manual_seed(0)
    x0 = mu + sd * torch.randn(8, 1, 2, 2, generator=g)
    noise = torch.randn(8, 1, 2, 2, generator=g)
    idx = torch.tensor([0, 1] * 4)
    x_t, t_start, eps_target, _ = obj.targets(x0, noise, idx, None, None)
    assert t_start.tolist() == [999, 499] * 4
    for i in range(8):
        t, m, s = (999, 749, 499) if idx[i] == 0 else (499, 249, -1)
        for x in x_t[i].flatten().tolist()[:2]:
            x_s = _ddim_scalar(_ddim_scalar(x, t, m, mu, sd), m, s, mu, sd)  # two teacher steps
            # the eps with which ONE DDIM step t -> s lands on x_s, solved directly for eps
            at, st = math.sqrt(_abar(t)), math.sqrt(1 - _abar(t))
            as_, ss = math.sqrt(_abar(s)), math.sqrt(1 - _abar(s))
            eps = (x_s - as_ * x / at) / (ss - as_ * st / at)
            got = eps_target[i].flatten()[x_t[i].flatten().tolist().index(x)].item()
            assert got == pytest.approx(eps, rel=1e-5, abs=1e-6)


def test_teacher_ddim_converges_to_the_exact_flow_map_of_gaussian_data():
    """More teacher sub-steps approach the probability-flow ODE solution, known in closed form for Gaussians:
    x_s = a_s mu + sqrt((a_s^2 s^2 + s_s^2) / (a_t^2 s^2 + s_t^2)) (x_t - a_t mu)."""
    mu, sd = -0.2, 0.5
    oracle = GaussianOracle(mu, sd)
    ac = torch.tensor(PROCESS.alphas_cumprod.copy())
    x_t = torch.randn(16, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    t, s = 600, 100
    a_t, s_t = math.sqrt(_abar(t)), math.sqrt(1 - _abar(t))
    a_s, s_s = math.sqrt(_abar(s)), math.sqrt(1 - _abar(s))
    exact = a_s * mu + math.sqrt((a_s**2 * sd**2 + s_s**2) / (a_t**2 * sd**2 + s_t**2)) * (x_t - a_t * mu)
    errors = []
    for merge in (1, 4, 25):
        points = [round(t - (t - s) * k / merge) for k in range(merge + 1)]
        path = torch.tensor(points).repeat(16, 1)
        x_s = teacher_ddim(lambda x, tt: oracle(x, tt), x_t, path[:, 0], ac, path)
        errors.append(float((x_s - exact).abs().max()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.1 * errors[0]


def test_student_target_is_exact_when_one_step_suffices():
    ac = torch.tensor(PROCESS.alphas_cumprod.copy())
    x_t = torch.randn(4, 1, 2, 2)
    eps = torch.randn(4, 1, 2, 2)
    t, s = torch.full((4,), 700), torch.full((4,), 300)
    at, st = alpha_sigma(ac, t)
    as_, ss = alpha_sigma(ac, s)
    from ditkit.distill.targets import ddim_step

    x_s = ddim_step(x_t.double(), eps.double(), at, st, as_, ss)
    torch.testing.assert_close(student_target_eps(x_t, x_s, at, st, as_, ss), eps, rtol=1e-4, atol=1e-5)


def test_steps_loss_trains_a_guided_student():
    teacher = random_teacher(tiny())
    student = DiT(tiny(guidance_embed=True))
    init_student(student, teacher.model, "teacher")
    obj = StepsDistillation(
        teacher, PROCESS, [875, 625, 375, 125, -1], 2, w_min=1.5, w_max=1.5, student_guided=True
    )
    x0, y, t, noise = batch()
    terms = obj.losses(student, x0, y, t=t, noise=noise)
    assert terms["loss"].shape == (6,) and torch.isfinite(terms["loss"]).all()
    assert set(terms["t"].tolist()) <= {0.875, 0.375}
    terms["loss"].mean().backward()
    assert student.w_embedder.mlp[2].weight.grad.abs().sum() > 0


# -- student construction ----------------------------------------------------------------------------------------
def test_pruned_blocks_every_kth_ending_at_the_last():
    assert pruned_blocks(4, 2) == [1, 3]
    assert pruned_blocks(4, 1) == [3]
    assert pruned_blocks(6, 3) == [1, 3, 5]
    assert pruned_blocks(5, 3) == [0, 2, 4]
    assert pruned_blocks(4, 4) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="no deeper than the teacher"):
        pruned_blocks(2, 3)


def test_student_from_teacher_copies_every_kth_block():
    teacher = random_teacher(tiny(depth=4))
    student = DiT(tiny(depth=2))
    init_student(student, teacher.model, "student-from-teacher")
    for i, j in enumerate([1, 3]):
        for (name, a), (_, b) in zip(
            student.blocks[i].state_dict().items(), teacher.model.blocks[j].state_dict().items()
        ):
            assert torch.equal(a, b), name
    assert torch.equal(student.final_layer.linear.weight, teacher.model.final_layer.linear.weight)
    assert torch.equal(
        student.y_embedder.embedding_table.weight, teacher.model.y_embedder.embedding_table.weight
    )


def test_student_from_teacher_with_other_width_is_refused():
    teacher = random_teacher(tiny(depth=4))
    with pytest.raises(ValueError, match=r"hidden_size 64 vs 32") as err:
        init_student(DiT(tiny(depth=2, hidden_size=64)), teacher.model, "student-from-teacher")
    assert "\n" not in str(err.value)


def test_student_must_take_the_teachers_inputs_and_conditioning():
    with pytest.raises(ValueError, match=r"student takes 3x8x8 inputs but the teacher takes 1x4x4"):
        check_student(tiny(in_channels=3, input_size=8), tiny())
    with pytest.raises(
        ValueError, match=r"student is conditioned on 10 classes but the teacher on 3 classes"
    ):
        check_student(tiny(num_classes=10), tiny())
    with pytest.raises(ValueError, match="unconditional"):
        check_student(tiny(num_classes=0), tiny())
    check_student(tiny(depth=1, hidden_size=16, learn_sigma=False), tiny())  # narrower, shallower: fine


def test_steps_mode_needs_a_deterministic_sampler():
    teacher = random_teacher(tiny())
    teacher.process_kind = "edm"  # DDPM and flow teachers are distilled (flow: tests/test_distill_flow.py)
    with pytest.raises(ValueError, match="deterministic sampler"):
        check_mode("steps", teacher, tiny())
    with pytest.raises(ValueError, match="label dropout"):
        check_mode("guidance", random_teacher(tiny(class_dropout_prob=0.0)), tiny(guidance_embed=True))


def test_teacher_file_that_is_not_a_model(tmp_path):
    junk = tmp_path / "notes.pt"
    junk.write_bytes(b"hello, not a checkpoint")
    with pytest.raises(ValueError, match=r"^teacher: ") as err:
        load_teacher(junk)
    assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_teacher(tmp_path / "missing.pt")


def test_distill_section_validation():
    DistillSection(teacher="t.pt", mode="steps", teacher_grid=(750, 500, 250, 0, -1), grid=(750, 250, -1))
    with pytest.raises(ValueError, match="distill.mode must be one of output, guidance, steps"):
        DistillSection(mode="fast")
    with pytest.raises(ValueError, match="end at the clean point"):
        DistillSection(mode="steps", teacher_grid=(750, 500, 250, 0))
    with pytest.raises(ValueError, match="every 2-th point"):
        DistillSection(mode="steps", teacher_grid=(750, 500, 250, 0, -1), grid=(750, 500, -1))
    with pytest.raises(ValueError, match="not a multiple"):
        DistillSection(mode="steps", merge=2, teacher_grid=(750, 500, 0, -1))


def test_output_distillation_of_a_flow_teacher_uses_its_velocity():
    from ditkit.train.objectives_flow import FlowObjective

    cfg = tiny(time_input="flow", learn_sigma=False)
    teacher = random_teacher(cfg)
    student = DiT(cfg)
    init_student(student, teacher.model, "teacher")
    obj = OutputDistillation(teacher, FlowObjective())
    x0, y, _, noise = batch()
    s = torch.linspace(0.05, 0.95, 6)
    assert obj.losses(student, x0, y, t=s, noise=noise)["loss"].abs().max() < 1e-10
    other = DiT(tiny(time_input="flow", learn_sigma=False, depth=1))
    terms = obj.losses(other, x0, y, t=s, noise=noise)
    x_s = (1 - s.view(-1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1) * noise
    expected = ((other(x_s, 1000 * s, y) - teacher.model(x_s, 1000 * s, y)) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(terms["loss"], expected)
    torch.testing.assert_close(terms["t"], s)


@pytest.mark.parametrize("mode", ["guidance", "steps"])
def test_losses_do_not_depend_on_how_the_batch_is_split(mode):
    """Per-sample terms of a batch equal those of its halves (DDP and gradient accumulation see slices),
    including the guidance weight each sample draws from its own noise."""
    teacher = random_teacher(tiny())
    student = DiT(tiny(guidance_embed=True))
    init_student(student, teacher.model, "teacher")
    if mode == "guidance":
        obj = GuidanceDistillation(teacher, ProcessObjective(PROCESS), w_min=1.0, w_max=4.0)
    else:
        grid = [875, 625, 375, 125, -1]
        obj = StepsDistillation(teacher, PROCESS, grid, 2, w_min=1.0, w_max=3.0, student_guided=True)
    x0, y, t, noise = batch(8)
    whole = obj.losses(student, x0, y, t=t, noise=noise)["loss"]
    halves = [
        obj.losses(student, x0[s], y[s], t=t[s], noise=noise[s])["loss"] for s in (slice(0, 3), slice(3, 8))
    ]
    torch.testing.assert_close(whole, torch.cat(halves), rtol=1e-5, atol=1e-7)
