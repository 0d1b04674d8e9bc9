"""The C++ backend (psd_kernels._C, backend="cpp") against the reference, through the public API.

    .venv/bin/python -m pytest tests/test_cpp.py -q

float64 proves the math (the kernel runs in float64 end to end, so it must agree
with the reference to ~1e-11). Lower precisions prove the kernel: its error
against the float64 reference may be at most twice the reference's own error in
that dtype, plus a floor (flash-attention's criterion; the harness and its one
tolerance table: psd_kernels.tools.against_reference). The reference also
accumulates in fp32 and returns gradients rounded to the input dtype, so both
carry the same kinds of error. CUDA cases run where a GPU exists and are skipped
with the reason elsewhere; that the CUDA kernels were compiled is checked always.
"""
from __future__ import annotations

import pytest
import torch

import psd_kernels
from psd_kernels import backends
from psd_kernels.tools import against_reference as A
from psd_kernels.tools.info import build_info
from psd_kernels.vocabulary import TEACHER_CASES

cpp = pytest.importorskip("psd_kernels.backends.cpp", reason="psd_kernels._C is not built "
                          "(pip install --no-build-isolation --use-pep517 -e .)", exc_type=ImportError)

HAS_CUDA = torch.cuda.is_available()
SIZES = (1, 7, 97, 1025)


def _embed(n, d, dtype=torch.float64, device="cpu"):
    """Unit-norm rows like CLIP features."""
    return torch.nn.functional.normalize(torch.randn(n, d, dtype=torch.float64), dim=1).to(dtype).to(device)


def _run(fn, backend, inputs, kwargs, upstream=None):
    """Loss and gradients of x, y, scale for one backend (fresh leaves each call)."""
    x, y, s = (t.detach().clone().requires_grad_(True) for t in inputs)
    out = fn(x, y, s, backend=backend, **kwargs)
    (out * upstream).sum().backward() if upstream is not None else out.backward()
    return out.detach(), x.grad, y.grad, s.grad


def _compare(fn, inputs, kwargs, upstream=None, device="cpu"):
    """backend="cpp" vs the reference in the inputs' dtype, both measured against float64."""
    dtype = inputs[0].dtype
    kwargs = dict(kwargs)
    reduction = kwargs.pop("reduction", "mean")

    def run(backend, float64=False):
        return A.loss_and_grads(fn.__name__, backend, *inputs, kwargs, upstream, reduction, float64=float64)

    exact = run("reference", float64=True)
    base = run("reference") if dtype != torch.float64 else exact
    A.within_twice_the_reference(run("cpp"), base, exact, dtype)


def _inputs(m, n, d, dtype=torch.float64, scale=14.0, device="cpu"):
    return [_embed(m, d, dtype, device), _embed(n, d, dtype, device),
            torch.tensor(scale, dtype=torch.float64 if dtype == torch.float64 else torch.float32, device=device)]


