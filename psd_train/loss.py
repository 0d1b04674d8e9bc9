"""PSDLoss from the --psd-* flags: the alpha schedule and the teacher options.

alpha counts optimizer steps t, with E = steps per epoch = open_clip_train's batches per
epoch // --accum-freq:

    alpha(t) = alpha_max * shape(min(1, t / R)),   R: --psd-ramp-steps, or --psd-ramp-epochs * E (default: all of --epochs)

The loss is built with step_per_forward=False: psd_train advances it once per optimizer
step, so with --accum-freq N all N loss calls of a step use the same alpha and soft subset.
"""
from __future__ import annotations

import argparse

from psd_kernels import PSDLoss


def ramp_steps(steps: int | None, epochs: float | None, default: int, steps_per_epoch: int) -> int:
    """A ramp given in steps, or in epochs (times the steps per epoch), else `default` steps."""
    if steps is not None:
        return steps
    if epochs is not None:
        return int(round(epochs * steps_per_epoch))
    return default


def make_loss(psd: argparse.Namespace, args: argparse.Namespace, steps_per_epoch: int) -> PSDLoss:
    """PSDLoss for open_clip_train's parsed args, advanced by the caller once per optimizer step."""
    alpha_ramp = ramp_steps(psd.psd_ramp_steps, psd.psd_ramp_epochs, args.epochs * steps_per_epoch, steps_per_epoch)
    return PSDLoss(alpha_max=psd.psd_alpha_max, schedule=psd.psd_schedule, ramp_steps=alpha_ramp,
                   soft_fraction=psd.psd_soft_fraction, step_per_forward=False, seed=args.seed,
                   teacher_scale=psd.psd_teacher_scale, teacher_mode=psd.psd_teacher_mode, backend=psd.psd_backend,
                   local_loss=args.local_loss, gather_with_grad=args.gather_with_grad, rank=args.rank,
                   world_size=args.world_size)
