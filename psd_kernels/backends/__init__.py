"""Backend registry: which implementation computes the loss, and why another is missing.

Every backend is a module with the same functions, called by psd_kernels.assembly only
after the inputs were validated and normalised (psd_kernels.validation). For x: M x D,
y: N x D:

    psd_rows(x, y, scale, alpha, labels, teacher_x, teacher_y, teacher_scale)
        x, y            same dtype (float16, bfloat16, float32, float64), same device
        scale           0-dim floating tensor on that device, > 0, may require grad
        alpha           (M,) tensor, float32 (float64 when x is float64), in [0, 1]
        labels          (M,) int64 tensor, values in [0, N)
        teacher_x/_y    both None (the teacher is the student itself, detached) or
                        M x D' and N x D' of x's dtype and device (never differentiated)
        teacher_scale   None (the student's scale, detached) or a 0-dim tensor, > 0
        returns         the per-row losses l_i, (M,), float32 (float64 for float64 inputs),
                        differentiable in x, y and scale, honouring per-row upstream gradients

    supports(device: torch.device, dtype: torch.dtype) -> str | None
        None when the backend can run there, else the reason it cannot.

and optionally, where the backend has a faster kernel for them:

    clip_rows(image, text, scale, alpha_image, alpha_text, teacher_image, teacher_text, teacher_scale)
        (2, B) per-row losses of both directions on one B x B matrix with diagonal
        positives; text rows use the teacher's column softmax. Without it the assembly
        makes two psd_rows calls.
    weighted_loss(x, y, ..., teacher_scale, weight) / clip_weighted_loss(image, ..., weight)
        weight * (sum of the rows' losses) as a 0-dim tensor, e.g. with the gradient
        computed in the forward sweep. Without them the assembly sums psd_rows / clip_rows.

The sigmoid (SigLIP) loss (docs/siglip_loss.md) has its own pair of functions, for the
backends that implement it:

    siglip_rows(x, y, scale, bias, alpha_rows, alpha_cols, labels, teacher_x, teacher_y,
                teacher_scale, teacher_bias)
        x, y, scale, labels, teacher_x/_y as psd_rows; x holds the rows (images), y the
        columns (texts, all ranks' in distributed training)
        bias            0-dim tensor b (0 when the caller has no bias), may require grad
        alpha_rows      (M,) and alpha_cols (N,): a_ij = (alpha_rows_i + alpha_cols_j) / 2
        teacher_scale   None (the student's s, detached) or a 0-dim tensor s~
        teacher_bias    None (the student's b, detached) or a 0-dim tensor b~
        returns         row_i = sum_j softplus(l_ij) - q_ij l_ij, (M,), differentiable in x,
                        y, scale and bias, honouring per-row upstream gradients
    siglip_weighted_loss(x, ..., teacher_bias, weight)    (optional)
        weight * sum_i row_i as a 0-dim tensor, the gradient computed in the same sweep

No backend imports another; reductions, teacher modes and the symmetric loss are built in
psd_kernels.assembly alone.
"""
from __future__ import annotations

import importlib
import os
import sys

import torch

BACKENDS = ("reference", "cpp", "triton")

# backend name -> module path
_MODULES = {
    "reference": "psd_kernels.backends.reference",
    "cpp": "psd_kernels.backends.cpp",
    "triton": "psd_kernels.backends.triton.launcher",
}


class BackendUnavailable(RuntimeError):
    """The requested backend is not built or cannot run on these inputs."""


def load_backend(name: str):
    """Import backend `name`, or raise BackendUnavailable saying why it is missing."""
    if name not in _MODULES:
        raise ValueError(f"backend must be one of {('auto',) + BACKENDS}, got {name!r}")
    # A module already imported is taken from sys.modules, not through importlib, which
    # keeps a call to the loss traceable by torch.compile(fullgraph=True).
    module = sys.modules.get(_MODULES[name])
    if module is None:
        try:
            module = importlib.import_module(_MODULES[name])
        except ImportError as exc:
            raise BackendUnavailable(f"backend {name!r} is not available: {exc}") from exc
    return module


def _triton_usable(device: torch.device) -> bool:
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def _reason(module, device: torch.device, dtype: torch.dtype, op: str) -> str | None:
    if not hasattr(module, op):
        return f"it has no {op} (the {'sigmoid' if op == 'siglip_rows' else 'softmax'} loss)"
    return module.supports(device, dtype)


def resolve_backend(name: str, device: torch.device, dtype: torch.dtype, op: str = "psd_rows"):
    """The backend module for `name` ("auto" or one of BACKENDS) on this device and dtype that
    has `op` ("psd_rows": the softmax loss, "siglip_rows": the sigmoid loss).

    "auto": CUDA tensors -> triton, else the C++ CUDA op, else the reference;
    CPU tensors -> the C++ op, else the reference. An explicit name that cannot
    run raises BackendUnavailable with the reason.
    """
    if name == "auto":
        order = ("triton", "cpp", "reference") if device.type == "cuda" else ("cpp", "reference")
        for candidate in order:
            if candidate == "triton" and not _triton_usable(device):
                continue
            try:
                module = load_backend(candidate)
            except BackendUnavailable:
                continue
            if _reason(module, device, dtype, op) is None:
                return module
        raise BackendUnavailable(f"no backend runs {op} on device={device} dtype={dtype}")
    module = load_backend(name)
    reason = _reason(module, device, dtype, op)
    if reason is not None:
        raise BackendUnavailable(f"backend {name!r} cannot run here: {reason}")
    return module


def available_backends(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                       op: str = "psd_rows") -> dict:
    """Map each backend name to None (runs `op` on `device`/`dtype`: "psd_rows", the softmax loss, or
    "siglip_rows", the sigmoid loss) or the reason it does not."""
    device = torch.device(device)
    status = {}
    for name in BACKENDS:
        try:
            module = load_backend(name)
        except BackendUnavailable as exc:
            status[name] = str(exc)
            continue
        status[name] = _reason(module, device, dtype, op)
    return status


def _preload_cheap_backends() -> None:
    """Import the reference and, when built, the C++ op now (both cheap: no device queries),
    so that torch.compile finds them loaded; Triton is imported on first use only."""
    for name in ("reference", "cpp"):
        try:
            load_backend(name)
        except BackendUnavailable:
            pass


_preload_cheap_backends()
