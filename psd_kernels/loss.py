"""PSDLoss: a drop-in for open_clip's ClipLoss with progressive self-distillation.

    loss_fn = PSDLoss(alpha_max=0.5, schedule="linear", ramp_steps=10_000, soft_fraction=0.5)
    loss = loss_fn(image_features, text_features, logit_scale.exp())

It owns the alpha schedule and its step counter: every forward in training mode
advances the step once, and state_dict() saves it (as extra state), so a resumed
run draws the same alpha and the same soft subsets. With alpha_max = 0 it is
open_clip's ClipLoss, computed by a fused backend when one is built.

With world_size > 1 it is the distributed loss of psd_kernels.distributed (open_clip's
local_loss / gather_with_grad semantics over `process_group`, default the world): each
rank draws the soft subset of its own rows from its own stream (seed, rank, step,
direction), so no two ranks share a draw; global mode all-gathers those per-row alphas.
"""
from __future__ import annotations

import torch
from torch import nn

from psd_kernels import validation
from psd_kernels.distributed import group_rank_size, psd_clip_loss_distributed
from psd_kernels.functional import psd_clip_loss, psd_loss
from psd_kernels.schedule import IMAGE_ROWS, TEXT_ROWS, AlphaSchedule, SoftSubset

TEACHER_MODES = ("cross", "within_modality")


