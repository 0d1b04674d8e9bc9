"""The PSD schedules: how much soft target (alpha) each step uses, and on how many rows.

Progressive self-distillation (Andonian, Chen, Hamid, CVPR 2022) ramps the mixing weight
alpha from 0 towards alpha_max over training, and softens only a subset of each batch
whose size also grows: the paper starts at 10% of the batch and adds 10% per epoch
until the whole batch is soft. Both schedules are pure functions of the optimizer step
(the subset also of a seed, the rank and the direction), so a resumed run that restores
the step continues exactly. docs/schedules.md gives the formulas and the presets.

With progress p(t) in [0, 1] after t steps of a ramp of R steps (E steps per epoch):

    linear, cosine:  p = min(1, t / R)
    per_epoch:       p = min(1, floor(t / E) * E / R)     (rises once per epoch, R / E equal steps)
    shape:           linear, per_epoch: p;   cosine: (1 - cos(pi p)) / 2;   constant: 1

    alpha(t)    = alpha_max * shape(p)
    fraction(t) = start + (end - start) * shape(p)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SCHEDULES = ("linear", "cosine", "constant")
FRACTION_SCHEDULES = ("constant", "linear", "cosine", "per_epoch")

# Subset streams: one per direction, so image rows and caption rows get independent draws.
IMAGE_ROWS, TEXT_ROWS = 0, 1


def _non_negative_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")


def _unit_interval(name: str, value) -> None:
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")


def ramp_shape(kind: str, step: int, ramp_steps: int, steps_per_epoch: int | None = None) -> float:
    """shape(p(step)) in [0, 1] for a ramp of `kind` (see the module docstring)."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if kind == "constant" or ramp_steps == 0:
        return 1.0
    if kind == "per_epoch":
        step = (step // steps_per_epoch) * steps_per_epoch
    progress = min(1.0, step / ramp_steps)
    if kind == "cosine":
        return 0.5 * (1.0 - math.cos(math.pi * progress))
    return progress


@dataclass(frozen=True)
class AlphaSchedule:
    """alpha as a function of the optimizer step: alpha_max * shape(p) (module docstring)."""

    kind: str = "linear"
    alpha_max: float = 0.0
    ramp_steps: int = 0

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.kind!r}")
        _unit_interval("alpha_max", self.alpha_max)
        _non_negative_int("ramp_steps", self.ramp_steps)

    def __call__(self, step: int) -> float:
        return float(self.alpha_max) * ramp_shape(self.kind, step, self.ramp_steps)


@dataclass(frozen=True)
class FractionSchedule:
    """The soft fraction as a function of the optimizer step: start + (end - start) * shape(p).

    "constant" is `end` at every step. "per_epoch" needs `steps_per_epoch` and grows in
    ramp_steps / steps_per_epoch equal steps, one at each epoch start.
    """

    kind: str = "constant"
    start: float = 1.0
    end: float = 1.0
    ramp_steps: int = 0
    steps_per_epoch: int | None = None

    def __post_init__(self):
        if self.kind not in FRACTION_SCHEDULES:
            raise ValueError(f"soft_fraction_schedule must be one of {FRACTION_SCHEDULES}, got {self.kind!r}")
        _unit_interval("soft_fraction", self.end)  # the end fraction
        _unit_interval("soft_fraction_start", self.start)
        _non_negative_int("soft_fraction_ramp_steps", self.ramp_steps)
        if self.kind == "per_epoch":
            spe = self.steps_per_epoch
            if isinstance(spe, bool) or not isinstance(spe, int) or spe < 1:
                raise ValueError(f"soft_fraction_schedule 'per_epoch' needs steps_per_epoch >= 1, got {spe!r}")

    @classmethod
    def seed_paper(cls, steps_per_epoch: int) -> "FractionSchedule":
        """The paper's setting: 10% of the batch in the first epoch, 10% more each epoch, all from the 10th."""
        return cls("per_epoch", 0.1, 1.0, 9 * steps_per_epoch, steps_per_epoch)

    def __call__(self, step: int) -> float:
        shape = ramp_shape(self.kind, step, self.ramp_steps, self.steps_per_epoch)
        return float(self.start + (self.end - self.start) * shape)


@dataclass(frozen=True)
class SoftSubset:
    """Which rows get the soft target: exactly round(fraction * n) of them, drawn at random.

    `fraction` is a number or a FractionSchedule of the step. Each draw uses its own
    generator seeded from (seed, rank, step, stream), so draws are reproducible,
    independent across ranks and directions, and need no state beyond the step counter.
    """

    fraction: float | FractionSchedule = 1.0
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.fraction, FractionSchedule):
            _unit_interval("soft_fraction", self.fraction)

    def fraction_at(self, step: int) -> float:
        if isinstance(self.fraction, FractionSchedule):
            return self.fraction(step)
        return float(self.fraction)

    def size(self, n: int, step: int = 0) -> int:
        return int(round(self.fraction_at(step) * n))

    def mask(self, n: int, step: int, stream: int = IMAGE_ROWS, rank: int = 0) -> torch.Tensor:
        """A (n,) bool CPU tensor with exactly size(n, step) True entries."""
        k = self.size(n, step)
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
