"""The C++ sigmoid (SigLIP) op (psd::siglip_*, csrc/psd_siglip.cpp) against the float64 reference.

    .venv/bin/python -m pytest tests/test_cpp_siglip.py -q

The backend contract functions (psd_kernels.backends.cpp.siglip_rows and
siglip_weighted_loss) are called with normalised inputs, as psd_kernels.assembly calls them,
and compared with psd_kernels.backends.siglip_reference.siglip_rows. float64 proves the math:
the op runs in float64 end to end, so loss and gradients (x, y, scale, bias) agree to 1e-10
relative. Lower precisions prove the kernel with the project's criterion
(psd_kernels.tools.against_reference): against the float64 reference on the same rounded
inputs, the op's error is at most twice the reference's own error in that dtype (the reference
also accumulates in fp32 and rounds its gradients to the input dtype) plus the fp32-dots
figure of TOLERANCE (fp32 2e-5, fp16 1e-3, bf16 8e-3). CUDA cases run where a GPU exists.
"""
from __future__ import annotations

import pytest
import torch

from psd_kernels.backends import siglip_reference as reference
from psd_kernels.tools import against_reference as A

cpp = pytest.importorskip("psd_kernels.backends.cpp", reason="psd_kernels._C is not built "
                          "(pip install --no-build-isolation --use-pep517 -e .)", exc_type=ImportError)

HAS_CUDA = torch.cuda.is_available()
NAMES = ("loss", "dx", "dy", "dscale", "dbias")
F64 = torch.float64

# teacher case -> keyword arguments (s~, b~ as 0-dim tensors; embeddings made per test)
TEACHERS = ("self", "self_scaled_scale", "self_scaled_bias", "self_scaled_both", "separate",
            "separate_default_scale_bias")


def _embed(n, d, dtype=F64, device="cpu"):
    """Unit-norm rows like CLIP features."""
    return torch.nn.functional.normalize(torch.randn(n, d, dtype=F64), dim=1).to(dtype).to(device)


def _teacher(kind, m, n, dtype, device="cpu"):
    acc = torch.float64 if dtype == F64 else torch.float32
    ts, tb = torch.tensor(25.0, dtype=acc, device=device), torch.tensor(-4.0, dtype=acc, device=device)
    t = dict(teacher_x=None, teacher_y=None, teacher_scale=None, teacher_bias=None)
    if kind == "self_scaled_scale":
        t.update(teacher_scale=ts)
    elif kind == "self_scaled_bias":
        t.update(teacher_bias=tb)
    elif kind == "self_scaled_both":
        t.update(teacher_scale=ts, teacher_bias=tb)
    elif kind.startswith("separate"):
        t.update(teacher_x=_embed(m, 17, dtype, device), teacher_y=_embed(n, 17, dtype, device))
        if kind == "separate":
            t.update(teacher_scale=torch.tensor(6.0, dtype=acc, device=device), teacher_bias=tb)
    return t


def _case(m, n, d, dtype=F64, teacher="self", scale=12.0, bias=-5.0, labels="random", device="cpu"):
    """Normalised contract inputs: (x, y, scale, bias) and the keyword arguments."""
    acc = torch.float64 if dtype == F64 else torch.float32
    if labels == "offset":  # rows are this rank's images, their texts start at column n - m
        lab = torch.arange(m) + (n - m)
    else:
        lab = torch.randint(0, n, (m,))
    kw = dict(alpha_rows=torch.rand(m, dtype=acc, device=device), alpha_cols=torch.rand(n, dtype=acc, device=device),
              labels=lab.to(device), **_teacher(teacher, m, n, dtype, device))
    tensors = [_embed(m, d, dtype, device), _embed(n, d, dtype, device), torch.tensor(scale, dtype=acc, device=device),
               torch.tensor(bias, dtype=acc, device=device)]
    return tensors, kw


