"""PSDLoss: a drop-in for open_clip's ClipLoss with progressive self-distillation.

    loss_fn = PSDLoss(alpha_max=0.5, schedule="linear", ramp_steps=10_000, soft_fraction=0.5)
    loss = loss_fn(image_features, text_features, logit_scale.exp())

It owns the two PSD schedules (docs/schedules.md) and their step counter: alpha ramps
towards alpha_max, and the soft fraction (the share of each direction's rows that get
the soft target) follows its own schedule, e.g. the seed paper's 10% growing by 10% per
epoch. Every forward in training mode advances the step once (or, with
step_per_forward=False, every advance() call: gradient accumulation makes several loss
calls per optimizer step). state_dict() saves the step and both schedules, so a resumed
run draws the same alpha and the same soft subsets. With alpha_max = 0 it is open_clip's
ClipLoss, computed by a fused backend when one is built.

With one process the forward takes psd_clip_loss's path (psd_kernels.assembly); with more,
psd_kernels.distributed's loss over `process_group` (handshake, gathers, then the same
assembly). Each rank draws the soft subset of
its own rows from its own stream (seed, rank, step, direction), so no two ranks share a
draw; global mode all-gathers those per-row alphas. Per call: the inputs are validated
once, and the value checks read the device once (none at a step where alpha is 0 and
the scale is a float).
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from psd_kernels import assembly, validation
from psd_kernels.assembly import check_teacher_mode
from psd_kernels.distributed import clip_loss_in_group, group_rank_size
from psd_kernels.schedule import IMAGE_ROWS, TEXT_ROWS, AlphaSchedule, FractionSchedule, SoftSubset


class ScheduledLoss(nn.Module):
    """What every PSD loss module shares: the alpha and soft-fraction schedules, the step counter
    saved in state_dict, each rank's soft subset, and its place in the process group. The
    arguments are PSDLoss's (below)."""

    def __init__(self, alpha_max: float, schedule: str, ramp_steps: int, soft_fraction: float,
                 soft_fraction_start: float | None, soft_fraction_schedule: str, soft_fraction_ramp_steps: int,
                 steps_per_epoch: int | None, step_per_forward: bool, seed: int, teacher_scale: float | None,
                 backend: str, rank: int, world_size: int, process_group):
        super().__init__()
        if teacher_scale is not None and not teacher_scale > 0:
            raise ValueError(f"teacher_scale must be positive, got {teacher_scale!r}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need world_size >= 1 and 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.schedule = AlphaSchedule(schedule, alpha_max, ramp_steps)
        start = soft_fraction if soft_fraction_start is None else soft_fraction_start
        self.fraction_schedule = FractionSchedule(soft_fraction_schedule, start, soft_fraction,
                                                  soft_fraction_ramp_steps, steps_per_epoch)
        self.subset = SoftSubset(self.fraction_schedule, seed)
        self.step_per_forward = step_per_forward
        self.teacher_scale = teacher_scale
        self.backend = backend
        self.rank = rank
        self.world_size = world_size
        self.process_group = process_group
        self.step = 0

    # -- the schedules ---------------------------------------------------------------------
    def current_alpha(self) -> float:
        """alpha at the current step (before this step's forward advances it)."""
        return self.schedule(self.step)

    def current_soft_fraction(self) -> float:
        """The soft fraction at the current step."""
        return self.fraction_schedule(self.step)

    def advance(self, steps: int = 1) -> None:
        """Move both schedules on by `steps` optimizer steps (for step_per_forward=False)."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be a non-negative int, got {steps!r}")
        self.step += steps

    def _row_alpha(self, alpha: float, stream: int, rows: int, like: torch.Tensor):
        """alpha on this step's soft subset of `rows` validated rows, 0 elsewhere (a float 0 when no
        row is soft)."""
        if alpha == 0.0 or self.subset.size(rows, self.step) == 0:
            return 0.0
        mask = self.subset.mask(rows, self.step, stream, self.rank)
        return (mask.to(validation.compute_dtype(like.dtype)) * alpha).to(like.device)

    def get_extra_state(self) -> dict:
        fraction = self.fraction_schedule
        return {"step": self.step, "schedule": self.schedule.kind, "alpha_max": self.schedule.alpha_max,
                "ramp_steps": self.schedule.ramp_steps, "soft_fraction": fraction.end,
                "soft_fraction_start": fraction.start, "soft_fraction_schedule": fraction.kind,
                "soft_fraction_ramp_steps": fraction.ramp_steps, "steps_per_epoch": fraction.steps_per_epoch,
                "seed": self.subset.seed}

    def set_extra_state(self, state: dict) -> None:
        step = state.get("step") if isinstance(state, dict) else None
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"{type(self).__name__} state must hold a non-negative int 'step', got {state!r}")
        self.step = step

    def _end_step(self) -> None:
        """A training-mode forward is one step unless the caller advances the schedules itself."""
        if self.training and self.step_per_forward:
            self.step += 1

    def _group(self) -> tuple[int, int]:
        """(rank, world size) of this loss: (0, 1) for world_size 1, else checked against the group."""
        if self.world_size == 1:
            return 0, 1
        rank, world = group_rank_size(self.process_group)
        if world == 1:
            raise RuntimeError(f"{type(self).__name__}(world_size={self.world_size}) needs torch.distributed initialised "
                               "(e.g. torchrun and torch.distributed.init_process_group) before forward")
        if (rank, world) != (self.rank, self.world_size):
            raise ValueError(f"{type(self).__name__} was built with rank={self.rank}, world_size={self.world_size} but this "
                             f"process is rank {rank} of {world} in its process group")
        return rank, world


class PSDLoss(ScheduledLoss):
    """Symmetric PSD loss with open_clip's ClipLoss interface.

    Args:
        alpha_max: the largest mixing weight, reached after `ramp_steps` (0 = plain CLIP).
        schedule: "linear", "cosine" or "constant" ramp of alpha (psd_kernels.schedule).
        ramp_steps: steps to reach alpha_max (0: alpha_max from the first step).
        soft_fraction: fraction of rows in each direction that get the soft target; with a
            soft-fraction ramp, the fraction it ends at.
        soft_fraction_start: the fraction at step 0 (None: soft_fraction, no ramp).
        soft_fraction_schedule: "constant", "linear", "cosine" or "per_epoch" (one equal
            rise at each epoch start; needs steps_per_epoch).
        soft_fraction_ramp_steps: steps from soft_fraction_start to soft_fraction.
        steps_per_epoch: optimizer steps per epoch (for "per_epoch").
        step_per_forward: True: each training-mode forward is one step. False: the caller
            calls advance() once per optimizer step (gradient accumulation).
        seed: seeds the soft-subset draws (together with the step, rank and direction).
        teacher_scale: a fixed teacher scale s~ (e.g. a lower temperature) used when the
            caller passes no teacher_logit_scale; None: the student's scale, detached.
        teacher_mode: "cross" (the teacher's image-text matrix seen from both sides) or
            "within_modality" (SoftCLIP-style: image rows get caption-caption targets, caption
            rows get image-image targets, from the teacher's features or the student's own).
        backend: "auto", "reference", "cpp" or "triton" (psd_kernels.psd_loss).
        local_loss, gather_with_grad, rank, world_size: open_clip's distributed options
            (psd_kernels.distributed states the losses and gradients each gives).
        process_group: the group whose ranks share the batch when world_size > 1 (None: the
            default group); rank and world_size must be this process's rank in it and its size.
        cache_labels: accepted for ClipLoss compatibility; positives are index ranges built
            per call (O(B) integers), so there is nothing worth caching.

    forward(image_features, text_features, logit_scale, logit_bias=None, output_dict=False, ...)
    takes the teacher as teacher_image_features / teacher_text_features / teacher_logit_scale
    or under open_clip's DistillClipLoss names dist_image_features / dist_text_features /
    dist_logit_scale (open_clip_train's --distill path). Teacher tensors get no gradient.
    A scalar logit_bias is accepted and has no effect: a constant added to every logit
    cancels in the softmax.
    """

    def __init__(self, alpha_max: float = 0.0, schedule: str = "linear", ramp_steps: int = 0,
                 soft_fraction: float = 1.0, soft_fraction_start: float | None = None,
                 soft_fraction_schedule: str = "constant", soft_fraction_ramp_steps: int = 0,
                 steps_per_epoch: int | None = None, step_per_forward: bool = True, seed: int = 0,
                 teacher_scale: float | None = None, teacher_mode: str = "cross", backend: str = "auto",
                 local_loss: bool = False, gather_with_grad: bool = False, cache_labels: bool = False,
                 rank: int = 0, world_size: int = 1, process_group=None):
        check_teacher_mode(teacher_mode)
        super().__init__(alpha_max, schedule, ramp_steps, soft_fraction, soft_fraction_start, soft_fraction_schedule,
                         soft_fraction_ramp_steps, steps_per_epoch, step_per_forward, seed, teacher_scale, backend,
                         rank, world_size, process_group)
        self.teacher_mode = teacher_mode
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.cache_labels = cache_labels

    # -- forward --------------------------------------------------------------------------
    def forward(self, image_features, text_features, logit_scale, logit_bias=None, output_dict=False,
                teacher_image_features=None, teacher_text_features=None, teacher_logit_scale=None,
                dist_image_features=None, dist_text_features=None, dist_logit_scale=None):
        teacher_image, teacher_text, teacher_scale = teacher_inputs(
            image_features=(teacher_image_features, dist_image_features),
            text_features=(teacher_text_features, dist_text_features),
            logit_scale=(teacher_logit_scale, dist_logit_scale))
        if teacher_scale is None:
            teacher_scale = self.teacher_scale
        if logit_bias is not None and torch.as_tensor(logit_bias).numel() != 1:
            raise ValueError("logit_bias must be a scalar: a per-logit bias would change the softmax, "
                             "which this loss does not model")
        rank, world = self._group()
        # alpha per row, drawn by validation once it has checked the features (rows, embeddings)
        alpha = self.current_alpha()
        args = (image_features, text_features, logit_scale, teacher_image, teacher_text, teacher_scale,
                functools.partial(self._row_alpha, alpha, IMAGE_ROWS),
                functools.partial(self._row_alpha, alpha, TEXT_ROWS), self.teacher_mode)
        if world == 1:  # the path of psd_clip_loss
            loss = assembly.symmetric_loss(*args, reduction="mean", backend=self.backend, check_finite=False)
        else:
            loss = clip_loss_in_group(*args, self.local_loss, self.gather_with_grad, self.process_group, rank,
                                      world, backend=self.backend)
        self._end_step()
        return {"contrastive_loss": loss} if output_dict else loss


def teacher_inputs(**given) -> list:
    """The teacher's inputs, each given under its name teacher_<input> or open_clip's dist_<input>:
    given maps each input (image_features, ...) to (teacher_ value, dist_ value); both is an error."""
    out = []
    for name, (value, alias_value) in given.items():
        if value is not None and alias_value is not None:
            raise ValueError(f"give teacher_{name} or its open_clip name dist_{name}, not both")
        out.append(alias_value if value is None else value)
    return out
