"""ditkit.runtime: device, precision policy, autocast, compile fallback, threads, torchrun environment."""

from __future__ import annotations

import warnings

import pytest
import torch

from ditkit import runtime

CPU = torch.device("cpu")


@pytest.fixture
def fast_cpu(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))


@pytest.fixture
def slow_cpu(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx2", "fma"}))


def test_auto_is_bf16_on_cpus_with_bf16_instructions(monkeypatch):
    for flags in ({"amx_bf16", "amx_tile"}, {"avx512_bf16"}):
        monkeypatch.setattr(runtime, "cpu_flags", lambda flags=flags: frozenset(flags))
        assert runtime.resolve_precision("auto", CPU) == "bf16"
        assert runtime.inference_dtype(CPU) == torch.bfloat16


def test_auto_is_fp32_elsewhere(slow_cpu):
    assert runtime.resolve_precision("auto", CPU) == "fp32"
    assert runtime.inference_dtype(CPU, "auto") == torch.float32
    assert runtime.resolve_precision("auto", torch.device("mps")) == "fp32"
    # an explicit bf16 still runs on any CPU (emulated where slow)
    assert runtime.resolve_precision("bf16", CPU) == "bf16"
    assert runtime.inference_dtype(CPU, "bf16") == torch.bfloat16


def test_cuda_policy(monkeypatch):
    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(runtime, "cuda_has_bf16", lambda device: True)
    assert runtime.resolve_precision("auto", gpu) == "bf16"
    assert runtime.resolve_precision("fp16", gpu) == "fp16"
    monkeypatch.setattr(runtime, "cuda_has_bf16", lambda device: False)  # pre-Ampere
    assert runtime.resolve_precision("auto", gpu) == "fp32"
    with pytest.raises(ValueError, match=r"bf16 is not supported on this GPU; it supports fp32, fp16") as err:
        runtime.resolve_precision("bf16", gpu)
    assert "\n" not in str(err.value)


def test_unsupported_and_unknown_precisions(fast_cpu):
    with pytest.raises(ValueError, match=r"fp16 is not supported on device cpu; it supports fp32, bf16"):
        runtime.resolve_precision("fp16", CPU)
    with pytest.raises(ValueError, match=r"unknown precision 'fp8'; choose one of auto, fp32, bf16, fp16"):
        runtime.resolve_precision("fp8", CPU)
    with pytest.raises(ValueError, match="resolve it first"):
        runtime.precision_dtype("auto")


def test_autocast_contexts(fast_cpu):
    with runtime.autocast(CPU, "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with runtime.autocast(CPU, "auto"):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
        out = torch.nn.functional.linear(torch.randn(2, 3), torch.randn(4, 3))
    assert out.dtype == torch.bfloat16


def test_pick_device():
    if not torch.cuda.is_available():
        assert runtime.pick_device("auto") == CPU
        with pytest.raises(ValueError, match="no CUDA GPU is available"):
            runtime.pick_device("cuda")
    assert runtime.pick_device("cpu") == CPU
    with pytest.raises(ValueError, match=r"'gpu0' is not a device; choose auto, cpu, cuda, cuda:N or mps"):
        runtime.pick_device("gpu0")


def _tiny() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.GELU())


def test_compile_without_a_compiler_warns_and_runs_eagerly(monkeypatch):
    monkeypatch.setattr(runtime, "compiler_problem", lambda device: "no C++ compiler found (install g++)")
    net = _tiny()
    with pytest.warns(
        UserWarning, match=r"^--compile ignored: no C\+\+ compiler found \(install g\+\+\); running"
    ):
        out = runtime.maybe_compile(net, True)
    assert out is net and "forward" not in net.__dict__
    assert runtime.maybe_compile(net, False) is net


def test_compile_failure_at_first_call_falls_back(monkeypatch):
    def broken_compile(fn, **kwargs):
        def call(*args, **kw):
            raise RuntimeError("C++ compile error: cannot find Python.h\nmore text")

        return call

    monkeypatch.setattr(runtime, "compiler_problem", lambda device: None)
    monkeypatch.setattr(torch, "compile", broken_compile)
    net = _tiny()
    x = torch.randn(2, 3)
    expected = net(x)
    runtime.maybe_compile(net, True)
    assert set(net.state_dict()) == {"0.weight", "0.bias"}  # keys unchanged (no _orig_mod prefix)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = net(x)
    assert len(caught) == 1 and "--compile failed (RuntimeError: C++ compile error" in str(caught[0].message)
    assert "\n" not in str(caught[0].message)
    torch.testing.assert_close(got, expected)
    assert "forward" not in net.__dict__  # eager from now on


def test_compile_reports_first_call_time(monkeypatch):
    monkeypatch.setattr(runtime, "compiler_problem", lambda device: None)
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)  # a stand-in "compiler"
    logged: list[str] = []
    net = runtime.maybe_compile(_tiny(), True, log=logged.append)
    net(torch.randn(1, 3))
    net(torch.randn(1, 3))
    assert len(logged) == 1 and logged[0].startswith("torch.compile: first call (compile) took ")
    assert net.compile_seconds >= 0
    runtime.uncompile(net)
    assert "forward" not in net.__dict__


def test_set_threads_and_dist_env(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert runtime.set_threads(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert runtime.set_threads() == 2
        with pytest.raises(ValueError, match="positive integer"):
            runtime.set_threads(0)
    finally:
        torch.set_num_threads(before)
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert runtime.dist_env() == runtime.DistEnv(0, 0, 1, 1)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    env = runtime.dist_env()
    assert (env.rank, env.local_rank, env.world_size, env.local_world_size) == (3, 1, 4, 2)
    monkeypatch.setenv("WORLD_SIZE", "four")
    with pytest.raises(ValueError, match="WORLD_SIZE='four' is not an integer"):
        runtime.dist_env()


@pytest.mark.parametrize("flags, want", [({"avx512_bf16"}, torch.bfloat16), ({"avx2"}, torch.float32)])
def test_from_pretrained_precision_follows_the_policy(monkeypatch, tmp_path, flags, want):
    """precision="auto" in the Python API: bf16 weights on a fast-bf16 CPU, fp32 elsewhere; the default
    (no dtype, no precision) keeps the stored fp32 weights, as diffusers does; both at once is refused."""
    import ditkit
    from ditkit.pipeline import DiTPipeline

    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset(flags))
    model = ditkit.create_model("DiT-Digits", input_size=8, in_channels=1, num_classes=10)
    folder = DiTPipeline(model).save_pretrained(tmp_path / "pipe")
    assert DiTPipeline.from_pretrained(folder, precision="auto").dtype == want
    assert DiTPipeline.from_pretrained(folder).dtype == torch.float32
    assert DiTPipeline.from_pretrained(folder, precision="bf16").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="not both"):
        DiTPipeline.from_pretrained(folder, precision="fp32", dtype=torch.float32)
    with pytest.raises(ValueError, match="fp16 is not supported on device cpu"):
        DiTPipeline.from_pretrained(folder, precision="fp16")
