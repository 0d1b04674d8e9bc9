"""The Triton sigmoid (SigLIP) kernels against the float64 reference, through the backend contract.

    .venv/bin/python -m pytest tests/test_triton_siglip.py -q

Two roles, as tests/test_triton.py (Triton's interpreter must be switched on before triton is
first imported, and other test modules in the same process may import it first):

* launcher (TRITON_INTERPRET unset): `test_interpreted_cases_pass_in_a_triton_interpret_child`
  re-runs this file in a child pytest with TRITON_INTERPRET=1 and asserts it passed; the CUDA
  cases run in-process when a GPU exists.
* interpreted (TRITON_INTERPRET=1, that child or by hand:
  `TRITON_INTERPRET=1 .venv/bin/python -m pytest tests/test_triton_siglip.py -q`): the cases
  below run on CPU tensors.

Every case compares psd_kernels.backends.triton.siglip_launcher's siglip_rows ("none", with a
random per-row upstream gradient) or siglip_weighted_loss (mean and sum, with an upstream scalar)
against psd_kernels.backends.siglip_reference.siglip_rows run in float64 on the same rounded
inputs: the loss and the gradients of x, y, the scale and the bias. Error = max deviation /
max(|reference|, 0.05), within psd_kernels.tools.against_reference's tolerance for the dtype:
"fp32_dots" interpreted (the interpreter's reduced-precision tl.dot is wrong, so the kernels
upcast dot operands to fp32 there: only G's and the gradients' rounding to the input dtype
remain), "tensor_cores" on a GPU (fp32 2e-5; fp16 1e-3 / 4e-3; bf16 8e-3 / 3e-2).
"""
from __future__ import annotations

import os

import pytest
import torch

import triton_interpreter
from psd_kernels.backends import siglip_reference
from psd_kernels.tools import against_reference as A

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
if INTERPRETED and triton_interpreter.fault():
    pytest.skip(triton_interpreter.fault(), allow_module_level=True)
HAS_CUDA = torch.cuda.is_available()
DOTS = "fp32_dots" if INTERPRETED else "tensor_cores"
NAMES = ("loss", "dx", "dy", "dscale", "dbias")

# The teacher cases of docs/siglip_loss.md, with the ways s~ and b~ are given (None: the student's, detached).
TEACHERS = ("self", "self_scaled", "self_biased", "self_scaled_biased", "separate", "separate_student_scale")
# (M, N, D): rows and columns in 1, 7, 33, 70, 97, D in 3, 64, 100; never a tile multiple except D = 64.
# M < N puts the positives at an offset (the last rank's rows); M > N draws them at random.
SHAPES = ((1, 7, 3), (7, 97, 64), (97, 33, 100), (33, 70, 3), (70, 1, 64))

interpreted = pytest.mark.skipif(not INTERPRETED, reason="runs in the TRITON_INTERPRET=1 child (see docstring)")
cuda = pytest.mark.skipif(not HAS_CUDA or INTERPRETED, reason="needs a CUDA GPU")


def _launcher():
    from psd_kernels.backends.triton import siglip_launcher
    return siglip_launcher


def _embed(n, d, dtype, device):
    """Unit-norm rows like CLIP features, in `dtype`."""
    e = torch.randn(n, d, dtype=torch.float64)
    return torch.nn.functional.normalize(e, dim=1).to(dtype).to(device)


def make_case(m, n, d, dtype, device, teacher, scale=10.0, bias=-4.0, dt=5):
    """Contract arguments (x, y, scale, bias, alpha_rows, alpha_cols, labels, x~, y~, s~, b~)."""
    x, y = _embed(m, d, dtype, device), _embed(n, d, dtype, device)
    labels = torch.arange(m) + (n - m) if n >= m else torch.randint(0, n, (m,))
    tx = ty = ts = tb = None
    if teacher in ("self_scaled", "self_scaled_biased", "separate"):
        ts = torch.tensor(6.5, device=device)
    if teacher in ("self_biased", "self_scaled_biased", "separate"):
        tb = torch.tensor(-2.5, device=device)
    if teacher.startswith("separate"):
        tx, ty = _embed(m, dt, dtype, device), _embed(n, dt, dtype, device)
    return (x, y, torch.tensor(scale, device=device), torch.tensor(bias, device=device),
            torch.rand(m, device=device), torch.rand(n, device=device), labels.to(device), tx, ty, ts, tb)


