"""The symmetric CLIP loss built from two one-direction PSD losses.

With images as rows and texts as columns (positives on the diagonal):

    mean: 0.5 * (mean_i l_i(image->text) + mean_j l_j(text->image))
    sum:  0.5 * (sum_i  l_i(image->text) + sum_j  l_j(text->image))
    none: a (2, B) tensor, row 0 image->text, row 1 text->image

The text->image direction uses the transposed student logits and the teacher's
column softmax, i.e. the same function with (text, image) and (teacher_text,
teacher_image) as (rows, columns). Backends without a dedicated symmetric
kernel use this; it is also how the reference defines the symmetric loss.
"""
from __future__ import annotations

import torch


def combine_directions(image_rows: torch.Tensor, text_rows: torch.Tensor, reduction: str) -> torch.Tensor:
    """Combine per-row losses of both directions as the module docstring states."""
    if reduction == "none":
        return torch.stack((image_rows, text_rows))
    if reduction == "mean":
        return 0.5 * (image_rows.mean() + text_rows.mean())
    return 0.5 * (image_rows.sum() + text_rows.sum())


def clip_loss_from_directions(psd_loss, image, text, scale, alpha_image, alpha_text,
                              teacher_image, teacher_text, teacher_scale, reduction):
    """Two calls of a backend's one-direction `psd_loss`, combined per `reduction`."""
    labels = torch.arange(image.shape[0], device=image.device)
    image_rows = psd_loss(image, text, scale, alpha_image, labels, teacher_image, teacher_text,
                          teacher_scale, "none")
    text_rows = psd_loss(text, image, scale, alpha_text, labels, teacher_text, teacher_image,
                         teacher_scale, "none")
    return combine_directions(image_rows, text_rows, reduction)