@pytest.mark.parametrize("m", SIZES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("d", (1, 3))
def test_one_direction_matches_reference_float64_awkward_shapes(m, n, d):
    alpha = torch.rand(m, dtype=torch.float64)
    labels = torch.randint(0, n, (m,))
    _compare(psd_kernels.psd_loss, _inputs(m, n, d), dict(alpha=alpha, labels=labels))


@pytest.mark.parametrize("m,n", [(1, 97), (97, 7), (1025, 97)])
@pytest.mark.parametrize("d", (64, 257))
def test_wide_embeddings_match_reference_float64(m, n, d):
    tx, ty = _embed(m, d + 5), _embed(n, d + 5)
    _compare(psd_kernels.psd_loss, _inputs(m, n, d),
             dict(alpha=torch.rand(m, dtype=torch.float64), labels=torch.randint(0, n, (m,)),
                  teacher_x=tx, teacher_y=ty, teacher_scale=9.0))


# the kernel cases, and a separate teacher at the student's own scale
TEACHER_CASES_AND_SAME_SCALE = (*TEACHER_CASES, "separate_same_scale")


def _teacher(kind, m, n, dtype, device="cpu"):
    if kind == "self":
        return {}
    if kind == "self_scaled":
        return dict(teacher_scale=30.0)
    t = dict(teacher_x=_embed(m, 17, dtype, device), teacher_y=_embed(n, 17, dtype, device))
    return t if kind == "separate_same_scale" else dict(t, teacher_scale=5.0)


@pytest.mark.parametrize("teacher", TEACHER_CASES_AND_SAME_SCALE)
@pytest.mark.parametrize("reduction", ("mean", "sum", "none"))
@pytest.mark.parametrize("alpha", ("zero", "scalar", "rows"))
def test_one_direction_options_float64(teacher, reduction, alpha):
    m, n = 97, 130
    a = {"zero": 0.0, "scalar": 0.4, "rows": torch.rand(m, dtype=torch.float64)}[alpha]
    upstream = torch.randn(m, dtype=torch.float64) if reduction == "none" else None
    _compare(psd_kernels.psd_loss, _inputs(m, n, 33),
             dict(alpha=a, labels=torch.randint(0, n, (m,)), reduction=reduction, **_teacher(teacher, m, n, torch.float64)),
             upstream)


def test_offset_labels_float64():
    _compare(psd_kernels.psd_loss, _inputs(7, 97, 3), dict(alpha=0.5, offset=40))


@pytest.mark.parametrize("teacher", TEACHER_CASES_AND_SAME_SCALE)
@pytest.mark.parametrize("reduction", ("mean", "sum", "none"))
def test_symmetric_options_float64(teacher, reduction):
    b = 97
    upstream = torch.randn(2, b, dtype=torch.float64) if reduction == "none" else None
    _compare(psd_kernels.psd_clip_loss, _inputs(b, b, 64),
             dict(alpha_image=torch.rand(b, dtype=torch.float64), alpha_text=0.3, reduction=reduction,
                  **{k.replace("_x", "_image").replace("_y", "_text"): v
                     for k, v in _teacher(teacher, b, b, torch.float64).items()}),
             upstream)


@pytest.mark.parametrize("b", (1, 7, 1025))
def test_symmetric_sizes_float64(b):
    _compare(psd_kernels.psd_clip_loss, _inputs(b, b, 3),
             dict(alpha_image=0.5, teacher_image=_embed(b, 5), teacher_text=_embed(b, 5)))


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16))
@pytest.mark.parametrize("teacher", ("self", "separate"))
def test_half_precision_matches_reference_within_tolerance(dtype, teacher):
    m, n = 300, 257
    _compare(psd_kernels.psd_loss, _inputs(m, n, 64, dtype),
             dict(alpha=torch.rand(m), labels=torch.randint(0, n, (m,)), **_teacher(teacher, m, n, dtype)))


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
def test_symmetric_half_precision_matches_reference(dtype):
    b = 300
    _compare(psd_kernels.psd_clip_loss, _inputs(b, b, 64, dtype),
             dict(alpha_image=0.3, teacher_image=_embed(b, 16, dtype), teacher_text=_embed(b, 16, dtype),
                  teacher_scale=20.0, reduction="none"),
             torch.randn(2, b))


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
def test_scale_100_does_not_overflow(dtype):
    """exp(S) at s = 100 would be ~e^100 > fp32 max without the online max."""
    m = 97
    _compare(psd_kernels.psd_loss, _inputs(m, 1025, 64, dtype, scale=100.0),
             dict(alpha=0.5, labels=torch.randint(0, 1025, (m,)), teacher_scale=100.0))


def test_repeated_calls_identical():
    b = 1025
    inputs = _inputs(b, b, 64, torch.float32)
    kwargs = dict(alpha_image=0.3, teacher_image=_embed(b, 32, torch.float32),
                  teacher_text=_embed(b, 32, torch.float32), teacher_scale=20.0)
    first = _run(psd_kernels.psd_clip_loss, "cpp", inputs, kwargs)
    second = _run(psd_kernels.psd_clip_loss, "cpp", inputs, kwargs)
    for a, b_ in zip(first, second):
        assert torch.equal(a, b_)


def test_thread_count_does_not_change_results():
    """Each GEMM tile is one single-threaded BLAS call and each epilogue row or column
    chunk is one thread's work, so 1 thread and all threads agree bit for bit."""
    b = 600  # several row blocks and column tiles
    inputs = _inputs(b, b, 64, torch.float32)
    kwargs = dict(alpha_image=0.3, teacher_image=_embed(b, 32, torch.float32),
                  teacher_text=_embed(b, 32, torch.float32), teacher_scale=20.0)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = _run(psd_kernels.psd_clip_loss, "cpp", inputs, kwargs)
    finally:
        torch.set_num_threads(threads)
    many = _run(psd_kernels.psd_clip_loss, "cpp", inputs, kwargs)
    for a, b_ in zip(single, many):
        assert torch.equal(a, b_)


