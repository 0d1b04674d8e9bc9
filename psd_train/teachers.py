"""Teacher models for PSD: where the soft targets' embeddings come from.

    python -m psd_train --psd-alpha-max 0.5 --psd-teacher ema --psd-ema-momentum 0.99 ...

A teacher only produces embeddings; PSDLoss turns them into targets. A teacher model's
features reach the loss beside the student's (psd_train.feed), with or without
--accum-freq; it runs under no_grad, in eval mode.

    self        no model: PSDLoss uses the student's own embeddings, detached
                (with --psd-teacher-scale, at a fixed scale s~ instead of the student's;
                with --siglip and --psd-teacher-bias, at a fixed bias b~ too)
    ema         a copy updated after every optimizer step: t <- m t + (1 - m) s
    prev_epoch  a copy refreshed at the start of every epoch e >= 1 (the student as it
                ended epoch e - 1); epoch 0 has no previous epoch and uses self
    distill     a frozen model: open_clip's --distill-model / --distill-pretrained, built
                here (open_clip_train's own distillation path refuses --accum-freq > 1)
"""
from __future__ import annotations

import copy
import math
import pickle

import torch
from torch import nn

from psd_train.checkpoint import CheckpointError, refused


class TeacherView(nn.Module):
    """Calls a CLIP model and returns only what the PSD loss reads from a teacher.

    Its features; its logit_scale unless --psd-teacher-scale fixes the teacher scale (the loss
    then falls back to the fixed one); its logit_bias only for the sigmoid loss (--siglip),
    unless --psd-teacher-bias fixes it: the softmax loss has no use for a bias.
    """

    def __init__(self, model: nn.Module, keep_scale: bool, keep_bias: bool = False):
        super().__init__()
        self.model = model
        self.keep_scale = keep_scale
        self.keep_bias = keep_bias

    def forward(self, images, texts):
        out = self.model(images, texts)
        kept = {"image_features": out["image_features"], "text_features": out["text_features"]}
        if self.keep_scale:
            kept["logit_scale"] = out["logit_scale"]
        if self.keep_bias and out.get("logit_bias") is not None:
            kept["logit_bias"] = out["logit_bias"]
        return kept


class Teacher:
    """Owns the teacher model (if any) and updates it at the right moments."""

    def __init__(self, kind: str, ema_momentum: float = 0.99, fixed_scale: bool = False,
                 distill_model: nn.Module | None = None, keep_bias: bool = False):
        if kind not in ("self", "ema", "prev_epoch", "distill"):
            raise ValueError(f"teacher kind must be self, ema, prev_epoch or distill, got {kind!r}")
        if (kind == "distill") != (distill_model is not None):
            raise ValueError("distill_model is needed for the distill teacher, and only for it")
        self.kind = kind
        self.momentum = ema_momentum
        self.keep_scale = not fixed_scale
        self.keep_bias = keep_bias  # the sigmoid loss's teacher bias travels with its features
        self.model: nn.Module | None = distill_model

    def _copy_of(self, student: nn.Module) -> nn.Module:
        model = copy.deepcopy(student)
        model.requires_grad_(False)
        return model.eval()

    def for_epoch(self, student: nn.Module, epoch: int) -> nn.Module | None:
        """The teacher model of `epoch`, or None (the student itself)."""
        if self.kind == "self":
            return None
        if self.kind == "distill":
            return TeacherView(self.model, self.keep_scale, self.keep_bias)
        if self.kind == "prev_epoch":
            if epoch == 0:
                return None
            if self.model is None:
                self.model = self._copy_of(student)
            else:
                self.model.load_state_dict(student.state_dict())
            return TeacherView(self.model, self.keep_scale, self.keep_bias)
        if self.model is None:  # ema: starts as the student when training starts
            self.model = self._copy_of(student)
        return TeacherView(self.model, self.keep_scale, self.keep_bias)

    @torch.no_grad()
    def after_step(self, student: nn.Module) -> None:
        """EMA: t <- m t + (1 - m) s for every floating tensor; other buffers are copied."""
        if self.kind != "ema" or self.model is None:
            return
        student_state = student.state_dict()
        for name, t in self.model.state_dict().items():
            s = student_state[name]
            if t.is_floating_point():
                t.lerp_(s.to(t.dtype), 1.0 - self.momentum)
            else:
                t.copy_(s)

    def state_dict(self) -> dict:
        """What a resumed run needs: the EMA weights (other teachers are rebuilt from the student)."""
        weights = self.model.state_dict() if (self.kind == "ema" and self.model is not None) else None
        return {"kind": self.kind, "momentum": self.momentum, "weights": weights}

    def load_state_dict(self, state: dict, student: nn.Module) -> None:
        if state.get("kind") != self.kind:
            raise CheckpointError(f"the checkpoint's teacher is {state.get('kind')!r}, this run's is {self.kind!r}")
        if state.get("weights") is not None:
            self.model = self._copy_of(student)
            self.model.load_state_dict(state["weights"])


# what open_clip_train passes to create_model_and_transforms for --siglip (a model with a logit bias)
SIGLIP_MODEL_KWARGS = {"init_logit_scale": math.log(10), "init_logit_bias": -10}


def load_distill_model(name: str, pretrained: str, args) -> nn.Module:
    """The frozen --distill-model, built as open_clip_train 3.3.0 builds it (same device and precision;
    with --siglip, as it builds a SigLIP student, so a SigLIP checkpoint's logit bias loads), with the
    checkpoint loaded by torch.load(weights_only=True)."""
    import open_clip

    model_kwargs = SIGLIP_MODEL_KWARGS if getattr(args, "siglip", False) else {}
    try:
        model, _, _ = open_clip.create_model_and_transforms(name, pretrained, device=args.device,
                                                            precision=args.precision, output_dict=True,
                                                            cache_dir=args.cache_dir, weights_only=True,
                                                            **model_kwargs)
    except pickle.UnpicklingError as exc:
        if not str(exc).startswith("Weights only load failed"):
            raise
        raise refused(f"--distill-pretrained {pretrained}", exc) from None
    model.requires_grad_(False)
    return model.eval()