def _double(args):
    return tuple(a.double() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def loss_and_grads(args, reduction, upstream, reference, bias_grad=True):
    """(loss, dx, dy, dscale, dbias) of sum(upstream * loss): the Triton launcher's siglip_rows ("none") or
    siglip_weighted_loss (mean, sum), or the float64 reference's rows reduced by hand."""
    if reference:
        args = _double(args)
    x, y, scale, bias = (t.detach().clone().requires_grad_(t is not args[3] or bias_grad) for t in args[:4])
    full = (x, y, scale, bias) + args[4:]
    weight = {"none": None, "sum": 1.0, "mean": 1.0 / x.shape[0]}[reduction]
    if reference:
        rows = siglip_reference.siglip_rows(*full)
        loss = rows if weight is None else weight * rows.sum()
    elif weight is None:
        loss = _launcher().siglip_rows(*full)
    else:
        loss = _launcher().siglip_weighted_loss(*full, weight)
    leaves = (x, y, scale, bias) if bias_grad else (x, y, scale)
    grads = torch.autograd.grad((loss * upstream.to(loss.dtype)).sum(), leaves)
    return (loss.detach(),) + tuple(g.detach() for g in grads)


def check(m, n, d, dtype, device, teacher, reduction="none", tol=None, bias_grad=True, **case):
    args = make_case(m, n, d, dtype, device, teacher, **case)
    upstream = torch.randn(m, device=device) if reduction == "none" else torch.tensor(1.7, device=device)
    got = loss_and_grads(args, reduction, upstream, reference=False, bias_grad=bias_grad)
    want = loss_and_grads(args, reduction, upstream, reference=True, bias_grad=bias_grad)
    assert got[0].dtype == torch.float32 and got[1].dtype == dtype and got[2].dtype == dtype, \
        "the loss in float32, the embeddings' gradients in the input dtype"
    assert got[3].dtype == torch.float32 and (not bias_grad or got[4].dtype == torch.float32)
    tol = tol if tol is not None else A.tolerance(dtype, DOTS)
    for name, a, e in zip(NAMES, got, want):
        assert a.shape == e.shape, f"{name}: shape {tuple(a.shape)} != {tuple(e.shape)}"
        err = A.error(a, e)
        assert err <= tol, f"{name}: error {err:.3e} > {tol:.1e} ({teacher}, {reduction}, {m}x{n}x{d}, {dtype})"


@interpreted
@pytest.mark.parametrize("teacher", TEACHERS)
@pytest.mark.parametrize("m,n,d", SHAPES)
def test_rows_with_per_row_upstream_match_reference_fp32(m, n, d, teacher):
    """reduction "none": the loss-only forward, then the backward's tiles weighted by a random upstream
    gradient per row; M = 97 and 70 take several G chunks (dy summed over them)."""
    check(m, n, d, torch.float32, "cpu", teacher)


@interpreted
@pytest.mark.parametrize("reduction", ("mean", "sum"))
@pytest.mark.parametrize("teacher", TEACHERS)
def test_weighted_loss_gradients_in_one_pass_match_reference_fp32(teacher, reduction):
    """mean and sum: loss and every gradient from the one pass, scaled by the upstream gradient."""
    check(45, 33, 100, torch.float32, "cpu", teacher, reduction)
    check(7, 70, 3, torch.float32, "cpu", teacher, reduction)


@interpreted
@pytest.mark.parametrize("reduction", ("none", "mean"))
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("teacher", ("self", "separate"))
def test_half_precision_inputs_give_input_dtype_gradients(dtype, teacher, reduction):
    check(33, 70, 100, dtype, "cpu", teacher, reduction)


@interpreted
@pytest.mark.parametrize("reduction", ("none", "sum"))
def test_bias_without_gradient(reduction):
    """A bias that does not require a gradient: the other gradients are unchanged, none is formed for it."""
    check(33, 70, 64, torch.float32, "cpu", "self_scaled", reduction, bias_grad=False)


@interpreted
def test_extreme_logits_stay_finite_and_negatives_keep_fp32_precision():
    """s = 100 on unit vectors (logits to +-100) stays finite and exact; at SigLIP's start (b = -10)
    a negative pair's loss softplus(l) ~ 5e-5 is formed to fp32 relative precision (log1p, not
    log(1 + e^l))."""
    check(33, 70, 64, torch.float32, "cpu", "separate", scale=100.0, bias=3.0)
    check(33, 70, 64, torch.float32, "cpu", "self", "mean", scale=100.0, bias=-10.0)
    x = _embed(1, 16, torch.float32, "cpu")
    y = x.repeat(7, 1) * torch.linspace(-0.2, 0.2, 7)[:, None]        # l = 10 <x, y_j> - 10 in [-12, -8]
    args = (x, y, torch.tensor(10.0), torch.tensor(-10.0), torch.ones(1), torch.ones(7), torch.tensor([3]),
            None, None, None, torch.tensor(-40.0))                       # a = 1, q ~ e^-40: every pair a negative
    got = _launcher().siglip_rows(*args)
    want = siglip_reference.siglip_rows(*_double(args))
    assert ((got.double() - want).abs() / want).max() < 1e-5, (got, want)


@interpreted
def test_teacher_gets_no_gradient_and_partial_gradients():
    """Teacher tensors that require a gradient get none; with only x requiring one (y, scale, bias frozen)
    only dx is formed, on both paths, and it matches the reference's."""
    launcher = _launcher()
    x, y, scale, bias, ar, ac, labels, tx, ty, ts, tb = make_case(19, 40, 24, torch.float32, "cpu", "separate")
    tx, ty, ts, tb = (t.requires_grad_() for t in (tx, ty, ts, tb))
    rest = (y, scale, bias, ar, ac, labels, tx, ty, ts, tb)
    ref_x = x.double().requires_grad_()
    want = torch.autograd.grad(0.5 * siglip_reference.siglip_rows(ref_x, *_double(rest)).sum(), ref_x)[0]
    for weighted in (False, True):
        xg = x.clone().requires_grad_()
        loss = (launcher.siglip_weighted_loss(xg, *rest, 0.5) if weighted
                else 0.5 * launcher.siglip_rows(xg, *rest).sum())
        loss.backward()
        assert all(t.grad is None for t in (tx, ty, ts, tb))
        assert A.error(xg.grad, want) <= A.tolerance(torch.float32, DOTS)
    with torch.no_grad():
        assert not launcher.siglip_weighted_loss(x, *rest, 1.0).requires_grad


@interpreted
def test_gradient_chunks_and_split_products():
    """The interpreted G chunk (launcher._GRAD_CHUNK_BYTES) holds 16 rows here: 97 rows take seven chunks,
    dy accumulated over them; the dx products of a 16-row chunk split K."""
    from psd_kernels.backends.triton import launcher
    assert launcher._chunk_rows(97, 112, 4) == 16
    check(97, 97, 100, torch.float32, "cpu", "separate", "mean")


def test_float64_is_refused_by_supports():
    launcher = pytest.importorskip("psd_kernels.backends.triton.launcher")
    assert "float64" in launcher.supports(torch.device("cuda"), torch.float64)


@pytest.mark.skipif(INTERPRETED, reason="the interpreter gets a single config")
def test_autotune_configs_and_pruning():
    """32-wide tiles on 8 warps (128 rows: one warpgroup per 64 rows; 64 rows: 8 pairs per thread, registers
    capped at 224); the one pass with a separate teacher keeps the 64-row tile; never none."""
    sk = pytest.importorskip("psd_kernels.backends.triton.siglip_kernels")
    assert [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps) for c in sk.SIGLIP_CONFIGS] == \
        [(128, 32, 8), (64, 32, 8)]
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        named = {"a_ptr": torch.empty(1, 1, dtype=dtype)}
        for teacher in (0, 1, 2):
            for loss, write_g in ((True, False), (False, True), (True, True)):
                kept = sk._prune_siglip(sk.SIGLIP_CONFIGS, named, TEACHER=teacher, LOSS=loss, WRITE_G=write_g)
                one_pass_separate = teacher == 2 and loss and write_g
                assert kept == (sk.SIGLIP_CONFIGS[1:] if one_pass_separate else sk.SIGLIP_CONFIGS)


@cuda
class TestGPU:
    """Compiled kernels with tensor-core rounding; the first config that fits (no tuning runs)."""

    @pytest.fixture(autouse=True)
    def _no_autotune(self, monkeypatch):
        monkeypatch.setenv("PSD_TRITON_AUTOTUNE", "0")

    @pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16))
    @pytest.mark.parametrize("teacher", ("self", "self_scaled_biased", "separate"))
    @pytest.mark.parametrize("reduction", ("none", "mean"))
    def test_matches_reference(self, dtype, teacher, reduction):
        for m, n, d in SHAPES + ((1025, 777, 768), (512, 4096, 500)):
            check(m, n, d, dtype, "cuda", teacher, reduction, dt=48 if d != 3 else 5)


@pytest.mark.skipif(INTERPRETED, reason="this is the launcher of the interpreted run")
def test_interpreted_cases_pass_in_a_triton_interpret_child():
    triton_interpreter.assert_file_passes_interpreted(__file__)
