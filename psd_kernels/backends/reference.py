"""The exact, materialised PSD loss: the reference every fused backend is tested against.

Implements the loss of docs/loss.md literally, holding the whole M x N logit matrix (so it
needs O(M N) memory). Autograd differentiates it; the teacher softmax R is computed under
no_grad, so teacher tensors never get a gradient. It follows the backend contract of
psd_kernels.backends (per-row losses; psd_kernels.assembly reduces them and builds the
symmetric loss from two directions) and runs in float64 when given float64 inputs (what
the tests use to prove the math).

    S = s * x @ y^T,   T = s~ * x~ @ y~^T (or s~ * x @ y^T for a self teacher)
    Q_i = (1 - alpha_i) onehot(c_i) + alpha_i softmax(T_i)
    l_i = -sum_j Q_ij log softmax(S_i)_j

The sigmoid (SigLIP) loss's reference, siglip_rows, lives in siglip_reference.py.

Run its tests with: .venv/bin/python -m pytest tests/test_reference.py
"""
from __future__ import annotations

import torch

from psd_kernels.backends.siglip_reference import siglip_rows  # noqa: F401  the sigmoid loss, docs/siglip_loss.md
from psd_kernels.validation import compute_dtype


def supports(device: torch.device, dtype: torch.dtype) -> str | None:
    return None


def psd_rows(x, y, scale, alpha, labels, teacher_x, teacher_y, teacher_scale):
    """Per-row losses l_i of rows x against columns y; see the module docstring."""
    ct = compute_dtype(x.dtype)
    d = x.to(ct) @ y.to(ct).T                      # M x N dot products
    s = scale.to(ct)
    log_p = torch.log_softmax(s * d, dim=1)        # log P, P = softmax(S)
    with torch.no_grad():
        s_t = s.detach() if teacher_scale is None else teacher_scale.to(ct)
        if teacher_x is None:
            t = s_t * d.detach()                   # self teacher: T = s~ * <x_i, y_j>
        else:
            t = s_t * (teacher_x.to(ct) @ teacher_y.to(ct).T)
        a = alpha.to(ct).unsqueeze(1)
        q = a * torch.softmax(t, dim=1)            # alpha_i R_ij
        q.scatter_add_(1, labels.unsqueeze(1), 1.0 - a)  # + (1 - alpha_i) onehot(c_i)
    return -(q * log_p).sum(dim=1)
