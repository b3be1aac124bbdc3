"""Noise schedules (betas) and timestep respacing.

Everything here is float64 numpy: the schedule is computed once, and the extra precision keeps products
such as the cumulative alpha accurate over 1000 steps before the process casts coefficients to fp32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["SCHEDULES", "get_betas", "space_timesteps"]

# Canonical names first; "squaredcos_cap_v2" is the diffusers name of the same cosine schedule.
SCHEDULES: tuple[str, ...] = ("linear", "cosine")
_ALIASES = {"squaredcos_cap_v2": "cosine"}


def _cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    # Nichol & Dhariwal (2021): alpha_bar(u) = cos((u + s) / (1 + s) * pi / 2)^2 for u in [0, 1];
    # beta_i = 1 - alpha_bar((i+1)/T) / alpha_bar(i/T). The cap avoids beta = 1 at the very end,
    # where alpha_bar(1) is 0 and the last step would destroy the signal completely.
    def alpha_bar(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    betas = [
        min(1.0 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
        for i in range(num_timesteps)
    ]
    return np.asarray(betas, dtype=np.float64)


def get_betas(schedule: str = "linear", num_timesteps: int = 1000) -> np.ndarray:
    """Return the float64 beta schedule of length ``num_timesteps``.

    ``"linear"``: betas evenly spaced in [1e-4, 0.02] for 1000 steps; for other lengths both ends are
    scaled by 1000 / num_timesteps so the total amount of noise stays about the same (as in ADM / DiT).
    ``"cosine"`` (alias ``"squaredcos_cap_v2"``): the squared-cosine schedule, s = 0.008, betas capped
    at 0.999.
    """
    if (
        not isinstance(num_timesteps, (int, np.integer))
        or isinstance(num_timesteps, bool)
        or num_timesteps < 1
    ):
        raise ValueError(f"num_timesteps must be a positive integer, got {num_timesteps!r}")
    name = _ALIASES.get(schedule, schedule)
    if name == "linear":
        scale = 1000.0 / num_timesteps
        beta_start, beta_end = scale * 1e-4, scale * 0.02
        if beta_end >= 1.0:
            raise ValueError(
                f"the linear schedule needs num_timesteps > 20 (got {num_timesteps}: the last beta would be "
                f"{beta_end:g} >= 1); use more steps or schedule='cosine'"
            )
        return np.linspace(beta_start, beta_end, int(num_timesteps), dtype=np.float64)
    if name == "cosine":
        return _cosine_betas(int(num_timesteps))
    valid = ", ".join(repr(s) for s in (*SCHEDULES, *_ALIASES))
    raise ValueError(f"unknown noise schedule {schedule!r}; valid schedules: {valid}")


def space_timesteps(num_timesteps: int, section_counts: str | Sequence[int]) -> list[int]:
    """Pick which of the ``num_timesteps`` original steps a respaced process keeps (sorted ascending).

    ``section_counts`` follows ADM / DiT:

    * ``"250"`` or ``[250]``: 250 steps evenly strided over [0, T-1] with a rounded fractional stride,
      both ends included.
    * ``"10,15,20"`` or ``[10, 15, 20]``: the range is cut into 3 equal sections (the first
      ``T % 3`` sections one step longer) and each section is strided as above with its own count.
    * ``"ddimN"``: the integer DDIM stride, ``range(0, T, i)`` for the smallest stride ``i`` that gives
      exactly N steps (then T-1 is usually not included). Raises ValueError when no stride gives N.
    """
    if not isinstance(num_timesteps, (int, np.integer)) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be a positive integer, got {num_timesteps!r}")
    if isinstance(section_counts, str):
        spec = section_counts.strip()
        if spec.startswith("ddim"):
            try:
                desired = int(spec[len("ddim") :])
            except ValueError:
                raise ValueError(
                    f"bad respacing {section_counts!r}: expected 'ddimN' with an integer N, e.g. 'ddim50'"
                ) from None
            for stride in range(1, num_timesteps):  # the official search range, kept for identical grids
                if len(range(0, num_timesteps, stride)) == desired:
                    return list(range(0, num_timesteps, stride))
            raise ValueError(
                f"no integer stride gives exactly {desired} DDIM steps out of {num_timesteps}; "
                f"pick N so that ceil({num_timesteps}/stride) == N for some stride, or use '{desired}' "
                "for an evenly strided grid"
            )
        try:
            counts = [int(x) for x in spec.split(",")]
        except ValueError:
            raise ValueError(
                f"bad respacing {section_counts!r}: expected comma-separated step counts like '250' or "
                "'10,15,20', or 'ddimN'"
            ) from None
    else:
        counts = [int(x) for x in section_counts]
    if not counts or any(c < 1 for c in counts):
        raise ValueError(f"bad respacing {section_counts!r}: every section needs at least 1 step")
    if len(counts) > num_timesteps:
        raise ValueError(
            f"bad respacing {section_counts!r}: {len(counts)} sections for only {num_timesteps} steps"
        )

    size_per, extra = divmod(num_timesteps, len(counts))
    start = 0
    steps: set[int] = set()
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(
                f"bad respacing {section_counts!r}: section {i} has {size} steps but {count} were requested"
            )
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        # Accumulate the fractional index and use Python's round (half to even), exactly as ADM does,
        # so that grids (and therefore published samples) match the official ones index for index.
        cur = 0.0
        for _ in range(count):
            steps.add(start + round(cur))
            cur += stride
        start += size
    return sorted(steps)
