"""The PSD loss as a careful PyTorch user writes it by hand: row chunks + checkpointing.

This is a benchmark *peer*, not a backend: it shows what plain PyTorch costs when
one avoids the B x B logit matrix without writing a kernel. Each direction of
the symmetric loss is a sum over row chunks; each chunk's per-row losses are
computed under torch.utils.checkpoint, so autograd keeps only the chunk's inputs
and recomputes its c x N logits in the backward. Nothing of size B x B is ever
held; peak extra memory is a few c x N buffers plus the B x D gradients.

Per row i of a chunk (docs/loss.md, "One direction"):

    S_ij = s * <q_i, k_j>,  T_ij = s~ * <q~_i, k~_j>,  R_i = softmax_j(T_ij)
    l_i  = LSE_j(S_ij) - (1 - alpha) * S_{i,i} - alpha * sum_j R_ij S_ij

The text->image direction swaps the roles (texts are the rows, images the keys),
which is exactly the teacher's column softmax of the symmetric loss. Cost: each
direction computes its own q @ k^T (forward 4*B^2*D, twice the fused kernels'
shared product) and the backward recomputes both.

Checked against psd_kernels' reference by tests/test_benchmarks.py:

    .venv/bin/python -m pytest tests/test_benchmarks.py -q -k chunked
"""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

# Default rows per chunk: at B = 65536 one chunk's logits are 256 x 65536 fp32 = 64 MiB.
DEFAULT_CHUNK_ROWS = 256


def _chunk_losses(q, k, scale, start, alpha, teacher_q, teacher_k, teacher_scale):
    """Per-row losses l_i (float32, or float64 for float64 inputs) of rows start.. of one direction."""
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    logits = scale.to(acc) * (q @ k.T).to(acc)                      # c x N, recomputed in backward
    labels = torch.arange(start, start + q.shape[0], device=q.device)
    positive = logits.gather(1, labels[:, None]).squeeze(1)
    loss = torch.logsumexp(logits, dim=1) - (1.0 - alpha) * positive
    if alpha != 0.0:
        with torch.no_grad():                                        # teacher targets: constants
            target = torch.softmax(teacher_scale.to(acc) * (teacher_q @ teacher_k.T).to(acc), dim=1)
        loss = loss - alpha * (target * logits).sum(dim=1)
    return loss


def _direction_sum(q, k, scale, alpha, teacher_q, teacher_k, teacher_scale, chunk):
    """sum_i l_i over all rows of q (keys k), one checkpointed chunk of rows at a time."""
    total = None
    for start in range(0, q.shape[0], chunk):
        stop = min(start + chunk, q.shape[0])
        tq = None if teacher_q is None else teacher_q[start:stop]
        part = checkpoint(_chunk_losses, q[start:stop], k, scale, start, alpha, tq, teacher_k,
                          teacher_scale, use_reentrant=False).sum()
        total = part if total is None else total + part
    return total


def chunked_clip_loss(image, text, scale, *, teacher_image=None, teacher_text=None,
                      teacher_scale=None, alpha_image=0.0, alpha_text=None, chunk=None):
    """Symmetric PSD loss 0.5 * (mean_i l_i(image->text) + mean_j l_j(text->image)).

    image, text: B x D; scale: 0-dim tensor s (already exponentiated); teacher_image /
    teacher_text: B x D' or both None (the student itself, detached); teacher_scale:
    None (s, detached) or a 0-dim tensor; alpha_image / alpha_text: python floats
    (alpha_text defaults to alpha_image); chunk: rows per chunk (default
    DEFAULT_CHUNK_ROWS; chunk >= B is one chunk, the whole matrix). Teacher tensors
    get no gradient.
    """
    if image.ndim != 2 or image.shape != text.shape:
        raise ValueError(f"image and text must both be B x D, got {tuple(image.shape)} and {tuple(text.shape)}")
    if (teacher_image is None) != (teacher_text is None):
        raise ValueError("teacher_image and teacher_text must be given together")
    chunk = DEFAULT_CHUNK_ROWS if chunk is None else chunk
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    alpha_text = alpha_image if alpha_text is None else alpha_text
    if teacher_image is None:
        teacher_image, teacher_text = image.detach(), text.detach()
    teacher_image, teacher_text = teacher_image.detach(), teacher_text.detach()
    teacher_scale = (scale if teacher_scale is None else torch.as_tensor(teacher_scale)).detach()
    teacher_scale = teacher_scale.to(image.device)
    image_to_text = _direction_sum(image, text, scale, float(alpha_image), teacher_image,
                                   teacher_text, teacher_scale, chunk)
    text_to_image = _direction_sum(text, image, scale, float(alpha_text), teacher_text,
                                   teacher_image, teacher_scale, chunk)
    return 0.5 * (image_to_text + text_to_image) / image.shape[0]