def test_no_grad_runs_forward_only():
    x, y, s = _inputs(7, 9, 3)
    with torch.no_grad():
        out = psd_kernels.psd_loss(x.requires_grad_(), y, s, backend="cpp")
    assert not out.requires_grad
    expected = psd_kernels.psd_loss(x.detach(), y, s, backend="reference")
    assert torch.allclose(out, expected, rtol=1e-12, atol=0)


def test_teacher_gets_no_gradient():
    x, y, s = _inputs(7, 7, 3)
    tx, ty = _embed(7, 4).requires_grad_(), _embed(7, 4).requires_grad_()
    x.requires_grad_()
    psd_kernels.psd_clip_loss(x, y, s, teacher_image=tx, teacher_text=ty, alpha_image=0.5, backend="cpp").backward()
    assert x.grad is not None and tx.grad is None and ty.grad is None


def test_op_errors_name_the_argument():
    x, y, s = _inputs(5, 6, 3)
    with pytest.raises(RuntimeError, match="alpha must have shape"):
        torch.ops.psd.forward(x, y, s, torch.zeros(4, dtype=torch.float64), torch.zeros(5, dtype=torch.long),
                              None, None, None, None)
    with pytest.raises(RuntimeError, match="symmetric loss needs a square matrix"):
        torch.ops.psd.forward(x, y, s, torch.zeros(5, dtype=torch.float64), torch.zeros(5, dtype=torch.long),
                              torch.zeros(6, dtype=torch.float64), None, None, None)


def test_registry_picks_cpp_for_cpu():
    assert backends.available_backends("cpu", torch.float32)["cpp"] is None
    assert backends.resolve_backend("auto", torch.device("cpu"), torch.float32) is cpp
    reason = cpp.supports(torch.device("cuda"), torch.float32)
    assert (reason is None) == cpp.cuda_built()


def test_torch_compile_fullgraph():
    """The ops trace with their fake implementations and autograd formulas (forward and backward graphs)."""
    b, d = 33, 8
    x, y, s = _inputs(b, b, d, torch.float32)
    tx, ty = _embed(b, 6, torch.float32), _embed(b, 6, torch.float32)
    alpha, ts = torch.full((b,), 0.4), torch.tensor(20.0)

    def step(x, y, s, backend=None):  # a user's function calling the public loss
        return psd_kernels.psd_clip_loss(x, y, s, teacher_image=tx, teacher_text=ty, teacher_scale=ts,
                                         alpha_image=alpha, backend="cpp")

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got = _run(lambda x, y, s, backend: compiled(x, y, s), "cpp", [x, y, s], {})
    want = _run(step, "cpp", [x, y, s], {})
    for a, b_ in zip(got, want):
        torch.testing.assert_close(a, b_, rtol=1e-6, atol=1e-7)


OPS = ("forward", "backward", "forward_backward", "siglip_forward", "siglip_backward", "siglip_forward_backward")


def test_every_op_is_registered_for_cpu_and_for_cuda_when_built():
    for op in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"psd::{op}", "CPU"), op
    info = build_info()
    if not info["cuda_built"]:
        pytest.skip(f"CUDA part not built: {info['cuda_reason']}")
    for op in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"psd::{op}", "CUDA"), op


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU on this machine")
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32, torch.float16, torch.bfloat16))
def test_cuda_matches_reference(dtype):
    if not cpp.cuda_built():
        pytest.skip("psd_kernels._C was built without CUDA")
    b = 1025
    _compare(psd_kernels.psd_clip_loss, _inputs(b, b, 64, dtype, device="cuda"),
             dict(alpha_image=0.3, teacher_image=_embed(b, 16, dtype, "cuda"),
                  teacher_text=_embed(b, 16, dtype, "cuda"), teacher_scale=20.0), device="cuda")
    _compare(psd_kernels.psd_loss, _inputs(97, b, 64, dtype, device="cuda"),
             dict(alpha=0.5, labels=torch.randint(0, b, (97,), device="cuda")), device="cuda")


def test_info_command_reports_the_build(capsys):
    from psd_kernels.tools import info
    assert info.main([]) == 0
    out = capsys.readouterr().out
    assert "cpu_built: True" in out and "cuda_built:" in out
    if not info.build_info()["cuda_built"]:
        assert "CUDA part missing because:" in out
