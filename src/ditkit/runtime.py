"""Where and how the network runs: device, precision policy, autocast, torch.compile, threads, torchrun.

Precision policy (issue 11): ``"auto"`` means bf16 on devices that run it fast (CUDA GPUs with native bf16;
CPUs with AMX or AVX512-BF16) and fp32 elsewhere. Training uses bf16 *autocast* over fp32 master weights;
sampling runs the network in bf16 *weights* (`inference_dtype`), while schedules, guidance and solver
arithmetic stay in fp32.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# -- device -----------------------------------------------------------------------------------------
def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """The device for a name: auto (the local rank's CUDA GPU if any, else the CPU), cpu, cuda, cuda:N, mps."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {name!r} is not a device; choose auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device is cuda but no CUDA GPU is available; use --device cpu (or auto)")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device is mps but MPS is not available; use --device cpu (or auto)")
    return device


# -- precision ---------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where the file does not exist, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags") or line.startswith("Features"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has bf16 matmul instructions (AMX-BF16 or AVX512-BF16), so oneDNN runs bf16 fast."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def cuda_has_bf16(device: torch.device) -> bool:
    """Native (not emulated) bf16 on this GPU: compute capability 8.0 (Ampere) and newer."""
    if not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device)[0] >= 8


def supported_precisions(device: torch.device) -> tuple[str, ...]:
    """The precisions ditkit runs on this device (fp32 always)."""
    if device.type == "cuda":
        return ("fp32", "bf16", "fp16") if cuda_has_bf16(device) else ("fp32", "fp16")
    if device.type == "mps":
        return ("fp32", "fp16", "bf16")
    return ("fp32", "bf16")  # any CPU runs bf16 (emulated where slow); fp16 autocast is a CUDA feature here


def fast_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return cuda_has_bf16(device)
    if device.type == "cpu":
        return cpu_has_fast_bf16()
    return False


def resolve_precision(requested: str, device: torch.device | str) -> str:
    """The precision to run: auto -> bf16 where the device runs it fast, else fp32; explicit ones are checked."""
    device = torch.device(device)
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; choose one of {', '.join(PRECISIONS)}")
    if requested == "auto":
        return "bf16" if fast_bf16(device) else "fp32"
    supported = supported_precisions(device)
    if requested not in supported:
        what = "this GPU" if device.type == "cuda" else f"device {device.type}"
        raise ValueError(
            f"precision {requested} is not supported on {what}; it supports {', '.join(supported)} (or auto)"
        )
    return requested


def precision_dtype(precision: str) -> torch.dtype:
    """The torch dtype of a resolved precision (fp32, bf16, fp16); resolve auto first."""
    if precision not in _DTYPES:
        raise ValueError(f"precision {precision!r} has no dtype; resolve it first (fp32, bf16, fp16)")
    return _DTYPES[precision]


def precision_name(dtype: Any) -> str:
    """The precision name of a dtype ("fp32", "bf16", "fp16"; anything else as torch spells it)."""
    return {v: k for k, v in _DTYPES.items()}.get(dtype, str(dtype))


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """Autocast for a resolved (or "auto") precision; a no-op context for fp32."""
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def inference_dtype(device: torch.device | str, precision: str = "auto") -> torch.dtype:
    """The dtype of the network's *weights* when sampling: bf16 (or fp16) where resolved so, else fp32.

    Callers cast the network once (`net.to(dtype)`) and keep every schedule/guidance/solver tensor in fp32;
    the network casts its input to its own dtype and the caller casts the output back with `.float()`.
    """
    return _DTYPES[resolve_precision(precision, torch.device(device))]


# -- torch.compile ------------------------------------------------------------------------------------
def compiler_problem(device: torch.device | str = "cpu") -> str | None:
    """Why torch.compile (inductor) can't run here, or None when it can."""
    device = torch.device(device)
    if device.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed"
        return None
    if device.type != "cpu":
        return f"inductor does not compile for {device.type}"
    cxx = os.environ.get("CXX")
    if not (cxx and shutil.which(cxx)) and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return "no C++ compiler found (install g++ or set CXX)"
    return None


def default_compile_cache() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "ditkit" / "torchinductor"


def maybe_compile(
    module: nn.Module,
    enabled: bool,
    *,
    device: torch.device | str | None = None,
    log: Callable[[str], None] | None = None,
    **compile_kwargs: Any,
) -> nn.Module:
    """torch.compile `module.forward` in place when enabled (state_dict keys and identity unchanged).

    Without a compiler: one warning and the eager module. Compiled kernels are cached on disk
    (TORCHINDUCTOR_CACHE_DIR, default ~/.cache/ditkit/torchinductor) so a second run does not pay the
    compile again. The first call is timed; the seconds go to `log` and to `module.compile_seconds`.
    If compiling fails at the first call, it warns once and runs eagerly from then on.
    Compile after any deepcopy of the module (EMA): a copy would share the compiled forward.
    """
    if not enabled:
        return module
    if device is None:
        first = next(module.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    problem = compiler_problem(device)
    if problem:
        warnings.warn(f"--compile ignored: {problem}; running eagerly", stacklevel=2)
        return module
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(default_compile_cache()))
    eager = module.forward
    compiled = torch.compile(eager, **compile_kwargs)
    state = {"first": True}

    def forward(*args: Any, **kwargs: Any) -> Any:
        if not state["first"]:
            return compiled(*args, **kwargs)
        started = time.perf_counter()
        try:
            out = compiled(*args, **kwargs)
        except ValueError:
            raise  # a user error from the network's own input checks, not a compiler failure
        except Exception as exc:  # noqa: BLE001 - any compiler failure falls back to eager
            warnings.warn(
                f"--compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''});"
                " running eagerly",
                stacklevel=2,
            )
            module.__dict__.pop("forward", None)
            return eager(*args, **kwargs)
        state["first"] = False
        seconds = time.perf_counter() - started
        module.compile_seconds = seconds
        if log is not None:
            log(f"torch.compile: first call (compile) took {seconds:.1f} s")
        return out

    module.forward = forward
    return module


def uncompile(module: nn.Module) -> nn.Module:
    """Undo `maybe_compile` (e.g. on a deepcopy that should run eagerly)."""
    module.__dict__.pop("forward", None)
    return module


# -- threads and torchrun --------------------------------------------------------------------------------
def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads: n, else OMP_NUM_THREADS, else the usable cores / local processes."""
    if n is None:
        env = os.environ.get("OMP_NUM_THREADS", "")
        if env.isdigit() and int(env) > 0:
            n = int(env)
        else:
            try:
                cores = len(os.sched_getaffinity(0))
            except AttributeError:  # not Linux
                cores = os.cpu_count() or 1
            n = max(1, cores // max(1, dist_env().local_world_size))
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"threads must be a positive integer, got {n!r}")
    torch.set_num_threads(n)
    return n


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1


def dist_env() -> DistEnv:
    """rank, local_rank, world_size (and local_world_size) from torchrun's environment; 0/0/1 without it."""

    def read(name: str, default: int) -> int:
        value = os.environ.get(name, "")
        if not value:
            return default
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"environment variable {name}={value!r} is not an integer") from None

    rank = read("RANK", 0)
    world = read("WORLD_SIZE", 1)
    local_rank = read("LOCAL_RANK", rank)
    return DistEnv(rank, local_rank, world, read("LOCAL_WORLD_SIZE", world))
