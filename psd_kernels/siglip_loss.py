"""PSDSigLipLoss: a drop-in for open_clip's SigLipLoss with progressive self-distillation.

    loss_fn = PSDSigLipLoss(rank=rank, world_size=world_size, alpha_max=0.5, ramp_steps=10_000)
    loss = loss_fn(image_features, text_features, logit_scale.exp(), logit_bias)

The loss (docs/siglip_loss.md): every image row i against every text column j,
softplus(l_ij) - q_ij l_ij with l_ij = s <x_i, y_j> + b and the soft target
q_ij = (1 - a_ij) [j = c_i] + a_ij sigmoid(t_ij), a_ij = (alpha_i + alpha_j) / 2 from the
images' and the texts' soft subsets at this step's alpha. With alpha_max = 0 it is
open_clip's SigLipLoss, in value and in every gradient, for each of its dist_impl values.

Across ranks: the texts of every rank are all-gathered with gradient (one exchange however
many ranks; the backward returns each rank its texts' gradient summed over ranks), not
passed round as b x b logit blocks: the memory per rank grows with the world size by the
gathered texts and their gradient only (O(W b D)), never by logit blocks. dist_impl is
accepted for open_clip compatibility ("bidir", "shift", "reduce", "gather"); each gives
the same losses and gradients, and so does this loss.

The schedules, the step counter in state_dict and the soft subsets are PSDLoss's
(psd_kernels.loss.ScheduledLoss, docs/schedules.md).
"""
from __future__ import annotations

import functools

from psd_kernels import assembly
from psd_kernels.distributed import siglip_loss_in_group
from psd_kernels.loss import ScheduledLoss, teacher_inputs
from psd_kernels.schedule import IMAGE_ROWS, TEXT_ROWS

DIST_IMPLS = ("bidir", "shift", "reduce", "gather")


class PSDSigLipLoss(ScheduledLoss):
    """Sigmoid PSD loss with open_clip's SigLipLoss interface.

    Args:
        cache_labels, rank, world_size, dist_impl: open_clip SigLipLoss's (dist_impl None is
            its default, "bidir"); cache_labels has nothing to cache here.
        alpha_max, schedule, ramp_steps, soft_fraction, soft_fraction_start,
        soft_fraction_schedule, soft_fraction_ramp_steps, steps_per_epoch, step_per_forward,
        seed, teacher_scale, backend, process_group: as psd_kernels.PSDLoss.
        teacher_bias: a fixed teacher bias b~ used when the caller passes no
            teacher_logit_bias; None: the student's bias, detached.

    forward(image_features, text_features, logit_scale, logit_bias=None, output_dict=False, ...)
    takes the teacher as teacher_image_features / teacher_text_features / teacher_logit_scale /
    teacher_logit_bias or under DistillClipLoss's names dist_image_features /
    dist_text_features / dist_logit_scale / dist_logit_bias. Teacher tensors get no gradient.
    """

    def __init__(self, cache_labels: bool = False, rank: int = 0, world_size: int = 1, dist_impl: str | None = None,
                 *, alpha_max: float = 0.0, schedule: str = "linear", ramp_steps: int = 0, soft_fraction: float = 1.0,
                 soft_fraction_start: float | None = None, soft_fraction_schedule: str = "constant",
                 soft_fraction_ramp_steps: int = 0, steps_per_epoch: int | None = None,
                 step_per_forward: bool = True, seed: int = 0, teacher_scale: float | None = None,
                 teacher_bias: float | None = None, backend: str = "auto", process_group=None):
        super().__init__(alpha_max, schedule, ramp_steps, soft_fraction, soft_fraction_start, soft_fraction_schedule,
                         soft_fraction_ramp_steps, steps_per_epoch, step_per_forward, seed, teacher_scale, backend,
                         rank, world_size, process_group)
        self.dist_impl = _checked_dist_impl(dist_impl)
        if teacher_bias is not None and not isinstance(teacher_bias, (int, float)):
            raise TypeError(f"teacher_bias must be a float or None, got {type(teacher_bias).__name__}")
        self.teacher_bias, self.cache_labels = teacher_bias, cache_labels

    def forward(self, image_features, text_features, logit_scale, logit_bias=None, output_dict=False,
                teacher_image_features=None, teacher_text_features=None, teacher_logit_scale=None,
                teacher_logit_bias=None, dist_image_features=None, dist_text_features=None, dist_logit_scale=None,
                dist_logit_bias=None):
        teacher_image, teacher_text, teacher_scale, teacher_bias = teacher_inputs(
            image_features=(teacher_image_features, dist_image_features),
            text_features=(teacher_text_features, dist_text_features),
            logit_scale=(teacher_logit_scale, dist_logit_scale), logit_bias=(teacher_logit_bias, dist_logit_bias))
        teacher_scale = self.teacher_scale if teacher_scale is None else teacher_scale
        teacher_bias = self.teacher_bias if teacher_bias is None else teacher_bias
        rank, world = self._group()
        alpha = self.current_alpha()
        args = (image_features, text_features, logit_scale, logit_bias, teacher_image, teacher_text, teacher_scale,
                teacher_bias, functools.partial(self._row_alpha, alpha, IMAGE_ROWS),
                functools.partial(self._row_alpha, alpha, TEXT_ROWS))
        if world == 1:  # the path of psd_siglip_loss
            loss = assembly.siglip_batch_loss(*args, reduction="mean", backend=self.backend, check_finite=False)
        else:
            loss = siglip_loss_in_group(*args, self.process_group, rank, world, backend=self.backend)
        self._end_step()
        return {"contrastive_loss": loss} if output_dict else loss


def _checked_dist_impl(dist_impl: str | None) -> str:
    """open_clip SigLipLoss's dist_impl (None: its default, "bidir"), checked."""
    dist_impl = dist_impl or "bidir"
    if dist_impl not in DIST_IMPLS:
        raise ValueError(f"dist_impl must be one of {DIST_IMPLS} (or None: 'bidir'), got {dist_impl!r}")
    return dist_impl
