"""The C++ backend: the fused PSD loss ops of psd_kernels._C (CPU, and CUDA when built).

    loss = psd_kernels.psd_loss(x, y, logit_scale, alpha=0.3, backend="cpp")

Layered: the C++ ops check their inputs (TORCH_CHECK) and are registered with
torch.library as

    psd::forward           per-row losses, no gradient work
    psd::backward          gradients for per-row upstream gradients (recomputes)
    psd::forward_backward  a weighted loss sum_i w_i l_i and its gradients in one pass

This module adds their fake (meta) implementations, so torch.compile(fullgraph=True)
traces them, and their autograd formulas (docs/loss.md), then exposes the backend
contract of psd_kernels.backends: per-row losses (`psd_rows`, `clip_rows`) and the
weighted sums w * sum_i l_i that psd_kernels.assembly uses for the mean and sum
reductions (`weighted_loss`, `clip_weighted_loss`), plus `supports`. The sigmoid (SigLIP)
loss (docs/siglip_loss.md) has its own three ops, psd::siglip_forward, psd::siglip_backward
and psd::siglip_forward_backward, behind `siglip_rows` and `siglip_weighted_loss`.

Autograd and memory: a weighted sum has a scalar upstream gradient, so its forward
runs forward_backward and keeps dx, dy, ds (O((M + N) D)); the backward only scales
them. Per-row losses keep only their inputs, and the backward recomputes the
statistics with the per-row upstream gradients.
Without grad mode (or when nothing requires grad) only psd::forward runs.
Teacher tensors never receive a gradient. No double backward.

Tests: .venv/bin/python -m pytest tests/test_cpp.py tests/test_cpp_siglip.py -q
"""
from __future__ import annotations

import torch

from psd_kernels.validation import FLOAT_DTYPES, compute_dtype

try:
    from psd_kernels import _C
except ImportError as exc:  # the registry (psd_kernels.backends) reports this message
    raise ImportError(
        f"the C++ extension psd_kernels._C is not built ({exc}); run pip install --no-build-isolation --use-pep517 -e ."
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
        return None if _CUDA_BUILT else "psd_kernels._C was built without CUDA (see python -m psd_kernels.tools.info)"
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


def _run(x, y, scale, alpha, labels, alpha_col, teacher_x, teacher_y, teacher_scale, weight):
    """Per-row losses (weight None: (M,), or (2, B) with column rows) or weight * their sum."""
    args = (x, y, scale, alpha, labels, alpha_col, _detached(teacher_x), _detached(teacher_y),
            _detached(teacher_scale))
    if weight is not None and _needs_grad(x, y, scale):
        acc = compute_dtype(x.dtype)
        w_row = torch.full((x.shape[0],), weight, dtype=acc, device=x.device)
        w_col = torch.full((y.shape[0],), weight, dtype=acc, device=x.device) if alpha_col is not None else None
        return _ops.forward_backward(*args, w_row, w_col)[0]
    rows, cols = _ops.forward(*args)
    if weight is None:
        return rows if alpha_col is None else torch.stack((rows, cols))
    total = rows.sum() if alpha_col is None else rows.sum() + cols.sum()
    return weight * total


def _detached(t):
    return None if t is None else t.detach()


def psd_rows(x, y, scale, alpha, labels, teacher_x, teacher_y, teacher_scale):
    """Per-row losses of one direction (backend contract of psd_kernels.backends)."""
    return _run(x, y, scale, alpha, labels, None, teacher_x, teacher_y, teacher_scale, None)


def weighted_loss(x, y, scale, alpha, labels, teacher_x, teacher_y, teacher_scale, weight):
    """weight * sum_i l_i of one direction, its gradient computed in the same sweep."""
    return _run(x, y, scale, alpha, labels, None, teacher_x, teacher_y, teacher_scale, weight)


def _diagonal(image):
    return torch.arange(image.shape[0], device=image.device)


def clip_rows(image, text, scale, alpha_image, alpha_text, teacher_image, teacher_text, teacher_scale):
    """(2, B) per-row losses on one B x B matrix in two sweeps over the rows (see csrc/psd_loss.cpp)."""
    return _run(image, text, scale, alpha_image, _diagonal(image), alpha_text, teacher_image, teacher_text,
                teacher_scale, None)


def clip_weighted_loss(image, text, scale, alpha_image, alpha_text, teacher_image, teacher_text, teacher_scale,
                       weight):
    """weight * (sum of both directions' row losses) on one B x B matrix, gradients in the same sweeps."""
    return _run(image, text, scale, alpha_image, _diagonal(image), alpha_text, teacher_image, teacher_text,
                teacher_scale, weight)


# ---- the sigmoid (SigLIP) loss: psd::siglip_* (docs/siglip_loss.md, csrc/psd_siglip.cpp) ------
#
#     psd::siglip_forward            per-row sums row_i = sum_j softplus(l_ij) - q_ij l_ij (dot products only)
#     psd::siglip_backward           dx, dy, ds, db for per-row upstream gradients (recomputes)
#     psd::siglip_forward_backward   sum_i w_i row_i and its gradients in one sweep
#
# Differentiable inputs: x, y, scale, bias (positions 0-3); the rest (alphas, labels and the
# teacher's tensors) get None. Autograd and memory as for the softmax ops above.

@torch.library.register_fake("psd::siglip_forward")
def _siglip_forward_fake(x, y, scale, bias, alpha_rows, alpha_cols, labels, teacher_x, teacher_y, teacher_scale,
                         teacher_bias):
    return x.new_empty((x.shape[0],), dtype=compute_dtype(x.dtype))


@torch.library.register_fake("psd::siglip_backward")
def _siglip_backward_fake(x, y, scale, bias, alpha_rows, alpha_cols, labels, teacher_x, teacher_y, teacher_scale,
                          teacher_bias, grad_rows):
    acc = compute_dtype(x.dtype)
    return torch.empty_like(x), torch.empty_like(y), x.new_empty((), dtype=acc), x.new_empty((), dtype=acc)


@torch.library.register_fake("psd::siglip_forward_backward")
def _siglip_forward_backward_fake(x, y, scale, bias, alpha_rows, alpha_cols, labels, teacher_x, teacher_y,
                                  teacher_scale, teacher_bias, weight_rows):
    acc = compute_dtype(x.dtype)
    return (x.new_empty((), dtype=acc), torch.empty_like(x), torch.empty_like(y), x.new_empty((), dtype=acc),
            x.new_empty((), dtype=acc))


_SIGLIP_N_ARGS = 11


def _siglip_setup_forward(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:_SIGLIP_N_ARGS])  # optional inputs are saved as None


