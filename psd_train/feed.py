"""How a teacher's features reach PSDLoss through open_clip_train's training loop.

open_clip_train's train_one_epoch hands every output of model(images, texts) to the loss by
keyword. Without accumulation it calls loss(**model(images, texts)). With --accum-freq N it
first runs the model under no_grad on each of the N micro-batches and caches every output
except logit_scale and logit_bias; then, for each micro-batch j, it runs the model again with
gradient and calls the loss on

    cat(cached_0, ..., cached_{j-1}, fresh_j, cached_{j+1}, ..., cached_{N-1})

for every cached output, with micro-batch j's fresh logit_scale, and backpropagates. So
StudentWithTeacher returns the teacher's features as dist_image_features /
dist_text_features beside the student's, and the loop caches and concatenates them row for
row like the student's. The teacher runs once per micro-batch: in the no_grad pass its
outputs are kept, and the gradient pass over the same images tensor takes them back.

The teacher's scale (and, for the sigmoid loss, its bias) is one number per optimizer step
(the teacher changes only between steps), not a per-row output the loop could concatenate,
so the loss adapter passes the last one as dist_logit_scale / dist_logit_bias (None when
--psd-teacher-scale / --psd-teacher-bias fixes it: the loss then uses its own).

The logit scale s is not a per-row output either, nor is the sigmoid loss's bias b: each of
the N loss calls of a step gets the fresh s (and b) of its micro-batch, and every call's loss
is the whole-batch loss L, so each backpropagates all of dL/ds and the step would sum N dL/ds.
The loss adapter therefore hands the loss

    s' = s.detach() + (s - s.detach()) / N        value s (s - s is exactly 0), ds'/ds = 1/N

and b' the same way, so the N calls add up to exactly dL/ds and dL/db, the one-batch
gradients, as every other parameter gets. The graph still reaches s and b in every call,
which DistributedDataParallel needs (it waits for a gradient of every parameter the forward
used).
"""
from __future__ import annotations

from collections import deque

import torch
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The CLIP model inside DistributedDataParallel (.module) and torch.compile (._orig_mod)."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


class StudentWithTeacher(nn.Module):
    """The student, returning the teacher's image and text features beside its own (module docstring)."""

    def __init__(self, student: nn.Module, teacher: nn.Module):
        super().__init__()
        self.student = student
        self._teacher = (teacher,)  # a tuple, not a submodule: model.parameters() stays the student's
        self._kept: deque = deque()  # (images, teacher outputs) of the no_grad pass, in loop order
        self.teacher_scale = self.teacher_bias = None

    @property
    def module(self) -> nn.Module:
        """What open_clip_train's unwrap_model(model) returns: the CLIP model whose logit_scale it clamps."""
        return unwrap(self.student)

    def forward(self, images, texts):
        out = self.student(images, texts)
        if torch.is_grad_enabled() and self._kept and self._kept[0][0] is images:
            teacher = self._kept.popleft()[1]
        else:
            with torch.no_grad():
                teacher = self._teacher[0](images, texts)
            if not torch.is_grad_enabled():  # the caching pass of --accum-freq
                self._kept.append((images, teacher))
        self.teacher_scale, self.teacher_bias = teacher.get("logit_scale"), teacher.get("logit_bias")
        out["dist_image_features"] = teacher["image_features"]
        out["dist_text_features"] = teacher["text_features"]
        return out

    def loss(self, loss_fn: nn.Module):
        """loss_fn with this teacher's scale added as dist_logit_scale, and its bias as dist_logit_bias
        when the teacher passes one (the sigmoid loss's teachers: psd_train.teachers.TeacherView)."""
        def loss_with_teacher_scale(**inputs):
            if self.teacher_bias is not None:
                inputs["dist_logit_bias"] = self.teacher_bias
            return loss_fn(**inputs, dist_logit_scale=self.teacher_scale)
        return loss_with_teacher_scale


def scale_counted_once(loss_fn, accum_freq: int):
    """loss_fn, with the gradients of the logit scale and of the logit bias (the sigmoid loss's)
    divided by accum_freq in each call (module docstring)."""
    if accum_freq == 1:
        return loss_fn

    def once(t):
        fixed = t.detach()
        return fixed + (t - fixed) / accum_freq

    def loss_with_scale_counted_once(logit_scale, **inputs):
        if inputs.get("logit_bias") is not None:
            inputs["logit_bias"] = once(inputs["logit_bias"])
        return loss_fn(logit_scale=once(logit_scale), **inputs)
    return loss_with_scale_counted_once


def for_loop(student: nn.Module, teacher: nn.Module | None, loss_fn: nn.Module, accum_freq: int):
    """(model, loss) to hand open_clip_train's train_one_epoch with --accum-freq accum_freq: the
    student itself for a teacher-less epoch (PSDLoss then uses the student's own features,
    detached), else the student with the teacher's features and the loss with the teacher's
    scale; either way the loss counts the logit scale's gradient once per optimizer step."""
    if teacher is None:
        return student, scale_counted_once(loss_fn, accum_freq)
    model = StudentWithTeacher(student, teacher)
    return model, scale_counted_once(model.loss(loss_fn), accum_freq)
