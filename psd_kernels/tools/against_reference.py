"""A backend against the float64 reference: one error measure and one tolerance table.

    got = loss_and_grads("psd_clip_loss", "triton", x, y, scale, kwargs, upstream, "none")
    want = loss_and_grads("psd_clip_loss", "reference", x, y, scale, kwargs, upstream, "none", float64=True)
    errors(got, want)  # [loss, dx, dy, dscale]: max error / max(|reference|, 0.05)

Used by tests/test_cpp.py, tests/test_triton.py and benchmarks/device_check.py's correctness and
timing stages (benchmarks/device_stages/, run on a GPU machine without pytest: torch only, no numpy).

The error of a result is its largest deviation from the float64 reference divided by the
reference's largest magnitude, at least 0.05 (a one-column loss is exactly 0 but computed as
lse - S_ii with S ~ 20). Two criteria:

* tensor_cores: a GPU backend whose gradient products take G rounded to the input dtype
  (Triton on a GPU, the C++ CUDA op): error <= TOLERANCE[dtype]["tensor_cores"].
* fp32_dots: dot operands in fp32 or wider (Triton under the interpreter, the C++ CPU op), so
  only the fp32 accumulation and the gradients' final rounding to the input dtype remain:
  error <= TOLERANCE[dtype]["fp32_dots"]; and, against the reference run in the same dtype
  (which rounds the same way), error <= 2 x that reference's own error + the same figure
  (flash-attention's criterion; within_twice_the_reference).
"""
from __future__ import annotations

import torch

MAGNITUDE_FLOOR = 0.05

# Max error / max(|float64 reference|, 0.05), by input dtype and how the backend's products round.
# fp32: fp32 accumulation of dot products at logit scales up to 100 loses ~1e-6 relative; 2e-5
# leaves margin. fp16/bf16 on tensor cores: G and the gradients rounded to the input dtype
# (2^-11 / 2^-8 relative). With fp32 dots only the gradients' final rounding remains (half an
# ulp: 2^-11 fp16, 2^-8 bf16). float64 runs float64 end to end (the C++ op).
TOLERANCE = {
    torch.float64: {"fp32_dots": 1e-11},
    torch.float32: {"tensor_cores": 2e-5, "fp32_dots": 2e-5},
    torch.float16: {"tensor_cores": 4e-3, "fp32_dots": 1e-3},
    torch.bfloat16: {"tensor_cores": 3e-2, "fp32_dots": 8e-3},
}
NAMES = ("loss", "dx", "dy", "dscale")


def tolerance(dtype: torch.dtype, dots: str) -> float:
    """TOLERANCE[dtype][dots]; dots is "tensor_cores" or "fp32_dots"."""
    return TOLERANCE[dtype][dots]


def _double(kwargs: dict) -> dict:
    return {k: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in kwargs.items()}


def loss_and_grads(op: str, backend: str, x, y, scale, kwargs: dict, upstream=None, reduction="none",
                   float64=False) -> tuple:
    """(loss, dL/dx, dL/dy, dL/dscale) of L = sum(upstream * loss) (upstream None: sum(loss)) for
    psd_kernels.<op> ("psd_loss" or "psd_clip_loss") on `backend`, from fresh leaves; `float64`
    runs the inputs (and floating keyword tensors) in float64, as the reference does to prove the math."""
    import psd_kernels
    if float64:
        x, y, scale, kwargs = x.double(), y.double(), scale.double(), _double(kwargs)
    x, y, scale = (t.detach().requires_grad_() for t in (x, y, scale))  # no copy: an offset start stays
    loss = getattr(psd_kernels, op)(x, y, scale, reduction=reduction, backend=backend, **kwargs)
    total = loss.sum() if upstream is None else (loss * upstream.to(loss.dtype)).sum()
    grads = torch.autograd.grad(total, (x, y, scale))
    return (loss.detach(),) + tuple(g.detach() for g in grads)


def error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Max |actual - expected| / max(max |expected|, MAGNITUDE_FLOOR)."""
    actual, expected = actual.detach().double(), expected.detach().double()
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(MAGNITUDE_FLOOR)).item()


def errors(got, want) -> list:
    """error() of each of (loss, dx, dy, dscale)."""
    return [error(a, e) for a, e in zip(got, want)]


def dtypes_ok(got, dtype: torch.dtype) -> bool:
    """The loss in float32 (float64 for float64 inputs), the gradients in the input dtype."""
    loss_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    return got[0].dtype == loss_dtype and got[1].dtype == dtype and got[2].dtype == dtype


def assert_close(got, want, tol: float) -> None:
    """Each of (loss, dx, dy, dscale) within `tol` of the float64 reference (same shapes)."""
    for name, a, e in zip(NAMES, got, want):
        assert a.shape == e.shape, f"{name}: shape {tuple(a.shape)} != {tuple(e.shape)}"
        err = error(a, e)
        assert err <= tol, f"{name}: error {err:.3e} > {tol:.1e} (max error / max(|reference|, 0.05))"


def within_twice_the_reference(got, base, exact, dtype: torch.dtype) -> None:
    """got's error against `exact` (float64) at most 2 x base's (the reference in got's dtype) plus
    TOLERANCE[dtype]["fp32_dots"]; dtypes and shapes as base's, values finite."""
    floor = tolerance(dtype, "fp32_dots")
    for name, g, b, e in zip(NAMES, got, base, exact):
        assert g.dtype == b.dtype and g.shape == b.shape, \
            f"{name}: {g.dtype}{tuple(g.shape)} vs {b.dtype}{tuple(b.shape)}"
        assert torch.isfinite(g).all(), f"{name} is not finite"
        bound = 2 * error(b, e) + floor
        assert error(g, e) <= bound, f"{name}: error {error(g, e):.2e} > {bound:.2e} ({dtype})"
