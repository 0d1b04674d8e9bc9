"""The PSD schedule: how much soft target (alpha) each step uses, and on which rows.

Progressive self-distillation (Andonian et al., CVPR 2022) ramps the mixing
weight alpha from 0 towards alpha_max over training, and softens only a subset
of each batch. Both are pure functions of the step counter (and, for the subset,
of a seed, the rank and the direction), so a resumed run that restores the step
continues exactly.

    linear:   alpha(t) = alpha_max * min(1, t / ramp_steps)
    cosine:   alpha(t) = alpha_max * (1 - cos(pi * min(1, t / ramp_steps))) / 2
    constant: alpha(t) = alpha_max
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SCHEDULES = ("linear", "cosine", "constant")

# Subset streams: one per direction, so image rows and caption rows get independent draws.
IMAGE_ROWS, TEXT_ROWS = 0, 1


@dataclass(frozen=True)
class AlphaSchedule:
    """alpha as a function of the optimisation step (see the module docstring)."""

    kind: str = "linear"
    alpha_max: float = 0.0
    ramp_steps: int = 0

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.kind!r}")
        if not (isinstance(self.alpha_max, (int, float)) and 0.0 <= self.alpha_max <= 1.0):
            raise ValueError(f"alpha_max must lie in [0, 1], got {self.alpha_max!r}")
        if isinstance(self.ramp_steps, bool) or not isinstance(self.ramp_steps, int) or self.ramp_steps < 0:
            raise ValueError(f"ramp_steps must be a non-negative int, got {self.ramp_steps!r}")

    def __call__(self, step: int) -> float:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if self.kind == "constant" or self.ramp_steps == 0:
            return float(self.alpha_max)
        progress = min(1.0, step / self.ramp_steps)
        if self.kind == "linear":
            return self.alpha_max * progress
        return self.alpha_max * 0.5 * (1.0 - math.cos(math.pi * progress))


@dataclass(frozen=True)
class SoftSubset:
    """Which rows get the soft target: exactly round(fraction * n) of them, drawn at random.

    Each draw uses its own generator seeded from (seed, rank, step, stream), so draws
    are reproducible, independent across ranks and directions, and need no state
    beyond the step counter.
    """

    fraction: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if not (isinstance(self.fraction, (int, float)) and 0.0 <= self.fraction <= 1.0):
            raise ValueError(f"soft_fraction must lie in [0, 1], got {self.fraction!r}")

    def size(self, n: int) -> int:
        return int(round(self.fraction * n))

    def mask(self, n: int, step: int, stream: int = IMAGE_ROWS, rank: int = 0) -> torch.Tensor:
        """A (n,) bool CPU tensor with exactly size(n) True entries."""
        k = self.size(n)
        if k == n:
            return torch.ones(n, dtype=torch.bool)
        generator = torch.Generator().manual_seed(_mix(self.seed, rank, step, stream))
        chosen = torch.randperm(n, generator=generator)[:k]
        out = torch.zeros(n, dtype=torch.bool)
        out[chosen] = True
        return out


def _mix(*parts: int) -> int:
    """A 63-bit seed from several ints (splitmix64 steps), distinct for distinct tuples in practice."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (p & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF
