"""The one place where per-row losses become the losses the public API returns.

Every backend (psd_kernels.backends) computes the per-row losses of one direction,

    l_i = LSE_j(S_ij) - (1 - alpha_i) S_{i,c_i} - alpha_i sum_j R_ij S_ij      (docs/loss.md)

differentiable in the student's rows, columns and scale and never in the teacher. This
module chooses the teacher of each direction, calls the backend, and reduces
(one_direction, clip_loss; symmetric_inputs / symmetric_loss take the public symmetric
arguments through validation and the backend registry, for psd_clip_loss and the
distributed loss alike; siglip_inputs / siglip_loss / siglip_batch_loss do the same for the
sigmoid loss, whose rows are this process's images and whose columns are texts):

    one direction:  "none" -> (l_i)_i,  "sum" -> sum_i l_i,  "mean" -> sum_i l_i / M
    symmetric:      image rows against text columns and text rows against image columns,
                    "none" -> (2, b) (row 0 the image rows), "sum" -> 0.5 (sum_img + sum_txt),
                    "mean" -> 0.5 (sum_img + sum_txt) / n_mean

with n_mean = b on one process; the distributed loss passes its own (docs/distributed.md).
Rows of this process may be scored against columns gathered from every process
(`columns`, positives at c_i = offset + i); without `columns` the rows are the columns.

Teacher modes (docs/teachers.md):
    cross            the teacher's image-text matrix seen from both sides: image rows take
                     softmax over the teacher's texts, text rows over the teacher's images
    within_modality  image rows take caption-caption targets, text rows image-image targets
                     (default teacher embeddings: the student's own, detached)
When no row has alpha > 0 every target is one-hot and the teacher is dropped before the
backend runs (plain CLIP cost).

Autograd: reductions are plain tensor operations on the backend's differentiable rows, so
a per-row upstream gradient reaches the backend's backward. A backend may also offer
`weighted_loss` / `clip_weighted_loss`, returning w * sum_i l_i with the gradient computed
in the same sweep (the C++ backend); the mean and sum reductions use it.
"""
from __future__ import annotations

import torch

from psd_kernels import validation
from psd_kernels.backends import resolve_backend

TEACHER_MODES = ("cross", "within_modality")


def check_teacher_mode(teacher_mode: str) -> None:
    if teacher_mode not in TEACHER_MODES:
        raise ValueError(f"teacher_mode must be one of {TEACHER_MODES}, got {teacher_mode!r}")


def _weight(reduction: str, n_mean: float) -> float | None:
    """Each row's weight in the reduced loss; None keeps the rows."""
    if reduction == "none":
        return None
    return 1.0 if reduction == "sum" else 1.0 / n_mean


def _reduced(rows_fn, weighted_fn, args, weight):
    """The backend's per-row losses (weight None) or weight * their sum, by its fused
    weighted kernel when it has one."""
    if weight is not None and weighted_fn is not None:
        return weighted_fn(*args, weight)
    rows = rows_fn(*args)
    return rows if weight is None else weight * rows.sum()


def _direction(module, x, y, scale, alpha, labels, teacher_x, teacher_y, teacher_scale, weight):
    """Rows x against columns y: l_i per row (weight None) or weight * sum_i l_i."""
    return _reduced(module.psd_rows, getattr(module, "weighted_loss", None),
                    (x, y, scale, alpha, labels, teacher_x, teacher_y, teacher_scale), weight)


def one_direction(module, x, y, scale, alpha, labels, teacher_x, teacher_y, teacher_scale, reduction, soft_rows):
    """One direction, reduced (validated arguments of psd_kernels.validation.one_direction)."""
    if not soft_rows:
        teacher_x = teacher_y = teacher_scale = None
    weight = _weight(reduction, x.shape[0])
    return _direction(module, x, y, scale, alpha, labels, teacher_x, teacher_y, teacher_scale, weight)


def _one_matrix(module, image, text, scale, alpha_image, alpha_text, teacher_image, teacher_text,
                teacher_scale, weight):
    """Both directions on one b x b matrix by a backend's symmetric kernel (diagonal positives)."""
    return _reduced(module.clip_rows, getattr(module, "clip_weighted_loss", None),
                    (image, text, scale, alpha_image, alpha_text, teacher_image, teacher_text, teacher_scale),
                    weight)


def clip_loss(module, image, text, scale, alpha_image, alpha_text, teacher_image, teacher_text, teacher_scale,
              reduction, soft_rows, teacher_mode="cross", columns=None, offset=0, n_mean=None):
    """The symmetric loss of b pairs (module docstring).

    columns: None, or (image, text, teacher image, teacher text) of all N pairs the rows are
    scored against (teacher entries None without a separate teacher); offset: where these
    rows' pairs sit among them; n_mean: the divisor of "mean" (default b).
    """
    if not soft_rows:
        teacher_image = teacher_text = teacher_scale = None
    b = image.shape[0]
    weight = None if reduction == "none" else 0.5 * _weight(reduction, n_mean or b)
    if columns is None:
        if teacher_mode == "cross" and hasattr(module, "clip_rows"):
            return _one_matrix(module, image, text, scale, alpha_image, alpha_text, teacher_image, teacher_text,
                               teacher_scale, weight)
        columns = (image, text, teacher_image, teacher_text)
    all_image, all_text, all_teacher_image, all_teacher_text = columns
    if teacher_mode == "cross":
        image_teacher, text_teacher = (teacher_image, all_teacher_text), (teacher_text, all_teacher_image)
    else:
        if soft_rows and teacher_image is None:  # the student's own embeddings, detached
            teacher_image, teacher_text = image.detach(), text.detach()
            all_teacher_image, all_teacher_text = all_image.detach(), all_text.detach()
        image_teacher, text_teacher = (teacher_text, all_teacher_text), (teacher_image, all_teacher_image)
    labels = torch.arange(offset, offset + b, device=image.device)
    image_part = _direction(module, image, all_text, scale, alpha_image, labels, *image_teacher, teacher_scale,
                            weight)
    text_part = _direction(module, text, all_image, scale, alpha_text, labels, *text_teacher, teacher_scale,
                           weight)
    return torch.stack((image_part, text_part)) if weight is None else image_part + text_part