def _siglip_forward_bwd(ctx, grad_rows):
    args = list(ctx.saved_tensors)
    x, scale, bias = args[0], args[2], args[3]
    acc = compute_dtype(x.dtype)
    grad_rows = torch.zeros(x.shape[0], dtype=acc, device=x.device) if grad_rows is None else grad_rows.to(acc)
    dx, dy, ds, db = _ops.siglip_backward(*args, grad_rows)
    return (dx, dy, ds.to(scale.dtype).reshape(scale.shape), db.to(bias.dtype).reshape(bias.shape)) + \
        (None,) * (_SIGLIP_N_ARGS - 4)


def _siglip_setup_forward_backward(ctx, inputs, output):
    _, dx, dy, ds, db = output
    ctx.set_materialize_grads(False)  # only the loss is differentiated (see _setup_forward_backward)
    ctx.save_for_backward(dx, dy, ds, db)
    ctx.scale_dtype, ctx.scale_shape = inputs[2].dtype, inputs[2].shape
    ctx.bias_dtype, ctx.bias_shape = inputs[3].dtype, inputs[3].shape


def _siglip_forward_backward_bwd(ctx, grad_loss, _gdx, _gdy, _gds, _gdb):
    # the saved gradients are scaled in place and handed over, as in _forward_backward_bwd
    dx, dy, ds, db = ctx.saved_tensors
    if grad_loss is None:
        return (None,) * (_SIGLIP_N_ARGS + 1)
    g = grad_loss.to(ds.dtype)
    gs = (g * ds).to(ctx.scale_dtype).reshape(ctx.scale_shape)
    gb = (g * db).to(ctx.bias_dtype).reshape(ctx.bias_shape)
    return (dx.mul_(g.to(dx.dtype)), dy.mul_(g.to(dy.dtype)), gs, gb) + (None,) * (_SIGLIP_N_ARGS - 3)


torch.library.register_autograd("psd::siglip_forward", _siglip_forward_bwd, setup_context=_siglip_setup_forward)
torch.library.register_autograd("psd::siglip_forward_backward", _siglip_forward_backward_bwd,
                                setup_context=_siglip_setup_forward_backward)


def _siglip_run(x, y, scale, bias, alpha_rows, alpha_cols, labels, teacher_x, teacher_y, teacher_scale,
                teacher_bias, weight):
    """Per-row sums (weight None) or weight * their sum, the gradient then computed in the same sweep."""
    args = (x, y, scale, bias, alpha_rows, alpha_cols, labels, _detached(teacher_x), _detached(teacher_y),
            _detached(teacher_scale), _detached(teacher_bias))
    if weight is not None and _needs_grad(x, y, scale, bias):
        w_rows = torch.full((x.shape[0],), weight, dtype=compute_dtype(x.dtype), device=x.device)
        return _ops.siglip_forward_backward(*args, w_rows)[0]
    rows = _ops.siglip_forward(*args)
    return rows if weight is None else weight * rows.sum()


def siglip_rows(x, y, scale, bias, alpha_rows, alpha_cols, labels, teacher_x, teacher_y, teacher_scale,
                teacher_bias):
    """Per-row sigmoid losses row_i = sum_j softplus(l_ij) - q_ij l_ij, (M,) (backend contract of
    psd_kernels.backends); differentiable in x, y, scale and bias, per-row upstream gradients honoured."""
    return _siglip_run(x, y, scale, bias, alpha_rows, alpha_cols, labels, teacher_x, teacher_y, teacher_scale,
                       teacher_bias, None)


def siglip_weighted_loss(x, y, scale, bias, alpha_rows, alpha_cols, labels, teacher_x, teacher_y, teacher_scale,
                         teacher_bias, weight):
    """weight * sum_i row_i as a 0-dim tensor, its gradient computed in the same sweep (mean: 1/M, sum: 1)."""
    return _siglip_run(x, y, scale, bias, alpha_rows, alpha_cols, labels, teacher_x, teacher_y, teacher_scale,
                       teacher_bias, weight)
