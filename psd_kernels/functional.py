"""Public loss functions: validate, pick a backend, assemble the loss.

    loss = psd_loss(x, y, logit_scale, alpha=0.3)                  # one direction
    loss = psd_clip_loss(image_features, text_features, logit_scale, alpha_image=0.3)
    loss = psd_siglip_loss(image_features, text_features, logit_scale, logit_bias, alpha_image=0.3)

`backend` is "auto" (CPU tensors: the C++ op when built, else the reference;
CUDA tensors: Triton, else the C++ CUDA op, else the reference), "reference",
"cpp" or "triton". A named backend that is not built or cannot run on these
inputs raises psd_kernels.BackendUnavailable saying why. The math: docs/loss.md.
"""
from __future__ import annotations

import torch

from psd_kernels import assembly


def psd_loss(x, y, logit_scale, *, teacher_x=None, teacher_y=None, teacher_scale=None, alpha=0.0,
             labels=None, offset=0, reduction="mean", backend="auto", check_finite=False) -> torch.Tensor:
    """Soft-target contrastive cross-entropy of rows `x` (M x D) against columns `y` (N x D).

    l_i = LSE_j(S_ij) - (1 - alpha_i) S_{i,c_i} - alpha_i sum_j R_ij S_ij with
    S = logit_scale * x y^T and R = softmax of the teacher logits
    T = teacher_scale * teacher_x teacher_y^T (default: the student's own
    embeddings and scale, detached). See docs/loss.md.

    Args:
        x, y: row and column embeddings, float16/bfloat16/float32/float64, one device.
        logit_scale: the exponentiated scale s > 0 (open_clip passes logit_scale.exp()),
            a float or a one-element tensor; it receives a gradient.
        teacher_x, teacher_y: M x D' and N x D' teacher embeddings, both or neither.
            Teacher tensors never receive a gradient, even if they require one.
        teacher_scale: teacher scale s~ > 0; default the student's scale, detached.
        alpha: mixing weight in [0, 1], a scalar or one per row (0 outside the soft subset).
        labels: (M,) positive column per row; default c_i = i + offset.
        reduction: "mean" (default), "sum" or "none" (per-row losses; their upstream
            gradients are honoured).
        backend: "auto", "reference", "cpp" or "triton".
        check_finite: also reject NaN/Inf embeddings (one extra read of each input).

    Returns the loss in float32 (float64 for float64 inputs); gradients come back in
    the input dtype. Value checks read the device once per call (psd_kernels.validation).

    Note: with the student as its own teacher at the same scale, R = P and the gradient
    is exactly CLIP's scaled by (1 - alpha); only a different teacher (another scale,
    an EMA or snapshot, a frozen model) changes training beyond a learning-rate factor
    (docs/teachers.md).
    """
    args, module = assembly.one_direction_inputs(x, y, logit_scale, teacher_x, teacher_y, teacher_scale, alpha,
                                                 labels, offset, reduction, backend, check_finite)
    return assembly.one_direction(module, **args)


def psd_clip_loss(image_features, text_features, logit_scale, *, teacher_image=None, teacher_text=None,
                  teacher_scale=None, alpha_image=0.0, alpha_text=None, teacher_mode="cross", reduction="mean",
                  backend="auto", check_finite=False) -> torch.Tensor:
    """Symmetric PSD loss on one B x B similarity matrix (pair i is image i with text i).

    mean: 0.5 * (mean_i l_i(image->text) + mean_j l_j(text->image)); sum: 0.5 * (sum + sum);
    none: a (2, B) tensor, row 0 the image rows, row 1 the text rows. With alpha = 0 this
    is open_clip's ClipLoss. The text->image direction uses its own alpha (`alpha_text`,
    default `alpha_image`).

    teacher_mode: "cross" (default): the teacher's image-text matrix seen from both sides;
    text rows use its column softmax. "within_modality": image rows get caption-caption
    targets softmax(s~ <t~_i, t~_j>) and text rows image-image targets, from the teacher's
    embeddings or, without them, the student's own, detached (docs/teachers.md).
    Other arguments as psd_loss.
    """
    return assembly.symmetric_loss(image_features, text_features, logit_scale, teacher_image, teacher_text,
                                   teacher_scale, alpha_image, alpha_text, teacher_mode, reduction, backend,
                                   check_finite)


def psd_siglip_loss(image_features, text_features, logit_scale, logit_bias=None, *, teacher_image=None,
                    teacher_text=None, teacher_scale=None, teacher_bias=None, alpha_image=0.0, alpha_text=None,
                    reduction="mean", backend="auto", check_finite=False) -> torch.Tensor:
    """Sigmoid (SigLIP) loss with PSD soft targets on one B x B batch (pair i: image i, text i).

    L = reduce_i sum_j softplus(l_ij) - q_ij l_ij with l_ij = logit_scale <x_i, y_j> + logit_bias,
    q_ij = (1 - a_ij) [i = j] + a_ij sigmoid(t_ij), t_ij = teacher_scale <x~_i, y~_j> + teacher_bias,
    a_ij = (alpha_image_i + alpha_text_j) / 2 (docs/siglip_loss.md). With alpha = 0 it is
    open_clip's SigLipLoss.

    Args:
        image_features, text_features: B x D rows (images) and columns (texts).
        logit_scale: the exponentiated scale s > 0 (open_clip passes logit_scale.exp()), a
            float or a one-element tensor; it receives a gradient.
        logit_bias: b, a float or a one-element tensor (receives a gradient), or None (no bias).
        teacher_image, teacher_text: B x D' teacher embeddings, both or neither (neither: the
            student's own, detached). Teacher tensors never receive a gradient.
        teacher_scale, teacher_bias: s~ and b~; default the student's own, detached.
        alpha_image, alpha_text: scalars or one per pair, in [0, 1] (alpha_text default
            alpha_image).
        reduction: "mean" (the sum over pairs divided by B, as open_clip), "sum" or "none"
            (the (B,) per-image-row sums; their upstream gradients are honoured).
        backend, check_finite: as psd_loss.

    Returns the loss in float32 (float64 for float64 inputs); gradients in the input dtype.
    """
    return assembly.siglip_batch_loss(image_features, text_features, logit_scale, logit_bias, teacher_image,
                                      teacher_text, teacher_scale, teacher_bias, alpha_image, alpha_text, reduction,
                                      backend, check_finite)