def _with_backend(args: dict, embeddings: torch.Tensor, backend: str, op: str = "psd_rows"):
    return args, resolve_backend(backend, embeddings.device, embeddings.dtype, op)


def one_direction_inputs(x, y, logit_scale, teacher_x, teacher_y, teacher_scale, alpha, labels, offset, reduction,
                         backend, check_finite):
    """psd_loss's arguments checked and normalised (psd_kernels.validation.one_direction) and the
    backend that runs them: (args, module). Raises on invalid inputs or a missing backend."""
    args = validation.one_direction(x, y, logit_scale, teacher_x, teacher_y, teacher_scale, alpha, labels, offset,
                                    reduction, check_finite)
    return _with_backend(args, args["x"], backend)


def symmetric_inputs(image_features, text_features, logit_scale, teacher_image, teacher_text, teacher_scale,
                     alpha_image, alpha_text, teacher_mode, reduction, backend, check_finite):
    """The public symmetric call's arguments checked and normalised (psd_kernels.validation.symmetric)
    and the backend that runs them: (args, module). Raises on invalid inputs or a missing backend."""
    check_teacher_mode(teacher_mode)
    args = validation.symmetric(image_features, text_features, logit_scale, teacher_image, teacher_text,
                                teacher_scale, alpha_image, alpha_text, reduction, check_finite)
    return _with_backend(args, args["image"], backend)


def symmetric_loss(image_features, text_features, logit_scale, teacher_image, teacher_text, teacher_scale,
                   alpha_image, alpha_text, teacher_mode, reduction, backend, check_finite):
    """The symmetric loss of one process's batch from the public arguments: psd_clip_loss, and
    psd_clip_loss_distributed and PSDLoss with one process (the same path for all three)."""
    args, module = symmetric_inputs(image_features, text_features, logit_scale, teacher_image, teacher_text,
                                    teacher_scale, alpha_image, alpha_text, teacher_mode, reduction, backend,
                                    check_finite)
    return clip_loss(module, **args, teacher_mode=teacher_mode)


# -- the sigmoid (SigLIP) loss (docs/siglip_loss.md) ---------------------------------------------
def siglip_inputs(image_features, text_features, logit_scale, logit_bias, teacher_image, teacher_text,
                  teacher_scale, teacher_bias, alpha_image, alpha_text, reduction, backend, check_finite):
    """The sigmoid loss's arguments checked and normalised (psd_kernels.validation.siglip) and the
    backend that runs them: (args, module). Raises on invalid inputs or a missing backend."""
    args = validation.siglip(image_features, text_features, logit_scale, logit_bias, teacher_image, teacher_text,
                             teacher_scale, teacher_bias, alpha_image, alpha_text, reduction, check_finite)
    return _with_backend(args, args["image"], backend, "siglip_rows")


def siglip_loss(module, image, text, scale, bias, alpha_image, alpha_text, teacher_image, teacher_text,
                teacher_scale, teacher_bias, reduction, soft_rows, columns=None, offset=0, n_mean=None):
    """The sigmoid loss of b image rows against the text columns, positives at offset + i.

    columns: None (the rows' own texts), or (text, teacher text, alpha_text) of all N pairs the
    rows are scored against (teacher text None without a separate teacher); n_mean: the divisor
    of "mean" (default b, open_clip's local batch). "none": the (b,) per-image-row sums.
    """
    if not soft_rows:  # every target is one-hot: the teacher is never read
        teacher_image = teacher_text = teacher_scale = teacher_bias = None
    all_text, all_teacher_text, all_alpha_text = columns or (text, teacher_text, alpha_text)
    b = image.shape[0]
    labels = torch.arange(offset, offset + b, device=image.device)
    return _reduced(module.siglip_rows, getattr(module, "siglip_weighted_loss", None),
                    (image, all_text, scale, bias, alpha_image, all_alpha_text, labels, teacher_image,
                     all_teacher_text, teacher_scale, teacher_bias), _weight(reduction, n_mean or b))


def siglip_batch_loss(image_features, text_features, logit_scale, logit_bias, teacher_image, teacher_text,
                      teacher_scale, teacher_bias, alpha_image, alpha_text, reduction, backend, check_finite):
    """The sigmoid loss of one process's batch from the public arguments: psd_siglip_loss, and
    psd_siglip_loss_distributed and PSDSigLipLoss with one process."""
    args, module = siglip_inputs(image_features, text_features, logit_scale, logit_bias, teacher_image,
                                 teacher_text, teacher_scale, teacher_bias, alpha_image, alpha_text, reduction,
                                 backend, check_finite)
    return siglip_loss(module, **args)
