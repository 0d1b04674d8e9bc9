"""The Triton backend against the float64 reference, through the public API.

    .venv/bin/python -m pytest tests/test_triton.py -q

On a machine without a GPU the kernels run under Triton's interpreter, which
must be switched on (TRITON_INTERPRET=1) before triton is first imported. Other
test modules in the same pytest process may import triton first, so this file
runs in two roles:

* launcher (the normal pytest run, TRITON_INTERPRET unset):
  `test_interpreted_cases_pass_in_a_triton_interpret_child` re-runs this very file in a child
  pytest with TRITON_INTERPRET=1 and asserts it passed (its output is shown on failure);
  `test_device_check_dry_run_writes_a_table_without_failures` runs the GPU script's --dry-run
  the same way; the CUDA cases run in-process when a GPU exists.
* interpreted (TRITON_INTERPRET=1 in the environment, e.g. that child, or by hand:
  `TRITON_INTERPRET=1 .venv/bin/python -m pytest tests/test_triton.py -q`): the cases
  below run on CPU tensors with backend="triton".

The interpreter's reduced-precision tl.dot is wrong, so the kernels upcast both dot
operands to fp32 there: fp16 and bf16 inputs are covered for their loads, casts and
gradient dtypes, and their tensor-core rounding is covered by the CUDA cases.

Where the installed Triton's interpreter cannot run the kernels at all (Triton 3.4 / 3.5 with
numpy >= 2.4: tests/triton_interpreter.py shows the fault on a five-line kernel), the
interpreted cases are skipped with that reason; the compile check still compiles every launch.
"""
from __future__ import annotations

import os

import pytest
import torch

import psd_kernels
import triton_interpreter
from psd_kernels.tools import against_reference as A
from psd_kernels.vocabulary import TEACHER_CASES

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
if INTERPRETED and triton_interpreter.fault():
    pytest.skip(triton_interpreter.fault(), allow_module_level=True)
HAS_CUDA = torch.cuda.is_available()

# The tolerances and the error measure (max error / max(|reference|, 0.05)) are the harness's
# (psd_kernels.tools.against_reference): tensor-core rounding on a GPU; interpreted runs upcast
# the dot operands, so only the gradients' final rounding to the input dtype remains.
DOTS = "fp32_dots" if INTERPRETED else "tensor_cores"


def _close(name, actual, expected, tol):
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = A.error(actual, expected)
    assert err <= tol, f"{name}: error {err:.3e} > {tol:.1e}"


def _embed(n, d, dtype, device, generator=None):
    """Unit-norm rows like CLIP features, in `dtype`."""
    e = torch.randn(n, d, generator=generator, dtype=torch.float64)
    return torch.nn.functional.normalize(e, dim=1).to(dtype).to(device)