def _loss_and_grads(module, tensors, kw, reduction, upstream=None, bias_grad=True, float64=False):
    """(loss, dx, dy, dscale, dbias) of one backend's contract functions, from fresh leaves.
    reduction "none": siglip_rows and L = sum(upstream * rows); "mean"/"sum": siglip_weighted_loss
    (the reference: weight * sum(siglip_rows))."""
    if float64:
        tensors = [t.double() for t in tensors]
        kw = {k: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in kw.items()}
    x, y, s, b = (t.detach().clone() for t in tensors)
    leaves = [x, y, s] + ([b] if bias_grad else [])
    for t in leaves:
        t.requires_grad_(True)
    args = (x, y, s, b, kw["alpha_rows"], kw["alpha_cols"], kw["labels"], kw["teacher_x"], kw["teacher_y"],
            kw["teacher_scale"], kw["teacher_bias"])
    if reduction == "none":
        loss = module.siglip_rows(*args)
        total = (loss * upstream.to(loss.dtype)).sum()
    else:
        weight = 1.0 / x.shape[0] if reduction == "mean" else 1.0
        if module is cpp:
            loss = cpp.siglip_weighted_loss(*args, weight)
        else:
            loss = weight * module.siglip_rows(*args).sum()
        total = loss
    grads = torch.autograd.grad(total, leaves)
    out = (loss.detach(),) + tuple(g.detach() for g in grads)
    return out if bias_grad else out + (None,)


def _assert_float64(got, want, rtol=1e-10):
    for name, g, w in zip(NAMES, got, want):
        if w is None:
            assert g is None, name
            continue
        assert g.dtype == w.dtype and g.shape == w.shape, \
            f"{name}: {g.dtype}{tuple(g.shape)} vs {w.dtype}{tuple(w.shape)}"
        err = ((g - w).abs().max() / w.abs().max().clamp_min(1.0)).item()
        assert err <= rtol, f"{name}: relative error {err:.2e} > {rtol:.0e}"


def _compare_float64(tensors, kw, reduction, upstream=None, bias_grad=True):
    want = _loss_and_grads(reference, tensors, kw, reduction, upstream, bias_grad)
    got = _loss_and_grads(cpp, tensors, kw, reduction, upstream, bias_grad)
    _assert_float64(got, want)


# (M, N, D, labels): sizes off every tile and slab multiple, M != N, positives at an offset
SHAPES = [(1, 1, 3, "random"), (1, 1025, 100, "random"), (7, 97, 513, "offset"), (97, 7, 3, "random"),
          (97, 1025, 3, "offset"), (1025, 97, 100, "random"), (1025, 1030, 513, "offset"), (300, 7, 513, "random")]


@pytest.mark.parametrize("m,n,d,labels", SHAPES)
@pytest.mark.parametrize("reduction", ("mean", "none"))
def test_awkward_shapes_match_reference_float64(m, n, d, labels, reduction):
    teacher = "separate" if d == 100 else ("self_scaled_both" if d == 513 else "self")
    tensors, kw = _case(m, n, d, teacher=teacher, labels=labels)
    _compare_float64(tensors, kw, reduction, torch.randn(m, dtype=F64) if reduction == "none" else None)


@pytest.mark.parametrize("teacher", TEACHERS)
@pytest.mark.parametrize("reduction", ("mean", "sum", "none"))
@pytest.mark.parametrize("bias_grad", (True, False), ids=("bias_grad", "bias_const"))
def test_teacher_cases_and_reductions_float64(teacher, reduction, bias_grad):
    m, n = 97, 130
    tensors, kw = _case(m, n, 33, teacher=teacher)
    _compare_float64(tensors, kw, reduction, torch.randn(m, dtype=F64) if reduction == "none" else None, bias_grad)


def test_alpha_zero_is_hard_target_float64():
    """a = 0: q = z, whatever the teacher (open_clip's SigLipLoss; the reference proves that equality)."""
    m, n = 97, 260
    tensors, kw = _case(m, n, 64, teacher="separate", labels="offset")
    kw.update(alpha_rows=torch.zeros(m, dtype=F64), alpha_cols=torch.zeros(n, dtype=F64))
    _compare_float64(tensors, kw, "mean")


