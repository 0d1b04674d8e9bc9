"""The exact, materialised PSD sigmoid (SigLIP) loss: the reference the fused sigmoid backends are tested against.

Implements docs/siglip_loss.md literally, holding the whole M x N logit matrix (O(M N)
memory). Autograd differentiates it; the soft target q is built under no_grad, so
teacher tensors never get a gradient, and the student's own tensors are constants
wherever they act as the teacher. Float64 inputs run in float64 (what the tests use to
prove the math); every other dtype accumulates in float32 (psd_kernels.validation).

    l_ij = s <x_i, y_j> + b                              student logits
    t_ij = s~ <x~_i, y~_j> + b~                          teacher logits (self teacher: x~ = x, y~ = y, detached)
    z_ij = [j = c_i]                                     hard target, c_i = i + offset by default
    a_ij = (alpha_rows_i + alpha_cols_j) / 2             how much of pair (i, j) the teacher decides
    q_ij = (1 - a_ij) z_ij + a_ij sigmoid(t_ij)          soft target
    e_ij = softplus(l_ij) - q_ij l_ij                    binary cross-entropy with logits
         = (1 - q_ij) softplus(l_ij) + q_ij softplus(-l_ij)
    row_i = sum_j e_ij                                   what siglip_rows returns

With alpha = 0 and "mean" this is open_clip.loss.SigLipLoss on one rank:
-sum_ij logsigmoid(label_ij l_ij) / M with label = +1 on the positive, -1 elsewhere.

Run its tests with: .venv/bin/python -m pytest tests/test_siglip_reference.py
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from psd_kernels.validation import REDUCTIONS, compute_dtype


def softplus(v: torch.Tensor) -> torch.Tensor:
    """log(1 + e^v), exact for every v: torch's F.softplus returns v itself above its threshold (20),
    an error of e^-20 ~ 2e-9 that a float64 comparison sees. -logsigmoid(-v) has no cut-off, and
    its backward is sigmoid(v) everywhere, v = 0 included."""
    return -F.logsigmoid(-v)


def siglip_rows(x, y, scale, bias, alpha_rows, alpha_cols, labels, teacher_x, teacher_y, teacher_scale,
                 teacher_bias):
    """Per-row sums row_i = sum_j e_ij of rows x (M x D) against columns y (N x D); see the module docstring.

    x, y            same dtype and device; differentiated
    scale           0-dim tensor s > 0 (already exponentiated); differentiated
    bias            None (no bias, as open_clip's logit_bias=None) or a 0-dim tensor b; differentiated
    alpha_rows      (M,) or 0-dim tensor in [0, 1]: the rows' alpha (0 outside the soft subset)
    alpha_cols      (N,) or 0-dim tensor in [0, 1]: the columns' alpha
    labels          (M,) int64, the positive column c_i of each row, in [0, N)
    teacher_x/_y    both None (the teacher is the student, detached) or M x D' and N x D'
    teacher_scale   None (the student's s, detached) or a 0-dim tensor s~
    teacher_bias    None (the student's b, detached; 0 without a bias) or a 0-dim tensor b~
    returns         (M,) per-row losses, float32 (float64 for float64 inputs), differentiable in
                    x, y, scale and bias, honouring per-row upstream gradients
    """
    ct = compute_dtype(x.dtype)
    d = x.to(ct) @ y.to(ct).T                        # M x N dot products <x_i, y_j>
    logits = scale.to(ct).reshape(()) * d            # l_ij = s d_ij + b
    if bias is not None:
        logits = logits + bias.to(ct).reshape(())
    with torch.no_grad():
        s_t = scale.to(ct).reshape(()) if teacher_scale is None else teacher_scale.to(ct).reshape(())
        if teacher_bias is not None:
            b_t = teacher_bias.to(ct).reshape(())
        elif bias is not None:
            b_t = bias.to(ct).reshape(())
        else:
            b_t = torch.zeros((), dtype=ct, device=x.device)
        if teacher_x is None:
            t = s_t * d + b_t                        # self teacher: t_ij = s~ <x_i, y_j> + b~, the same products
        else:
            t = s_t * (teacher_x.to(ct) @ teacher_y.to(ct).T) + b_t
        a = (alpha_rows.to(ct).reshape(-1, 1) + alpha_cols.to(ct).reshape(1, -1)) / 2   # a_ij, M x N
        z = torch.zeros_like(d)
        z.scatter_(1, labels.reshape(-1, 1), 1.0)    # z_ij = [j = c_i]
        q = (1 - a) * z + a * torch.sigmoid(t)
    # e_ij = (1 - q) softplus(l) + q softplus(-l): no cancellation when q is 0 or 1;
    # d e_ij / d l_ij = (1 - q) sigmoid(l) - q sigmoid(-l) = sigmoid(l_ij) - q_ij.
    e = (1 - q) * softplus(logits) + q * softplus(-logits)
    return e.sum(dim=1)


def _scalar(v, name, like):
    """A Python number or a one-element tensor as a 0-dim tensor (a tensor keeps its autograd link)."""
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise ValueError(f"{name} must be a number or a one-element tensor, got shape {tuple(v.shape)}")
        return v.reshape(())
    return torch.tensor(float(v), dtype=compute_dtype(like.dtype), device=like.device)


def _alpha(v, name, n, like):
    """alpha as a 0-dim or (n,) tensor."""
    t = v if isinstance(v, torch.Tensor) else torch.tensor(float(v), dtype=compute_dtype(like.dtype),
                                                            device=like.device)
    if t.dim() != 0 and tuple(t.shape) != (n,):
        raise ValueError(f"{name} must be a number or a ({n},) tensor, got shape {tuple(t.shape)}")
    return t


def siglip_loss_reference(x, y, logit_scale, logit_bias=None, *, teacher_x=None, teacher_y=None,
                               teacher_scale=None, teacher_bias=None, alpha_rows=0.0, alpha_cols=None,
                               labels=None, offset=0, reduction="mean") -> torch.Tensor:
    """PSD sigmoid loss of rows x (M x D) against columns y (N x D), materialised (docs/siglip_loss.md).

    L = reduce_i sum_j [softplus(l_ij) - q_ij l_ij],  l_ij = logit_scale <x_i, y_j> + logit_bias,
    q_ij = (1 - a_ij) [j = c_i] + a_ij sigmoid(teacher_scale <teacher_x_i, teacher_y_j> + teacher_bias),
    a_ij = (alpha_rows_i + alpha_cols_j) / 2.

    Args:
        x, y: row (image) and column (text) embeddings.
        logit_scale: s > 0, already exponentiated (open_clip passes logit_scale.exp()); a number or a
            one-element tensor, which receives a gradient.
        logit_bias: b, a number or one-element tensor (receives a gradient), or None for no bias.
        teacher_x, teacher_y: M x D' and N x D' teacher embeddings, both or neither (neither: the
            student's own, detached). Never differentiated.
        teacher_scale, teacher_bias: s~ and b~; default the student's, detached.
        alpha_rows: a number or (M,) per-row alpha (0 outside the soft subset).
        alpha_cols: a number or (N,) per-column alpha; default alpha_rows, which needs alpha_rows to be a
            number or N == M (column j is pair j's text, as in one process's B x B batch).
        labels: (M,) positive column per row; default c_i = i + offset.
        reduction: "mean" (sum over rows and columns / M, as open_clip divides by the local batch),
            "sum", or "none" ((M,) per-row sums).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if (teacher_x is None) != (teacher_y is None):
        raise ValueError("teacher_x and teacher_y must be given together (both or neither)")
    m, n = x.shape[0], y.shape[0]
    scale = _scalar(logit_scale, "logit_scale", x)
    bias = None if logit_bias is None else _scalar(logit_bias, "logit_bias", x)
    t_scale = None if teacher_scale is None else _scalar(teacher_scale, "teacher_scale", x)
    t_bias = None if teacher_bias is None else _scalar(teacher_bias, "teacher_bias", x)
    a_rows = _alpha(alpha_rows, "alpha_rows", m, x)
    if alpha_cols is None:
        if a_rows.dim() != 0 and n != m:
            raise ValueError(f"alpha_cols is needed when alpha_rows is per row and N != M (got M={m}, N={n})")
        alpha_cols = a_rows
    a_cols = _alpha(alpha_cols, "alpha_cols", n, x)
    if labels is None:
        if not 0 <= offset <= n - m:
            raise ValueError(f"offset must put every row's positive c_i = i + offset in [0, N): "
                             f"need 0 <= offset <= N - M = {n - m}, got {offset}")
        labels = torch.arange(m, device=x.device) + offset
    rows = siglip_rows(x, y, scale, bias, a_rows, a_cols, labels, teacher_x, teacher_y, t_scale, t_bias)
    if reduction == "none":
        return rows
    return rows.sum() / m if reduction == "mean" else rows.sum()