def _shifted(t):
    """A copy of t that starts one element into its allocation (2 or 4 bytes: not 16-byte aligned)."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    out = buf[1:].view(t.shape)
    out.copy_(t)
    return out


def _run(fn_name, backend, inputs, kwargs, upstream, reduction, offset=False):
    """Loss and gradients (x, y, scale) of `upstream` . loss for one backend (the reference in
    float64 on the same rounded inputs, which proves the math); `offset`: the embeddings start 2
    or 4 bytes into their allocation."""
    x, y, scale = inputs
    if offset:
        x, y = _shifted(x), _shifted(y)
        kwargs = {k: _shifted(v) if torch.is_tensor(v) and v.dim() == 2 else v for k, v in kwargs.items()}
    return A.loss_and_grads(fn_name, backend, x, y, scale, kwargs, upstream, reduction,
                            float64=backend == "reference")


def _teacher_kwargs(mode, m, n, dt, dtype, device, symmetric):
    names = ("teacher_image", "teacher_text") if symmetric else ("teacher_x", "teacher_y")
    if mode == "self":
        return {}
    if mode == "self_scaled":
        return {"teacher_scale": 7.5}
    return {names[0]: _embed(m, dt, dtype, device), names[1]: _embed(n, dt, dtype, device),
            "teacher_scale": torch.tensor(12.0, device=device)}


def check_one_direction(m, n, d, dtype, device, teacher, reduction="none", scale=20.0, tol=None, offset=False):
    x, y = _embed(m, d, dtype, device), _embed(n, d, dtype, device)
    s = torch.tensor(scale, device=device)
    kwargs = dict(alpha=torch.rand(m, device=device), labels=torch.randint(0, n, (m,), device=device),
                  **_teacher_kwargs(teacher, m, n, 5 if d != 64 else 48, dtype, device, False))
    upstream = torch.randn(m, device=device) if reduction == "none" else torch.tensor(1.7, device=device)
    got = _run("psd_loss", "triton", (x, y, s), kwargs, upstream, reduction, offset)
    want = _run("psd_loss", "reference", (x, y, s), kwargs, upstream, reduction)
    _check(got, want, x, dtype, tol)


def check_symmetric(b, d, dtype, device, teacher, reduction="none", scale=20.0, tol=None, offset=False):
    x, y = _embed(b, d, dtype, device), _embed(b, d, dtype, device)
    s = torch.tensor(scale, device=device)
    kwargs = dict(alpha_image=torch.rand(b, device=device), alpha_text=0.35,
                  **_teacher_kwargs(teacher, b, b, 24, dtype, device, True))
    upstream = torch.randn(2, b, device=device) if reduction == "none" else torch.tensor(0.6, device=device)
    got = _run("psd_clip_loss", "triton", (x, y, s), kwargs, upstream, reduction, offset)
    want = _run("psd_clip_loss", "reference", (x, y, s), kwargs, upstream, reduction)
    _check(got, want, x, dtype, tol)


def _check(got, want, x, dtype, tol):
    assert A.dtypes_ok(got, dtype), "the loss comes back in float32, the gradients in the input dtype"
    A.assert_close(got, want, tol if tol is not None else A.tolerance(dtype, DOTS))


# Rows 1, 7 and 97 and D = 3, 64, 100 (none a tile multiple except 64) against odd column counts.
# (3, 70): five 16-wide column tiles over four splits leaves the last split empty.
SHAPES = ((1, 7, 3), (7, 97, 64), (97, 33, 100), (3, 70, 20))

interpreted = pytest.mark.skipif(not INTERPRETED, reason="runs in the TRITON_INTERPRET=1 child (see docstring)")
cuda = pytest.mark.skipif(not HAS_CUDA or INTERPRETED, reason="needs a CUDA GPU")


@interpreted
@pytest.mark.parametrize("teacher", TEACHER_CASES)
@pytest.mark.parametrize("m,n,d", SHAPES)
def test_one_direction_matches_reference_fp32_awkward_shapes(m, n, d, teacher):
    check_one_direction(m, n, d, torch.float32, "cpu", teacher)


@interpreted
@pytest.mark.parametrize("teacher", TEACHER_CASES)
@pytest.mark.parametrize("b,d", ((1, 3), (7, 100), (70, 64)))
def test_symmetric_matches_reference_fp32(b, d, teacher):
    """B = 70: five 16-row blocks in four row groups (two of two blocks, one of one, one
    empty), so the column statistics are folded across row blocks and merged across groups."""
    check_symmetric(b, d, torch.float32, "cpu", teacher)


@interpreted
@pytest.mark.parametrize("teacher", TEACHER_CASES)
def test_symmetric_column_stats_by_second_pass_matches_reference(teacher, monkeypatch):
    """The alternative symmetric forward: a second sweep with rows and columns swapped."""
    monkeypatch.setenv("PSD_TRITON_COLUMN_STATS", "second_pass")
    check_symmetric(37, 20, torch.float32, "cpu", teacher)


@interpreted
@pytest.mark.parametrize("teacher", TEACHER_CASES)
def test_backward_over_several_gradient_chunks(teacher):
    """The backward's G chunks: rows in several chunks, dy accumulated over them, ds summed."""
    from psd_kernels.backends.triton import launcher
    for rows, cols in ((50, 97), (70, 70)):
        assert launcher._chunk_rows(rows, cols, 4) < rows  # more than one chunk at these sizes
    check_one_direction(50, 97, 20, torch.float32, "cpu", teacher)
    check_symmetric(70, 20, torch.float32, "cpu", teacher)


