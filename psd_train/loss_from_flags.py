"""The PSD loss from the --psd-* flags: the alpha schedule, the soft-fraction schedule, the teacher options.

With open_clip_train's --siglip it is PSDSigLipLoss (the sigmoid loss, with --loss-dist-impl as
its dist_impl and --psd-teacher-bias as its fixed teacher bias), else PSDLoss.

Both schedules count optimizer steps t (docs/schedules.md), with E = steps per epoch =
open_clip_train's batches per epoch // --accum-freq:

    alpha(t)    = alpha_max * shape(min(1, t / R_alpha))
    fraction(t) = start + (end - start) * shape(p(t)),   p = min(1, t / R_frac), per_epoch: min(1, floor(t / E) * E / R_frac)

R_alpha: --psd-ramp-steps, or --psd-ramp-epochs * E (default: all of --epochs).
R_frac: --psd-soft-fraction-ramp-steps, or --psd-soft-fraction-ramp-epochs * E (default: R_alpha).
--psd-soft-fraction-preset seed: start 0.1, end 1, per_epoch over 9 epochs (0.1 more each epoch).

The loss is built with step_per_forward=False: psd_train advances it once per optimizer
step, so with --accum-freq N all N loss calls of a step use the same alpha and soft subset.
"""
from __future__ import annotations

import argparse

from psd_kernels import BACKENDS, PSDLoss, PSDSigLipLoss
from psd_kernels.backends import BackendUnavailable, load_backend, resolve_backend
from psd_train.args import FRACTION_PRESETS


def ramp_steps(steps: int | None, epochs: float | None, default: int, steps_per_epoch: int) -> int:
    """A ramp given in steps, or in epochs (times the steps per epoch), else `default` steps."""
    if steps is not None:
        return steps
    if epochs is not None:
        return int(round(epochs * steps_per_epoch))
    return default


def soft_fraction_options(psd: argparse.Namespace, alpha_ramp: int, steps_per_epoch: int) -> dict:
    """PSDLoss's soft_fraction, soft_fraction_start, soft_fraction_schedule and soft_fraction_ramp_steps."""
    if psd.psd_soft_fraction_preset is not None:
        start, end, schedule, epochs = FRACTION_PRESETS[psd.psd_soft_fraction_preset]
        ramp = epochs * steps_per_epoch
    else:
        end = 1.0 if psd.psd_soft_fraction is None else psd.psd_soft_fraction
        start = psd.psd_soft_fraction_start
        schedule = psd.psd_soft_fraction_schedule or ("constant" if start is None else "linear")
        ramp = ramp_steps(psd.psd_soft_fraction_ramp_steps, psd.psd_soft_fraction_ramp_epochs, alpha_ramp,
                          steps_per_epoch)
    return {"soft_fraction": end, "soft_fraction_start": start, "soft_fraction_schedule": schedule,
            "soft_fraction_ramp_steps": ramp}


def make_loss(psd: argparse.Namespace, args: argparse.Namespace, steps_per_epoch: int) -> PSDLoss | PSDSigLipLoss:
    """The PSD loss for open_clip_train's parsed args, advanced by the caller once per optimizer step."""
    alpha_ramp = ramp_steps(psd.psd_ramp_steps, psd.psd_ramp_epochs, args.epochs * steps_per_epoch, steps_per_epoch)
    common = dict(alpha_max=psd.psd_alpha_max, schedule=psd.psd_schedule, ramp_steps=alpha_ramp,
                  **soft_fraction_options(psd, alpha_ramp, steps_per_epoch), steps_per_epoch=steps_per_epoch,
                  step_per_forward=False, seed=args.seed, teacher_scale=psd.psd_teacher_scale,
                  backend=psd.psd_backend, rank=args.rank, world_size=args.world_size)
    if args.siglip:
        return PSDSigLipLoss(dist_impl=args.loss_dist_impl, teacher_bias=psd.psd_teacher_bias, **common)
    return PSDLoss(teacher_mode=psd.psd_teacher_mode, local_loss=args.local_loss,
                   gather_with_grad=args.gather_with_grad, **common)


def backend_in_use(loss: PSDLoss | PSDSigLipLoss, features) -> str:
    """The backend name (reference, cpp, triton) that `loss` runs on features of this device and dtype."""
    op = "siglip_rows" if isinstance(loss, PSDSigLipLoss) else "psd_rows"
    module = resolve_backend(loss.backend, features.device, features.dtype, op)
    for name in BACKENDS:
        try:
            if load_backend(name) is module:
                return name
        except BackendUnavailable:
            continue
    return module.__name__