class PSDLoss(nn.Module):
    """Symmetric PSD loss with open_clip's ClipLoss interface.

    Args:
        alpha_max: the largest mixing weight, reached after `ramp_steps` (0 = plain CLIP).
        schedule: "linear", "cosine" or "constant" ramp of alpha (psd_kernels.schedule).
        ramp_steps: steps to reach alpha_max (0: alpha_max from the first step).
        soft_fraction: fraction of rows in each direction that get the soft target.
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
                 soft_fraction: float = 1.0, seed: int = 0, teacher_scale: float | None = None,
                 teacher_mode: str = "cross", backend: str = "auto", local_loss: bool = False,
                 gather_with_grad: bool = False, cache_labels: bool = False, rank: int = 0,
                 world_size: int = 1, process_group=None):
        super().__init__()
        if teacher_mode not in TEACHER_MODES:
            raise ValueError(f"teacher_mode must be one of {TEACHER_MODES}, got {teacher_mode!r}")
        if teacher_scale is not None and not teacher_scale > 0:
            raise ValueError(f"teacher_scale must be positive, got {teacher_scale!r}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need world_size >= 1 and 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.schedule = AlphaSchedule(schedule, alpha_max, ramp_steps)
        self.subset = SoftSubset(soft_fraction, seed)
        self.teacher_scale = teacher_scale
        self.teacher_mode = teacher_mode
        self.backend = backend
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.cache_labels = cache_labels
        self.rank = rank
        self.world_size = world_size
        self.process_group = process_group
        self.step = 0

    # -- the schedule ---------------------------------------------------------------------
    def current_alpha(self) -> float:
        """alpha at the current step (before this step's forward advances it)."""
        return self.schedule(self.step)

    def _row_alpha(self, alpha: float, rows: int, stream: int, like) -> torch.Tensor:
        """alpha on this step's soft subset, 0 elsewhere, in the loss's accumulation dtype."""
        mask = self.subset.mask(rows, self.step, stream, self.rank)
        return (mask.to(validation.compute_dtype(like.dtype)) * alpha).to(like.device)

    def get_extra_state(self) -> dict:
        return {"step": self.step, "schedule": self.schedule.kind, "alpha_max": self.schedule.alpha_max,
                "ramp_steps": self.schedule.ramp_steps, "soft_fraction": self.subset.fraction,
                "seed": self.subset.seed}

    def set_extra_state(self, state: dict) -> None:
        step = state.get("step") if isinstance(state, dict) else None
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"PSDLoss state must hold a non-negative int 'step', got {state!r}")
        self.step = step

    # -- forward --------------------------------------------------------------------------
    def forward(self, image_features, text_features, logit_scale, logit_bias=None, output_dict=False,
                teacher_image_features=None, teacher_text_features=None, teacher_logit_scale=None,
                dist_image_features=None, dist_text_features=None, dist_logit_scale=None):
        teacher_image = _one_of("teacher_image_features", teacher_image_features,
                                "dist_image_features", dist_image_features)
        teacher_text = _one_of("teacher_text_features", teacher_text_features,
                               "dist_text_features", dist_text_features)
        teacher_scale = _one_of("teacher_logit_scale", teacher_logit_scale, "dist_logit_scale", dist_logit_scale)
        if teacher_scale is None:
            teacher_scale = self.teacher_scale
        if logit_bias is not None and torch.as_tensor(logit_bias).numel() != 1:
            raise ValueError("logit_bias must be a scalar: a per-logit bias would change the softmax, "
                             "which this loss does not model")
        if self.world_size > 1:
            loss = self._distributed(image_features, text_features, logit_scale, teacher_image, teacher_text,
                                     teacher_scale)
        else:
            loss = self._single_process(image_features, text_features, logit_scale, teacher_image, teacher_text,
                                        teacher_scale)
        if self.training:
            self.step += 1
        return {"contrastive_loss": loss} if output_dict else loss

    def _single_process(self, image_features, text_features, logit_scale, teacher_image, teacher_text,
                        teacher_scale):
        image_features = validation.matrix("image_features", image_features)
        text_features = validation.matrix("text_features", text_features)
        alpha = self.current_alpha()
        rows = image_features.shape[0]
        alpha_image = self._row_alpha(alpha, rows, IMAGE_ROWS, image_features)
        alpha_text = self._row_alpha(alpha, rows, TEXT_ROWS, image_features)
        if alpha == 0.0:
            # Q is one-hot, so the teacher is unused; its shapes are still checked now, not first at alpha > 0.
            validation.teacher_pair(teacher_image, teacher_text, image_features, text_features,
                                    names=("image_features", "text_features", "teacher_image_features",
                                           "teacher_text_features"))
            teacher_image = teacher_text = teacher_scale = None
        if self.teacher_mode == "cross":
            return psd_clip_loss(image_features, text_features, logit_scale, teacher_image=teacher_image,
                                 teacher_text=teacher_text, teacher_scale=teacher_scale,
                                 alpha_image=alpha_image, alpha_text=alpha_text, backend=self.backend)
        return self._within_modality(image_features, text_features, logit_scale, teacher_image,
                                     teacher_text, teacher_scale, alpha_image, alpha_text)

    def _distributed(self, image, text, logit_scale, teacher_image, teacher_text, teacher_scale):
        """The loss across the process group; a malformed input is rejected inside the distributed
        call, after every rank joined its handshake, so the peers raise too instead of waiting."""
        rank, world = group_rank_size(self.process_group)
        if world == 1:
            raise RuntimeError(f"PSDLoss(world_size={self.world_size}) needs torch.distributed initialised "
                               "(e.g. torchrun and torch.distributed.init_process_group) before forward")
        if (rank, world) != (self.rank, self.world_size):
            raise ValueError(f"PSDLoss was built with rank={self.rank}, world_size={self.world_size} but this "
                             f"process is rank {rank} of {world} in its process group")
        alpha = self.current_alpha()
        valid = isinstance(image, torch.Tensor) and image.dim() == 2
        like = image if valid else torch.zeros(0)
        rows = image.shape[0] if valid else 0
        # with alpha = 0 every rank's rows are one-hot, so no rank gathers the teacher (distributed.py)
        return psd_clip_loss_distributed(
            image, text, logit_scale, teacher_image=teacher_image, teacher_text=teacher_text,
            teacher_scale=teacher_scale, alpha_image=self._row_alpha(alpha, rows, IMAGE_ROWS, like),
            alpha_text=self._row_alpha(alpha, rows, TEXT_ROWS, like), teacher_mode=self.teacher_mode,
            local_loss=self.local_loss, gather_with_grad=self.gather_with_grad,
            process_group=self.process_group, backend=self.backend)

    def _within_modality(self, image, text, logit_scale, teacher_image, teacher_text, teacher_scale,
                         alpha_image, alpha_text):
        """Image rows learn caption-caption targets, caption rows image-image targets."""
        teacher_image = image.detach() if teacher_image is None else teacher_image
        teacher_text = text.detach() if teacher_text is None else teacher_text
        image_rows = psd_loss(image, text, logit_scale, teacher_x=teacher_text, teacher_y=teacher_text,
                              teacher_scale=teacher_scale, alpha=alpha_image, backend=self.backend)
        text_rows = psd_loss(text, image, logit_scale, teacher_x=teacher_image, teacher_y=teacher_image,
                             teacher_scale=teacher_scale, alpha=alpha_text, backend=self.backend)
        return 0.5 * (image_rows + text_rows)


def _one_of(name, value, alias, alias_value):
    if value is not None and alias_value is not None:
        raise ValueError(f"give {name} or its open_clip name {alias}, not both")
    return alias_value if value is None else value