@interpreted
def test_products_split_k_when_their_tiles_are_few():
    """dx of a 16-row chunk against 97 columns has two output tiles, too few for the (interpreted)
    SMs: K splits over the grid into two partial products, summed on the host."""
    from psd_kernels.backends.triton import launcher
    assert launcher._k_splits(16, 20, 97, torch.device("cpu")) == (2, 64)
    assert launcher._k_splits(16, 20, 31, torch.device("cpu")) == (1, 31)   # too short to split
    check_one_direction(50, 97, 20, torch.float32, "cpu", "separate")


@interpreted
@pytest.mark.parametrize("reduction", ("mean", "sum"))
def test_mean_and_sum_reductions_match_reference(reduction):
    check_one_direction(9, 21, 17, torch.float32, "cpu", "separate", reduction=reduction)
    check_symmetric(11, 20, torch.float32, "cpu", "self_scaled", reduction=reduction)


@interpreted
@pytest.mark.parametrize("teacher", TEACHER_CASES)
@pytest.mark.parametrize("reduction", ("mean", "sum"))
def test_symmetric_mean_sum_gradients_in_the_forward(teacher, reduction):
    """mean/sum of the symmetric loss: a teacher with statistics of its own takes one sweep (student
    and teacher column statistics in turn), then the gradient tiles, formed in the forward, also give
    the cross terms E_R[S]. B = 70: four row groups, several G chunks (dy and the column cross terms
    summed over them); B = 7, D = 100: tiles cut at every edge."""
    check_symmetric(70, 20, torch.float32, "cpu", teacher, reduction=reduction)
    check_symmetric(7, 100, torch.float32, "cpu", teacher, reduction=reduction)
    check_symmetric(19, 100, torch.bfloat16, "cpu", teacher, reduction=reduction)


@interpreted
def test_symmetric_one_pass_path_and_partial_gradients():
    """The one pass is the autograd node of a scaled or separate teacher's mean; with the text tower
    and the scale frozen only dx is formed, and it matches the reference."""
    b, d = 21, 24
    x, y = _embed(b, d, torch.float32, "cpu"), _embed(b, d, torch.float32, "cpu")
    tx, ty = _embed(b, 8, torch.float32, "cpu"), _embed(b, 8, torch.float32, "cpu")
    grads = []
    for backend in ("triton", "reference"):
        xg = x.detach().clone().requires_grad_()
        loss = psd_kernels.psd_clip_loss(xg, y, 10.0, teacher_image=tx, teacher_text=ty, teacher_scale=12.0,
                                         alpha_image=0.5, alpha_text=0.25, backend=backend)
        if backend == "triton":
            assert type(loss.grad_fn).__name__ == "_ClipWeightedFunctionBackward"
        (2.5 * loss).backward()
        grads.append((loss, xg.grad))
    for name, got, want in zip(("loss", "dx"), *grads):
        _close(name, got, want, 2e-5)


@interpreted
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_half_precision_inputs_match_reference_with_input_dtype_gradients(dtype):
    check_one_direction(7, 97, 64, dtype, "cpu", "separate")
    check_symmetric(19, 100, dtype, "cpu", "self")


@interpreted
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
def test_padded_widths_and_offset_inputs(dtype):
    """Widths that are not multiples of 16 (the host appends zero columns) and embeddings that start
    2 or 4 bytes into their allocation (the host copies them aligned): the loss and the gradients
    match the reference, and the gradients come back at the caller's width."""
    from psd_kernels.backends.triton import launcher
    x = _shifted(_embed(5, 500, dtype, "cpu"))
    assert x.data_ptr() % 16 and launcher._operand(x).shape == (5, 512)
    assert launcher._operand(x).data_ptr() % 16 == 0 and launcher._operand(x)[:, 500:].abs().sum() == 0
    check_one_direction(7, 33, 500, dtype, "cpu", "separate", offset=True)
    check_symmetric(19, 500, dtype, "cpu", "self_scaled", offset=True)
    check_symmetric(18, 100, dtype, "cpu", "separate", offset=True)
    check_one_direction(20, 17, 48, dtype, "cpu", "self", offset=True)  # aligned width, offset start


@interpreted
def test_logit_scale_100_stays_finite():
    """s = 100 on unit vectors: logits up to 100, the online max keeps exp() in range."""
    check_symmetric(23, 64, torch.bfloat16, "cpu", "self_scaled", scale=100.0)