def test_extreme_logits_float64():
    """|l| up to ~110: softplus and sigmoid in their stable forms, no overflow, no cut-off."""
    tensors, kw = _case(97, 130, 33, teacher="self_scaled_both", scale=100.0, bias=-10.0)
    _compare_float64(tensors, kw, "sum")


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16))
@pytest.mark.parametrize("teacher", ("self", "self_scaled_both", "separate"))
@pytest.mark.parametrize("reduction", ("mean", "none"))
def test_low_precision_within_twice_the_reference(dtype, teacher, reduction):
    m, n = 300, 257
    tensors, kw = _case(m, n, 64, dtype, teacher=teacher, scale=30.0, bias=-8.0)
    upstream = torch.randn(m) if reduction == "none" else None
    exact = _loss_and_grads(reference, tensors, kw, reduction, upstream, float64=True)
    base = _loss_and_grads(reference, tensors, kw, reduction, upstream)
    got = _loss_and_grads(cpp, tensors, kw, reduction, upstream)
    floor = A.tolerance(dtype, "fp32_dots")
    for name, g, b, e in zip(NAMES, got, base, exact):
        assert g.dtype == b.dtype and g.shape == b.shape, f"{name}: {g.dtype} vs {b.dtype}"
        assert torch.isfinite(g).all(), f"{name} is not finite"
        bound = 2 * A.error(b, e) + floor
        assert A.error(g, e) <= bound, f"{name}: error {A.error(g, e):.2e} > {bound:.2e} ({dtype})"


def test_gradient_dtypes_follow_inputs():
    """dx, dy in the input dtype; dscale, dbias in the scale's and bias's dtypes and shapes."""
    tensors, kw = _case(33, 40, 16, torch.bfloat16)
    got = _loss_and_grads(cpp, tensors, kw, "mean")
    assert got[0].dtype == torch.float32 and got[1].dtype == got[2].dtype == torch.bfloat16
    assert got[3].dtype == got[4].dtype == torch.float32 and got[3].shape == got[4].shape == ()


@pytest.mark.parametrize("teacher", ("self_scaled_both", "separate"))
@pytest.mark.parametrize("reduction", ("mean", "none"))
def test_thread_count_does_not_change_results(teacher, reduction):
    """Slabs and tiles come from M and N alone, each GEMM is one single-threaded BLAS call of a
    fixed shape, each output element gets its contributions in a fixed order: 1 thread and all
    threads agree bit for bit."""
    m, n = 700, 650  # several slabs and tiles on both sides
    tensors, kw = _case(m, n, 64, torch.float32, teacher=teacher)
    upstream = torch.randn(m) if reduction == "none" else None
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = _loss_and_grads(cpp, tensors, kw, reduction, upstream)
    finally:
        torch.set_num_threads(threads)
    many = _loss_and_grads(cpp, tensors, kw, reduction, upstream)
    for name, a, b in zip(NAMES, single, many):
        assert torch.equal(a, b), name


