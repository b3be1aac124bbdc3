"""Seeded Gaussian noise with one generator per sample, so an image never depends on its batch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["Generators", "randn"]

Generators = torch.Generator | Sequence[torch.Generator] | None


def randn(
    shape: Sequence[int],
    generator: Generators = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard normal tensor of ``shape`` on ``device``.

    ``generator`` may be None (global RNG), one ``torch.Generator`` for the whole tensor, or a list with one
    generator per sample (``len == shape[0]``): sample k is then drawn from generator k alone, so it is the
    same whatever the batch size or the position in the batch. Draws happen on each generator's own device
    (usually the CPU, which makes seeds portable across GPUs) and the result is then moved to ``device``
    (default: the first generator's device, else the CPU).
    """
    shape = tuple(int(s) for s in shape)
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    if isinstance(generator, torch.Generator):
        out = torch.randn(shape, generator=generator, device=generator.device, dtype=dtype)
        return out.to(device if device is not None else generator.device)
    generators = list(generator)
    if not shape or len(generators) != shape[0]:
        raise ValueError(
            f"got {len(generators)} generators for a batch of {shape[0] if shape else 0}; pass one generator "
            "per sample, a single generator, or None"
        )
    if not all(isinstance(g, torch.Generator) for g in generators):
        raise ValueError("generator must be None, a torch.Generator or a list of torch.Generator")
    target = device if device is not None else generators[0].device
    draws = [
        torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype).to(target) for g in generators
    ]
    return torch.cat(draws, dim=0)
