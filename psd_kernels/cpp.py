"""The C++ backend: the fused PSD loss ops of psd_kernels._C (CPU, and CUDA when built).

    loss = psd_kernels.psd_loss(x, y, logit_scale, alpha=0.3, backend="cpp")

Layered as in ../shared/design/STYLE.md: the C++ ops check their inputs
(TORCH_CHECK) and are registered with torch.library as

    psd::forward           per-row losses, no gradient work
    psd::backward          gradients for per-row upstream gradients (recomputes)
    psd::forward_backward  a weighted loss sum_i w_i l_i and its gradients in one pass

This module adds their fake (meta) implementations, so torch.compile(fullgraph=True)
traces them, and their autograd formulas, then exposes the backend contract of
psd_kernels.backends (`psd_loss`, `psd_clip_loss`, `supports`).

Autograd and memory: for reduction "mean"/"sum" the upstream gradient is a scalar,
so the forward runs forward_backward and keeps dx, dy, ds (O((M + N) D)); the
backward only scales them. For reduction "none" the forward keeps only its inputs
and the backward recomputes the statistics with the per-row upstream gradients.
Without grad mode (or when nothing requires grad) only psd::forward runs.
Teacher tensors never receive a gradient. No double backward.

Tests: .venv/bin/python -m pytest tests/test_cpp.py -q
"""
from __future__ import annotations

import torch

from psd_kernels.validation import FLOAT_DTYPES, compute_dtype

try:
    from psd_kernels import _C
except ImportError as exc:  # the registry (psd_kernels.backends) reports this message
    raise ImportError(
        f"the C++ extension psd_kernels._C is not built ({exc}); run pip install --no-build-isolation -e ."
    ) from exc

_ops = torch.ops.psd


_CUDA_BUILT = bool(_C.cuda_built())  # read once: torch.compile cannot trace into the pybind call


def cuda_built() -> bool:
    """Whether psd_kernels._C was compiled with its CUDA kernels."""
    return _CUDA_BUILT


def supports(device: torch.device, dtype: torch.dtype) -> str | None:
    if not isinstance(device, torch.device):
        device = torch.device(device)
    if dtype not in FLOAT_DTYPES:
        return f"dtype {dtype} is not supported (float16, bfloat16, float32, float64)"
    if device.type == "cpu":
        return None
    if device.type == "cuda":
        return None if _CUDA_BUILT else "psd_kernels._C was built without CUDA (see python -m psd_kernels.info)"
    return f"device type {device.type!r} is not supported (cpu, cuda)"


# ---- fake (meta) implementations: shapes and dtypes only ---------------------------------

@torch.library.register_fake("psd::forward")
def _forward_fake(x, y, scale, alpha, labels, alpha_col, teacher_x, teacher_y, teacher_scale):
    acc = compute_dtype(x.dtype)
    cols = y.shape[0] if alpha_col is not None else 0
    return x.new_empty((x.shape[0],), dtype=acc), x.new_empty((cols,), dtype=acc)


@torch.library.register_fake("psd::backward")
def _backward_fake(x, y, scale, alpha, labels, alpha_col, teacher_x, teacher_y, teacher_scale, grad_row,
                   grad_col):
    return torch.empty_like(x), torch.empty_like(y), x.new_empty((), dtype=compute_dtype(x.dtype))


@torch.library.register_fake("psd::forward_backward")
def _forward_backward_fake(x, y, scale, alpha, labels, alpha_col, teacher_x, teacher_y, teacher_scale,
                           weight_row, weight_col):
    acc = compute_dtype(x.dtype)
    return x.new_empty((), dtype=acc), torch.empty_like(x), torch.empty_like(y), x.new_empty((), dtype=acc)


# ---- autograd ------------------------------------------------------------------------------
# Differentiable inputs: x, y, scale (positions 0-2); everything else gets None.
_N_ARGS = 9


def _setup_forward(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:_N_ARGS])  # optional inputs are saved as None