def test_no_grad_runs_forward_only():
    tensors, kw = _case(7, 9, 3)
    x, y, s, b = tensors
    args = (kw["alpha_rows"], kw["alpha_cols"], kw["labels"], None, None, None, None)
    with torch.no_grad():
        out = cpp.siglip_weighted_loss(x.requires_grad_(), y, s, b, *args, 0.5)
    assert not out.requires_grad
    want = 0.5 * reference.siglip_rows(x.detach(), y, s, b, *args).sum()
    assert torch.allclose(out, want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("reduction", ("mean", "none"))
def test_teacher_gets_no_gradient(reduction):
    m, n = 7, 9
    x, y, s, b = (t.requires_grad_() for t in _case(m, n, 3)[0])
    tx, ty = _embed(m, 4).requires_grad_(), _embed(n, 4).requires_grad_()
    ts, tb = torch.tensor(5.0, dtype=F64, requires_grad=True), torch.tensor(1.0, dtype=F64, requires_grad=True)
    args = (x, y, s, b, torch.full((m,), 0.5, dtype=F64), torch.full((n,), 0.5, dtype=F64), torch.arange(m),
            tx, ty, ts, tb)
    loss = cpp.siglip_rows(*args).sum() if reduction == "none" else cpp.siglip_weighted_loss(*args, 1.0 / m)
    loss.backward()
    assert x.grad is not None and y.grad is not None and s.grad is not None and b.grad is not None
    assert tx.grad is None and ty.grad is None and ts.grad is None and tb.grad is None


def _op_args(m=5, n=6, d=3, **change):
    args = dict(x=_embed(m, d), y=_embed(n, d), scale=torch.tensor(10.0, dtype=F64), bias=torch.tensor(0.0, dtype=F64),
                alpha_rows=torch.zeros(m, dtype=F64), alpha_cols=torch.zeros(n, dtype=F64),
                labels=torch.zeros(m, dtype=torch.long), teacher_x=None, teacher_y=None, teacher_scale=None,
                teacher_bias=None)
    args.update(change)
    return args


@pytest.mark.parametrize("change,message", [
    (dict(y=_embed(6, 4)), "x and y must have the same width"),
    (dict(y=_embed(6, 3, torch.float32)), "x and y must have one dtype"),
    (dict(scale=torch.tensor(-1.0, dtype=F64)), "scale must be > 0"),
    (dict(bias=torch.zeros(2, dtype=F64)), "bias must have one element"),
    (dict(alpha_rows=torch.zeros(4, dtype=F64)), r"alpha_rows must have shape \(5\)"),
    (dict(alpha_cols=torch.zeros(5, dtype=F64)), r"alpha_cols must have shape \(6\)"),
    (dict(labels=torch.zeros(5, dtype=torch.int32)), "labels must be int64"),
    (dict(labels=torch.full((5,), 6)), r"labels must lie in \[0, 6\)"),
    (dict(teacher_x=_embed(5, 2)), "teacher_x and teacher_y: give both or neither"),
    (dict(teacher_x=_embed(5, 2), teacher_y=_embed(6, 3)), "teacher_y must be 6 x 2"),
    (dict(teacher_scale=torch.tensor(0.0, dtype=F64)), "teacher_scale must be > 0"),
    (dict(teacher_bias=torch.zeros(3, dtype=F64)), "teacher_bias must have one element"),
])
def test_op_errors_name_the_argument(change, message):
    with pytest.raises(RuntimeError, match=message):
        torch.ops.psd.siglip_forward(**_op_args(**change))


def test_gradient_op_errors_name_the_weights():
    with pytest.raises(RuntimeError, match=r"grad_rows must have shape \(5\)"):
        torch.ops.psd.siglip_backward(**_op_args(), grad_rows=torch.zeros(4, dtype=F64))
    with pytest.raises(RuntimeError, match=r"weight_rows must have shape \(5\)"):
        torch.ops.psd.siglip_forward_backward(**_op_args(), weight_rows=torch.zeros(6, dtype=F64))


@pytest.mark.parametrize("reduction", ("mean", "none"))
def test_torch_compile_fullgraph(reduction):
    """The ops trace with their fake implementations and autograd formulas (forward and backward graphs)."""
    m, n = 33, 40
    tensors, kw = _case(m, n, 8, torch.float32, teacher="separate")
    upstream = torch.randn(m) if reduction == "none" else None
    args = (kw["alpha_rows"], kw["alpha_cols"], kw["labels"], kw["teacher_x"], kw["teacher_y"], kw["teacher_scale"],
            kw["teacher_bias"])

    def step(x, y, s, b):
        if reduction == "none":
            return (cpp.siglip_rows(x, y, s, b, *args) * upstream).sum()
        return cpp.siglip_weighted_loss(x, y, s, b, *args, 1.0 / m)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    results = []
    for fn in (compiled, step):
        leaves = [t.detach().clone().requires_grad_() for t in tensors]
        loss = fn(*leaves)
        results.append((loss.detach(),) + torch.autograd.grad(loss, leaves))
    for name, a, b in zip(NAMES, *results):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU on this machine")
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32, torch.float16, torch.bfloat16))
@pytest.mark.parametrize("teacher", ("self", "self_scaled_both", "separate"))
@pytest.mark.parametrize("reduction", ("mean", "none"))
def test_cuda_matches_reference(dtype, teacher, reduction):
    if not cpp.cuda_built():
        pytest.skip("psd_kernels._C was built without CUDA")
    m, n = 97, 1025
    tensors, kw = _case(m, n, 64, dtype, teacher=teacher, labels="offset", device="cuda")
    upstream = torch.randn(m, device="cuda") if reduction == "none" else None
    exact = _loss_and_grads(reference, tensors, kw, reduction, upstream, float64=True)
    got = _loss_and_grads(cpp, tensors, kw, reduction, upstream)
    if dtype == F64:
        _assert_float64(got, exact)
        return
    base = _loss_and_grads(reference, tensors, kw, reduction, upstream)
    floor = A.tolerance(dtype, "fp32_dots")  # the CUDA op multiplies fp32 copies of the inputs
    for name, g, b, e in zip(NAMES, got, base, exact):
        assert g.dtype == b.dtype and torch.isfinite(g).all(), name
        bound = 2 * A.error(b, e) + floor
        assert A.error(g, e) <= bound, f"{name}: error {A.error(g, e):.2e} > {bound:.2e} ({dtype})"
