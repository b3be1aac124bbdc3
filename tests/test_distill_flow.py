"""Progressive distillation of flow-matching teachers: the Euler-step target against closed forms (a second
plain implementation, the exact flow map of Gaussian data), the loss of a student copied from its teacher,
and `ditkit distill --mode steps` end to end on a tiny flow teacher, sampled by the pipeline on its own grid."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from _data_helpers import TINY as TINY_BASE
from ditkit.cli.main import main
from ditkit.distill import (
    DistillSection,
    FlowStepsDistillation,
    Teacher,
    build_distill_objective,
    check_mode,
    init_student,
    steps_teacher_grid,
)
from ditkit.distill.targets import euler_step, student_target_velocity, teacher_euler
from ditkit.models import DiT, ModelConfig
from test_distill import random_teacher as ddpm_random_teacher
from test_distill import tiny as ddpm_tiny


def tiny(**changes) -> ModelConfig:
    """test_distill's tiny teacher config as a flow model (time 1000 s, velocity, no variance channels)."""
    return ddpm_tiny(**{"time_input": "flow", "learn_sigma": False, **changes})


def random_teacher(cfg: ModelConfig, seed: int = 0) -> Teacher:
    """A flow teacher whose every weight is random (the official init outputs exactly zero)."""
    teacher = ddpm_random_teacher(cfg, seed)
    teacher.process_kind = "flow"
    return teacher