def _forward_bwd(ctx, grad_row, grad_col):
    args = list(ctx.saved_tensors)
    x, y, scale, alpha_col = args[0], args[1], args[2], args[5]
    acc = compute_dtype(x.dtype)
    grad_row = torch.zeros(x.shape[0], dtype=acc, device=x.device) if grad_row is None else grad_row.to(acc)
    if alpha_col is not None:
        grad_col = torch.zeros(y.shape[0], dtype=acc, device=x.device) if grad_col is None else grad_col.to(acc)
    else:
        grad_col = None
    dx, dy, ds = _ops.backward(*args, grad_row, grad_col)
    return (dx, dy, ds.to(scale.dtype).reshape(scale.shape)) + (None,) * (_N_ARGS - 3)


def _setup_forward_backward(ctx, inputs, output):
    _, dx, dy, ds = output
    # Only the loss is differentiated: without this, autograd would hand the backward
    # zero-filled gradients for the dx, dy outputs, (M + N) x D of memory for nothing.
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(dx, dy, ds)
    ctx.scale_dtype = inputs[2].dtype
    ctx.scale_shape = inputs[2].shape


def _forward_backward_bwd(ctx, grad_loss, _gdx, _gdy, _gds):
    # The saved gradients are scaled in place and handed over: no second (M + N) x D copy.
    # A second backward through the same graph (retain_graph=True) is therefore refused by
    # autograd ("modified by an inplace operation"); use reduction="none" for that.
    dx, dy, ds = ctx.saved_tensors
    if grad_loss is None:  # the loss was not used (only its gradient outputs were)
        return (None,) * _N_ARGS
    g = grad_loss.to(ds.dtype)
    gs = (g * ds).to(ctx.scale_dtype).reshape(ctx.scale_shape)
    return (dx.mul_(g.to(dx.dtype)), dy.mul_(g.to(dy.dtype)), gs) + (None,) * (_N_ARGS - 1)


torch.library.register_autograd("psd::forward", _forward_bwd, setup_context=_setup_forward)
torch.library.register_autograd("psd::forward_backward", _forward_backward_bwd,
                                setup_context=_setup_forward_backward)


# ---- backend contract ----------------------------------------------------------------------

def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _weights(n: int, reduction: str, factor: float, like: torch.Tensor) -> torch.Tensor:
    value = factor / n if reduction == "mean" else factor
    return torch.full((n,), value, dtype=compute_dtype(like.dtype), device=like.device)


def _run(x, y, scale, alpha, labels, alpha_col, teacher_x, teacher_y, teacher_scale, reduction, factor):
    """Losses per `reduction`; `factor` weights each direction (0.5 for the symmetric loss)."""
    args = (x, y, scale, alpha, labels, alpha_col, teacher_x, teacher_y, teacher_scale)
    if reduction != "none" and _needs_grad(x, y, scale):
        w_row = _weights(x.shape[0], reduction, factor, x)
        w_col = _weights(y.shape[0], reduction, factor, x) if alpha_col is not None else None
        return _ops.forward_backward(*args, w_row, w_col)[0]
    rows, cols = _ops.forward(*args)
    if reduction == "none":
        return rows if alpha_col is None else torch.stack((rows, cols))
    total = rows.sum() if alpha_col is None else rows.sum() + cols.sum()
    n = x.shape[0] if reduction == "mean" else 1
    return factor * total / n


def _detached(t):
    return None if t is None else t.detach()


def psd_loss(x, y, scale, alpha, labels, teacher_x, teacher_y, teacher_scale, reduction):
    """One direction of the PSD loss (backend contract of psd_kernels.backends)."""
    return _run(x, y, scale, alpha, labels, None, _detached(teacher_x), _detached(teacher_y),
                _detached(teacher_scale), reduction, 1.0)


def psd_clip_loss(image, text, scale, alpha_image, alpha_text, teacher_image, teacher_text, teacher_scale,
                  reduction):
    """The symmetric loss on one B x B matrix in two sweeps over the rows (see csrc/psd_loss.cpp)."""
    labels = torch.arange(image.shape[0], device=image.device)
    return _run(image, text, scale, alpha_image, labels, alpha_text, _detached(teacher_image),
                _detached(teacher_text), _detached(teacher_scale), reduction, 0.5)