@interpreted
def test_teacher_gets_no_gradient_and_alpha_zero_is_clip():
    b, d = 13, 24
    x, y = _embed(b, d, torch.float32, "cpu"), _embed(b, d, torch.float32, "cpu")
    tx = _embed(b, 8, torch.float32, "cpu").requires_grad_()
    ty = _embed(b, 8, torch.float32, "cpu").requires_grad_()
    loss = psd_kernels.psd_clip_loss(x, y, 10.0, teacher_image=tx, teacher_text=ty, alpha_image=0.5,
                                     backend="triton")
    assert not loss.requires_grad and tx.grad is None
    # alpha = 0: open_clip's ClipLoss, two cross-entropies over the logit matrix.
    logits = 10.0 * x.double() @ y.double().T
    labels = torch.arange(b)
    clip = 0.5 * (torch.nn.functional.cross_entropy(logits, labels)
                  + torch.nn.functional.cross_entropy(logits.T, labels))
    _close("clip loss", psd_kernels.psd_clip_loss(x, y, 10.0, backend="triton"), clip, 1e-5)


def test_supports_names_the_reason():
    launcher = pytest.importorskip("psd_kernels.backends.triton.launcher")
    assert "float64" in launcher.supports(torch.device("cuda"), torch.float64)
    if not INTERPRETED:
        assert "TRITON_INTERPRET" in launcher.supports(torch.device("cpu"), torch.float32)
    if INTERPRETED:
        assert launcher.supports(torch.device("cpu"), torch.float32) is None


@pytest.mark.skipif(INTERPRETED, reason="the interpreter gets a single config")
def test_autotune_config_lists_and_pruning_keep_fitting_tiles():
    """The GPU config lists: 64-row tiles on 4 warps and 128-row tiles on 8 (one warpgroup per 64
    rows, what wgmma needs); pruning keeps every config for 16-bit inputs and only small tiles
    for fp32, never none. psd_kernels.tools.compile_check proves the kept ones spill-free."""
    kernels = pytest.importorskip("psd_kernels.backends.triton.kernels")
    for configs in (kernels.FWD_CONFIGS, kernels.GRAD_CONFIGS, kernels.GEMM_CONFIGS):  # before the per-kernel rules
        assert 1 < len(configs) < 16
        assert all(c.num_warps == 4 * (c.kwargs["BLOCK_M"] // 64) or c.kwargs["BLOCK_N"] <= 64 for c in configs)
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            kept = kernels._prune_wide(configs, {"a_ptr": torch.empty(1, 1, dtype=dtype)})
            assert kept and (dtype == torch.float32 or kept == configs)
            assert dtype != torch.float32 or all(c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 64 * 64 for c in kept)


@cuda
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16))
@pytest.mark.parametrize("teacher", TEACHER_CASES)
def test_gpu_tensor_core_results_match_reference(dtype, teacher, monkeypatch):
    """Compiled kernels with tensor-core rounding; the first config that fits (no tuning runs)."""
    monkeypatch.setenv("PSD_TRITON_AUTOTUNE", "0")
    for m, n, d in SHAPES + ((1025, 777, 768),):
        check_one_direction(m, n, d, dtype, "cuda", teacher)
    for b, d in ((7, 100), (1025, 512)):
        check_symmetric(b, d, dtype, "cuda", teacher)


@pytest.mark.skipif(INTERPRETED, reason="this is the launcher of the interpreted run")
def test_interpreted_cases_pass_in_a_triton_interpret_child():
    triton_interpreter.assert_file_passes_interpreted(__file__)


@pytest.mark.skipif(INTERPRETED, reason="the dry run launches its own interpreted child")
def test_device_check_dry_run_writes_a_table_without_failures(tmp_path):
    """The GPU script's logic at tiny sizes on CPU: every stage runs, the table is written."""
    pytest.importorskip("triton")
    if triton_interpreter.fault():
        pytest.skip(triton_interpreter.fault())
    proc = triton_interpreter.run_child(["benchmarks/device_check.py", "--dry-run", "--out", str(tmp_path)],
                                        timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    table = (tmp_path / "device_check.md").read_text()
    assert "| triton |" in table and "FAIL" not in table, table