def batch(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, 1, 4, 4, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    u = torch.rand(n, generator=g)
    noise = torch.randn(n, 1, 4, 4, generator=g)
    return x0, y, u, noise


# -- the target identity on the exact velocity of Gaussian data ----------------------------------------------
class GaussianFlowOracle(nn.Module):
    """E[eps - x0 | x_s] for data x0 ~ N(mu, sd^2) elementwise on x_s = (1 - s) x0 + s eps; time input 1000 s."""

    def __init__(self, mu: float, sd: float) -> None:
        super().__init__()
        self.mu, self.sd = mu, sd
        self.config = SimpleNamespace(
            has_null_label=False, guidance_embed=False, conditional=False, time_input="flow"
        )

    def forward(self, x, t_net):
        s = (t_net.double() / 1000).view(-1, 1, 1, 1)
        return _oracle_v(x.double(), s, self.mu, self.sd).float()


def _oracle_v(x, s, mu, sd):
    a = 1 - s
    var = a * a * sd * sd + s * s
    e_x0 = mu + a * sd * sd * (x - a * mu) / var
    e_eps = s * (x - a * mu) / var
    return e_eps - e_x0


def _euler_scalar(x: float, path: list[float], mu: float, sd: float) -> float:
    """Teacher Euler steps of the oracle along `path`, in plain Python floats (an independent version)."""
    for s, s_next in zip(path, path[1:]):
        x = x + (s_next - s) * _oracle_v(x, s, mu, sd)
    return x


def test_one_student_euler_step_with_the_target_lands_on_the_teachers_merged_steps():
    mu, sd = 0.3, 0.7
    teacher = Teacher(
        model=GaussianFlowOracle(mu, sd), path=Path("oracle"), format="test", process_kind="flow"
    )
    grid = [1.0, 0.75, 0.5, 0.25, 0.0]  # the teacher's 4 steps -> a 2-step student on [1, 0.5, 0]
    obj = FlowStepsDistillation(teacher, grid, 2)
    assert obj.student_grid.tolist() == [1.0, 0.5, 0.0]
    g = torch.Generator().manual_seed(0)
    x0 = mu + sd * torch.randn(8, 1, 2, 2, generator=g)
    noise = torch.randn(8, 1, 2, 2, generator=g)
    idx = torch.tensor([0, 1] * 4)
    x_s, s_start, v_target = obj.targets(x0, noise, idx, None, None)
    assert s_start.tolist() == [1.0, 0.5] * 4
    for i in range(8):
        path = grid[:3] if idx[i] == 0 else grid[2:]
        for j, x in enumerate(x_s[i].flatten().tolist()):
            landed = _euler_scalar(x, path, mu, sd)  # two teacher steps
            v = v_target[i].flatten()[j].item()
            # ONE student Euler step s -> s' with the target velocity lands where the teacher did
            assert x + (path[-1] - path[0]) * v == pytest.approx(landed, rel=1e-5, abs=1e-6)
            # ... and the target is the step-weighted average of the teacher's two velocities
            mid = x + (path[1] - path[0]) * _oracle_v(x, path[0], mu, sd)
            avg = 0.5 * (_oracle_v(x, path[0], mu, sd) + _oracle_v(mid, path[1], mu, sd))
            assert v == pytest.approx(avg, rel=1e-5, abs=1e-6)


def test_target_velocity_round_trips_an_euler_step_in_float64():
    g = torch.Generator().manual_seed(3)
    x, v = torch.randn(5, 1, 2, 2, generator=g, dtype=torch.float64), torch.randn(5, 1, 2, 2, generator=g)
    s, s_next = torch.tensor([1.0, 0.8, 0.5, 0.3, 0.1]), torch.tensor([0.6, 0.4, 0.25, 0.0, 0.0])
    landed = x + (s_next - s).double().view(-1, 1, 1, 1) * v.double()
    torch.testing.assert_close(euler_step(x, v, s, s_next), landed.float())
    torch.testing.assert_close(student_target_velocity(x, landed, s, s_next), v, rtol=1e-6, atol=1e-6)


def test_teacher_euler_converges_to_the_exact_flow_map_of_gaussian_data():
    """More sub-steps approach the ODE solution, known in closed form for Gaussian data:
    x_s' = (1 - s') mu + sqrt(((1 - s')^2 sd^2 + s'^2) / ((1 - s)^2 sd^2 + s^2)) (x_s - (1 - s) mu)."""
    mu, sd = -0.2, 0.5
    oracle = GaussianFlowOracle(mu, sd)
    x = torch.randn(16, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    s, s_next = 0.9, 0.1
    scale = math.sqrt(((1 - s_next) ** 2 * sd**2 + s_next**2) / ((1 - s) ** 2 * sd**2 + s**2))
    exact = (1 - s_next) * mu + scale * (x - (1 - s) * mu)
    errors = []
    for merge in (1, 4, 32):
        path = torch.linspace(s, s_next, merge + 1, dtype=torch.float64).repeat(16, 1)
        out = teacher_euler(lambda xx, ss: oracle(xx, 1000 * ss), x, path)
        errors.append(float((out - exact).abs().max()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.05 * errors[0]


# -- the loss of a student copied from its teacher ------------------------------------------------------------
def test_a_copied_student_has_zero_loss_with_merge_one():
    teacher = random_teacher(tiny())
    student = DiT(tiny())
    init_student(student, teacher.model, "teacher")
    obj = FlowStepsDistillation(teacher, [1.0, 0.6, 0.3, 0.0], 1)
    x0, y, u, noise = batch()
    terms = obj.losses(student, x0, y, t=u, noise=noise)
    assert terms["loss"].abs().max() < 1e-9
    assert obj.losses(DiT(tiny(depth=1)), x0, y, t=u, noise=noise)["loss"].min() > 1e-4


def test_copied_student_loss_is_the_closed_form_difference_of_two_teacher_velocities():
    """Student = teacher at the start point: v* = ((s1 - s0) v0 + (s2 - s1) v1) / (s2 - s0), so the loss is
    mean(((s2 - s1) / (s2 - s0) (v0 - v1))^2); a wrong sign or step factor in the target changes it."""
    teacher = random_teacher(tiny())
    student = DiT(tiny())
    init_student(student, teacher.model, "teacher")
    grid = [1.0, 0.7, 0.4, 0.1, 0.0]
    obj = FlowStepsDistillation(teacher, grid, 2)
    x0, y, u, noise = batch()
    terms = obj.losses(student, x0, y, t=u, noise=noise)
    idx = (u.double() * 2).floor().long()
    s0, s1, s2 = (torch.tensor([grid[2 * i + k] for i in idx.tolist()]).view(-1, 1, 1, 1) for k in range(3))
    x = (1 - s0) * x0 + s0 * noise
    v0 = teacher.model(x, 1000 * s0.flatten(), y)
    v1 = teacher.model(x + (s1 - s0) * v0, 1000 * s1.flatten(), y)
    expected = (((s2 - s1) / (s2 - s0) * (v0 - v1)) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(terms["loss"], expected, rtol=1e-4, atol=1e-8)
    assert expected.min() > 1e-6  # not trivially zero
    torch.testing.assert_close(terms["t"], s0.flatten())


def test_cfg_teacher_target_is_its_guided_velocity():
    teacher = random_teacher(tiny())  # class_dropout_prob > 0: a null label for CFG
    obj = FlowStepsDistillation(teacher, [1.0, 0.5, 0.0], 1, w_min=2.5, w_max=2.5)
    x0, y, _, noise = batch()
    idx = torch.tensor([0, 1, 0, 1, 0, 1])
    w = torch.full((6,), 2.5)
    x_s, s, v = obj.targets(x0, noise, idx, y, w)
    null = torch.full_like(y, teacher.config.null_label)
    v_c, v_u = teacher.model(x_s, 1000 * s.float(), y), teacher.model(x_s, 1000 * s.float(), null)
    torch.testing.assert_close(v, v_u + 2.5 * (v_c - v_u), rtol=1e-4, atol=1e-5)


def test_guidance_distilled_teacher_gets_w_as_an_input():
    """A w-conditioned teacher (from --mode guidance) is called once with w: no doubled CFG batch."""
    teacher = random_teacher(tiny(guidance_embed=True))
    obj = FlowStepsDistillation(teacher, [1.0, 0.5, 0.0], 1, w_min=1.0, w_max=4.0, student_guided=True)
    x0, y, _, noise = batch()
    w = torch.linspace(1.0, 4.0, 6)
    x_s, s, v = obj.targets(x0, noise, torch.tensor([0, 1] * 3), y, w)
    torch.testing.assert_close(v, teacher.model(x_s, 1000 * s.float(), y, w=w), rtol=1e-4, atol=1e-5)
    student = DiT(tiny(guidance_embed=True))
    init_student(student, teacher.model, "teacher")
    assert obj.losses(student, x0, y, t=torch.linspace(0, 0.99, 6), noise=noise, w=w)["loss"].max() < 1e-9


def test_sit_teacher_is_read_in_its_own_time_and_sign():
    """A SiT network gets 1 - s and predicts x0 - eps = -v: the target is in ditkit's sign (d x / d s)."""
    teacher = random_teacher(tiny(time_input="sit"))
    obj = FlowStepsDistillation(teacher, [1.0, 0.5, 0.0], 1)
    x0, y, _, noise = batch()
    x_s, s, v = obj.targets(x0, noise, torch.tensor([0, 1] * 3), y, None)
    torch.testing.assert_close(v, -teacher.model(x_s, 1 - s.float(), y), rtol=1e-4, atol=1e-5)
    student = DiT(tiny(time_input="sit"))
    init_student(student, teacher.model, "teacher")
    assert obj.losses(student, x0, y, t=torch.linspace(0, 0.99, 6), noise=noise)["loss"].max() < 1e-9


def test_guided_student_losses_do_not_depend_on_how_the_batch_is_split():
    teacher = random_teacher(tiny())
    student = DiT(tiny(guidance_embed=True))
    init_student(student, teacher.model, "teacher")
    obj = FlowStepsDistillation(
        teacher, [1.0, 0.75, 0.5, 0.25, 0.0], 2, w_min=1.0, w_max=3.0, student_guided=True
    )
    x0, y, u, noise = batch(8)
    whole = obj.losses(student, x0, y, t=u, noise=noise)
    halves = [
        obj.losses(student, x0[s], y[s], t=u[s], noise=noise[s])["loss"] for s in (slice(0, 3), slice(3, 8))
    ]
    torch.testing.assert_close(whole["loss"], torch.cat(halves), rtol=1e-5, atol=1e-7)
    whole["loss"].mean().backward()
    assert student.w_embedder.mlp[2].weight.grad.abs().sum() > 0


def test_draws_pick_every_student_step_uniformly():
    obj = FlowStepsDistillation(random_teacher(tiny()), [1.0, 0.75, 0.5, 0.25, 0.0], 1)
    u, noise = obj.draw(4000, (1, 2, 2), torch.Generator().manual_seed(0))
    assert noise.shape == (4000, 1, 2, 2) and u.dtype == torch.float32
    counts = torch.bincount(obj._step_index(4000, u, None, "cpu"), minlength=4)
    assert counts.min() > 1000 * 0.85
    with pytest.raises(ValueError, match="floats"):
        obj._step_index(2, torch.tensor([1, 2]), None, "cpu")


# -- config, build and grids ----------------------------------------------------------------------------------
def test_distill_section_takes_flow_grids():
    DistillSection(
        teacher="t.pt", mode="steps", teacher_grid=(1.0, 0.75, 0.5, 0.25, 0.0), grid=(1.0, 0.5, 0.0)
    )
    for bad in ((1.0, 0.5, 0.5, 0.0), (1.5, 0.5, 0.0), (0.0,)):
        with pytest.raises(ValueError, match="flow noise levels in \\(0, 1\\] then 0") as err:
            DistillSection(mode="steps", teacher_grid=bad)
        assert "\n" not in str(err.value)


def _run_config(teacher_grid, kind="flow"):
    d = SimpleNamespace(
        teacher="t.pt", teacher_family=None, teacher_sha256=None, mode="steps", init="teacher",
        guidance_min=1.0, guidance_max=1.0, merge=2, teacher_grid=tuple(teacher_grid),
    )  # fmt: skip
    return SimpleNamespace(
        distill=d, process=SimpleNamespace(kind=kind, schedule="linear", num_timesteps=1000)
    )


def test_build_picks_the_flow_objective_and_refuses_a_ddpm_grid():
    teacher = random_teacher(tiny())
    obj = build_distill_objective(_run_config([1.0, 0.5, 0.0]), model_config=tiny(), teacher=teacher)
    assert isinstance(obj, FlowStepsDistillation) and obj.num_steps == 1 and obj.init_mode == "teacher"
    with pytest.raises(ValueError, match="a DDPM grid but the teacher is a flow model") as err:
        build_distill_objective(_run_config([999, 499, -1]), model_config=tiny(), teacher=teacher)
    assert "\n" not in str(err.value)
    other = random_teacher(tiny())
    other.process_kind = "edm"
    with pytest.raises(ValueError, match="flow-matching model\\); this teacher is a 'edm' model"):
        check_mode("steps", other, tiny())


def test_flow_teacher_grid_is_the_samplers_linspace_with_the_process_shift():
    teacher = random_teacher(tiny())
    plain = SimpleNamespace(process=SimpleNamespace(shift=1.0, num_timesteps=1000))
    assert steps_teacher_grid(teacher, plain, 4) == [1.0, 0.75, 0.5, 0.25, 0.0]
    shifted = steps_teacher_grid(teacher, SimpleNamespace(process=SimpleNamespace(shift=3.0)), 4)
    assert shifted == pytest.approx([3 * u / (1 + 2 * u) for u in (1.0, 0.75, 0.5, 0.25, 0.0)])
    assert shifted[0] == 1.0 and shifted[-1] == 0.0
    with pytest.raises(ValueError, match="--spacing ddim is a DDPM grid"):
        steps_teacher_grid(teacher, plain, 4, "ddim")


# -- `ditkit distill --mode steps` end to end on a tiny flow teacher ---------------------------------------
TINY = [*TINY_BASE, "process.kind=flow"]
RUN = ["--batch-size", "8", "--no-progress", "--max-steps", "2"]


@pytest.fixture(scope="module")
def flow_teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("flow_teacher")
    assert main(["train", "--set", *TINY, "--output-dir", str(out), *RUN]) == 0
    return next(out.glob("*/checkpoints/*.pt"))


def _newest(out):
    return sorted(out.glob("*/checkpoints/*.pt"))[-1]


def _manual_euler(net, x, grid, y):
    """Plain Euler x + (s' - s) v on the grid (a CFG teacher's student takes w; w = 1 is unguided)."""
    extra = {"w": torch.ones(x.shape[0])} if net.config.guidance_embed else {}
    for s, s_next in zip(grid, grid[1:]):
        x = x + (s_next - s) * net(x, torch.full((x.shape[0],), 1000 * s), y, **extra).float()
    return x


def test_steps_mode_distils_a_flow_teacher_end_to_end(flow_teacher, tmp_path):
    from ditkit.pipeline import DiTPipeline
    from ditkit.train import load_checkpoint

    flags = ["--mode", "steps", "--steps", "2", "--guidance", "1", "1", "--output-dir"]
    assert main(["distill", "--teacher", str(flow_teacher), *flags, str(tmp_path / "a"), *RUN]) == 0
    student = _newest(tmp_path / "a")
    cfg = load_checkpoint(student)["config"]
    assert cfg["process"]["kind"] == "flow"
    assert cfg["distill"]["teacher_grid"] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert cfg["distill"]["grid"] == cfg["sample"]["grid"] == [1.0, 0.5, 0.0]
    assert cfg["sample"]["sampler"] == "ddim" and cfg["sample"]["steps"] == 2

    pipe = DiTPipeline.from_pretrained(student)
    calls = []
    pipe.transformer.register_forward_hook(lambda *a: calls.append(1))
    c = pipe.transformer.config
    x = torch.randn(2, c.in_channels, c.input_size, c.input_size, generator=torch.Generator().manual_seed(0))
    out = pipe([0, 1], guidance_scale=1.0, latents=x, output_type="latent")
    assert len(calls) == 2 and out.info["nfe"] == 2 and out.info["grid"] == [1.0, 0.5, 0.0]
    assert torch.isfinite(out.images).all()
    # the recorded sampler's step on that grid is the Euler step the student was distilled for
    y = torch.tensor([0, 1])
    torch.testing.assert_close(
        out.images, _manual_euler(pipe.transformer, x, [1.0, 0.5, 0.0], y), rtol=1e-4, atol=1e-5
    )
    euler = pipe(
        [0, 1],
        guidance_scale=1.0,
        latents=x,
        output_type="latent",
        sampler="euler",
        timesteps=[1.0, 0.5, 0.0],
    )
    torch.testing.assert_close(euler.images, out.images, rtol=1e-5, atol=1e-6)

    # a second round halves again: the student's grid is the new teacher grid
    assert (
        main(
            [
                "distill",
                "--teacher",
                str(student),
                "--mode",
                "steps",
                "--output-dir",
                str(tmp_path / "b"),
                *RUN,
            ]
        )
        == 0
    )
    d2 = load_checkpoint(_newest(tmp_path / "b"))["config"]["distill"]
    assert d2["teacher_grid"] == [1.0, 0.5, 0.0] and d2["grid"] == [1.0, 0.0]


def test_steps_mode_refuses_a_ddpm_spacing_for_a_flow_teacher(flow_teacher, capsys):
    argv = ["distill", "--teacher", str(flow_teacher), "--mode", "steps", "--spacing", "ddim", "--dry-run"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ditkit distill: error: ") and "\n" not in err
    assert "--spacing ddim is a DDPM grid" in err


def test_flow_steps_resume_is_bit_exact(flow_teacher, tmp_path):
    """The float grid round-trips through the checkpoint's config, and the objective's draws through resume."""
    from ditkit.cli.distill import build_config
    from ditkit.cli.main import build_parser
    from ditkit.train import train

    args = build_parser().parse_args(
        ["distill", "--teacher", str(flow_teacher), "--mode", "steps", "--steps", "2", "--max-steps", "4",
         "--batch-size", "8", "--set", "train.ckpt_every=2", "train.threads=1", "train.sample_every=0",
         "train.log_every=2", "train.precision=fp32"]
    )  # fmt: skip
    config, _ = build_config(args)
    full = train(config, progress=False, echo=False, run_dir=tmp_path / "full")
    part = train(config, progress=False, echo=False, run_dir=tmp_path / "part", stop_at=2)
    resumed = train(config, progress=False, echo=False, resume=part.checkpoint)
    assert resumed.step == 4 and resumed.losses == full.losses[2:]
    a, b = torch.load(full.checkpoint, weights_only=True), torch.load(resumed.checkpoint, weights_only=True)
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
