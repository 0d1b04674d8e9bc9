"""The Triton backend of the sigmoid (SigLIP) loss: host functions, two autograd Functions, the contract.

Implements docs/siglip_loss.md with psd_kernels/backends/triton/siglip_kernels.py for the tiles
and kernels.py's _gemm_kernel for the gradient products; launcher.py re-exports siglip_rows and
siglip_weighted_loss, the backend contract of psd_kernels.backends.

A sigmoid has no row normaliser: G_ij = w_i (sigmoid(l_ij) - q_ij) is known as soon as tile (i, j)
has its dot products. So the gradients come from the tiles of one launch per chunk of rows, as
the softmax backward's do (launcher._gradients): per chunk (as many rows as keep the G chunk
within launcher._GRAD_CHUNK_BYTES), _siglip_tile_kernel forms each tile's dot products (and
the separate teacher's, once), writes G in the input dtype and per-row sums of the loss, G s d
and G; then dx_chunk = s G y and dy += s G^T x_chunk on the tensor cores (fp32 accumulation,
deterministic, no atomics); ds and db are the sums of the per-row partials.

    siglip_weighted_loss (mean, sum): one pass, loss and every gradient with w_i = 1; the
        weight and the upstream gradient scale the products' alpha and the kept gradients.
        Executed: 2 M N D (+ 2 M N D', separate teacher) for the tiles + 4 M N D for the products
        = 6 M N D (+ 2 M N D'): the useful FLOPs (docs/siglip_loss.md), within the budget of 8 B^2 D
        (+ 2 B^2 D'). Self and self_scaled teachers reuse d: no teacher product.
    siglip_rows ("none"): the per-row weights arrive with the backward, so the forward is the
        loss-only sweep (one launch over all rows, 2 M N D (+ 2 M N D')) and the backward
        recomputes the tiles with w_i = the upstream gradient: 2 M N D (+ 2 M N D') + 4 M N D.
        In all 8 M N D (+ 4 M N D'), what docs/siglip_loss.md counts for "none".
    Without any gradient wanted, both are the loss-only sweep.

Memory beyond inputs and outputs: one G chunk (at most launcher._GRAD_CHUNK_BYTES, 1 GiB), the
fp32 gradient accumulators (M + N) x D, 3 floats per (row, column split) of the launch, and the
padded copies of launcher._operand (widths not a multiple of 16, starts not 16-byte aligned):
never an M x N buffer. The teacher tensors are detached: they never get a gradient.

Launches (for psd_kernels.tools.launches / compile_check; host helpers are launcher.py's, so
its patches of _num_sms, _autotune and kernels._arch apply here too):
    siglip_kernels._siglip_tile_kernel, grid (cdiv(rows, BLOCK_M), n_split) with
        n_split = launcher._num_splits(rows, N, device, 128, cap=64), autotuned (key TUNE_N, D, DT,
        TEACHER, LOSS, WRITE_G, dtypes) over SIGLIP_CONFIGS as _prune_siglip keeps them, constexprs
        TEACHER (0 self, 1 self_scaled, 2 separate), BLOCK_K, BLOCK_KT (16 unless separate),
        DOT_FP32 (interpreter only), PRECISION ("ieee" for fp32, None otherwise) and
            LOSS=1 WRITE_G=0   the forward of siglip_rows, rows = M, one launch
            LOSS=0 WRITE_G=1   the backward of siglip_rows, one launch per G chunk
            LOSS=1 WRITE_G=1   siglip_weighted_loss, one launch per G chunk
    kernels._gemm_kernel per chunk, as launcher._gradients launches it: ACCUMULATE=0 for
        dx_chunk = s G y16 (K split over a third grid axis when its tiles are few), ACCUMULATE=1
        for dy += s G^T x_chunk (G read transposed).

Tested by: .venv/bin/python -m pytest tests/test_triton_siglip.py
"""
from __future__ import annotations

import torch
import triton

from psd_kernels.backends.triton import kernels as K
from psd_kernels.backends.triton import siglip_kernels as SK


def _host():
    """psd_kernels.backends.triton.launcher, imported at first use: it re-exports this module's contract
    functions, so importing it at this module's top would be circular. Its _launch, _operand,
    _gemm, _num_splits and chunk sizes are shared, not copied."""
    from psd_kernels.backends.triton import launcher
    return launcher


def _teacher_case(teacher_x, teacher_scale, teacher_bias) -> int:
    """The kernels' teacher case: separate embeddings, the student at another scale or bias, or itself."""
    if teacher_x is not None:
        return K.TEACHER_SEPARATE.value
    if teacher_scale is None and teacher_bias is None:
        return K.TEACHER_SELF.value
    return K.TEACHER_SELF_SCALED.value


def _params(scale, bias, teacher_scale, teacher_bias) -> torch.Tensor:
    """(s, b, s~, b~) as one fp32 tensor the kernel reads; s~ and b~ default to the student's (detached),
    b to 0 without a bias."""
    s = scale.detach().float().reshape(())
    b = torch.zeros((), device=s.device) if bias is None else bias.detach().float().reshape(())
    ts = s if teacher_scale is None else teacher_scale.detach().float().reshape(())
    tb = b if teacher_bias is None else teacher_bias.detach().float().reshape(())
    return torch.stack((s, b, ts, tb))


def _tiles(x, y, tx, ty, params, alpha_rows, alpha_cols, labels, teacher, r0, rows, w=None, grad=None,
           loss=True):
    """One launch of _siglip_tile_kernel over rows [r0, r0 + rows) of x against all of y: the per-row sums
    (loss, G d, G) as a (3, rows) fp32 tensor, and with `grad` (rows x N16, input dtype) the G tiles
    written into it, G = w_i (sigmoid(l) - q)."""
    L = _host()
    n_b = y.shape[0]
    n_split = L._num_splits(rows, n_b, x.device, 16 if K.INTERPRET else 128, cap=64)
    part = torch.empty((3, n_split, rows), device=x.device, dtype=torch.float32)
    separate = teacher == K.TEACHER_SEPARATE.value
    ta, tb = (tx, ty) if separate else (x, y)
    g = x if grad is None else grad
    grid = lambda meta: (triton.cdiv(rows, meta["BLOCK_M"]), n_split)  # noqa: E731
    L._launch(SK._siglip_tile_kernel, grid,
              (x, y, ta, tb, labels, alpha_rows, alpha_cols, alpha_rows if w is None else w, params, g, part,
               r0, rows, n_b, x.shape[1], ta.shape[1], x.stride(0), y.stride(0), ta.stride(0), tb.stride(0),
               g.stride(0), n_split, L._tune_n(n_b)),
              TEACHER=teacher, LOSS=loss, WRITE_G=grad is not None, **L._common(x, tx if separate else None))
    return part.sum(dim=1)


def _gradients(x, y, tx, ty, params, alpha_rows, alpha_cols, labels, teacher, w, loss, needs, weight=1.0):
    """(rows, dx, dy, ds, db) of weight * sum_i w_i row_i: rows (fp32, None unless `loss`), dx and dy in the
    input dtype (None where needs says no), ds and db fp32 0-dim.

    Per chunk of x's rows: the tiles write G = w_i (sigmoid(l) - q) (input dtype) and the per-row sums,
    then dx_chunk = s G y and dy += s G^T x_chunk (kernels._gemm_kernel). `weight` multiplies the
    products' alpha, ds and db, so G stays at the scale of w (sigmoid(l) - q). G's columns, and so y's
    rows in the products, run to N rounded up to a multiple of 16, the extra ones zero (the products'
    loads of G then see a row stride divisible by 16; the zeros change no sum).
    """
    L = _host()
    need_dx, need_dy = needs[0], needs[1]
    n_a, n_b = x.shape[0], y.shape[0]
    n_b16 = triton.cdiv(n_b, 16) * 16
    y16 = y if n_b16 == n_b else torch.nn.functional.pad(y, (0, 0, 0, n_b16 - n_b))
    dx = torch.empty(x.shape, device=x.device, dtype=torch.float32) if need_dx else None
    dy = torch.empty((n_b16, y.shape[1]), device=x.device, dtype=torch.float32) if need_dy else None  # chunk 0 writes
    rows_loss = torch.empty(n_a, device=x.device, dtype=torch.float32) if loss else None
    sums = torch.zeros(2, device=x.device, dtype=torch.float32)  # ds, db
    chunk = L._chunk_rows(n_a, n_b16, x.element_size())
    alpha32 = (params[0] * weight).reshape(1)
    for r0 in range(0, n_a, chunk):
        rows = min(chunk, n_a - r0)
        grad = torch.empty((rows, n_b16), device=x.device, dtype=x.dtype)
        grad[:, n_b:].zero_()  # the kernel writes columns < N
        part = _tiles(x, y, tx, ty, params, alpha_rows, alpha_cols, labels, teacher, r0, rows, w, grad, loss)
        if loss:
            rows_loss[r0:r0 + rows] = part[0]
        sums += part[1:].sum(dim=1)
        if need_dx:
            L._gemm(grad, y16, dx[r0:r0 + rows], alpha32, accumulate=False)
        if need_dy:
            L._gemm(grad.T, x[r0:r0 + rows], dy, alpha32, accumulate=r0 > 0)
    ds = sums[0] * (weight / params[0])  # the tiles sum G (l - b) = s G d
    return (rows_loss, None if dx is None else dx.to(x.dtype), None if dy is None else dy[:n_b].to(y.dtype),
            ds, sums[1] * weight)


class _SigLIPRowsFunction(torch.autograd.Function):
    """Per-row losses (M,): the loss-only sweep forward; the backward recomputes the tiles with the
    per-row upstream gradient as w (reductions happen outside, so it always receives one per row)."""

    @staticmethod
    def forward(ctx, x, y, scale, bias, alpha_rows, alpha_cols, labels, tx, ty, params, teacher):
        rows = _tiles(x, y, tx, ty, params, alpha_rows, alpha_cols, labels, teacher, 0, x.shape[0])[0]
        ctx.teacher = teacher
        ctx.dtypes = (scale.dtype, None if bias is None else bias.dtype)
        ctx.save_for_backward(x, y, alpha_rows, alpha_cols, labels, tx, ty, params)
        return rows

    @staticmethod
    def backward(ctx, grad_rows):
        x, y, alpha_rows, alpha_cols, labels, tx, ty, params = ctx.saved_tensors
        needs = ctx.needs_input_grad[:4]
        _, dx, dy, ds, db = _gradients(x, y, tx, ty, params, alpha_rows, alpha_cols, labels, ctx.teacher,
                                       grad_rows.float().contiguous(), False, needs)
        return (dx, dy, ds.to(ctx.dtypes[0]) if needs[2] else None,
                db.to(ctx.dtypes[1]) if needs[3] else None) + (None,) * 7


class _SigLIPWeightedFunction(torch.autograd.Function):
    """weight * sum_i row_i with every gradient formed in the forward's one pass (w_i = 1). dx, dy, ds, db
    are kept until the backward, which scales them by the upstream gradient in place (a second backward
    through the same graph is refused: use reduction="none")."""

    @staticmethod
    def forward(ctx, x, y, scale, bias, alpha_rows, alpha_cols, labels, tx, ty, params, teacher, weight, needs):
        ones = torch.ones(x.shape[0], device=x.device, dtype=torch.float32)
        rows, dx, dy, ds, db = _gradients(x, y, tx, ty, params, alpha_rows, alpha_cols, labels, teacher, ones,
                                          True, needs, weight)
        ctx.set_materialize_grads(False)
        ctx.needs = needs
        ctx.dtypes = (scale.dtype, None if bias is None else bias.dtype)
        ctx.save_for_backward(dx, dy, ds, db)
        return weight * rows.sum()

    @staticmethod
    def backward(ctx, grad_loss):
        if grad_loss is None:
            return (None,) * 13
        dx, dy, ds, db = ctx.saved_tensors
        g = grad_loss.float()
        dx = None if dx is None else dx.mul_(g.to(dx.dtype))
        dy = None if dy is None else dy.mul_(g.to(dy.dtype))
        return (dx, dy, (g * ds).to(ctx.dtypes[0]) if ctx.needs[2] else None,
                (g * db).to(ctx.dtypes[1]) if ctx.needs[3] else None) + (None,) * 9


def _inputs(x, y, scale, bias, alpha_rows, alpha_cols, labels, teacher_x, teacher_y, teacher_scale, teacher_bias):
    """The kernels' operands: x, y (and x~, y~, detached) padded and aligned (launcher._operand), the alphas
    as (M,) and (N,) contiguous fp32, the parameters, the teacher case."""
    L = _host()
    teacher = _teacher_case(teacher_x, teacher_scale, teacher_bias)
    separate = teacher == K.TEACHER_SEPARATE.value
    tx = L._operand(teacher_x.detach()) if separate else None
    ty = L._operand(teacher_y.detach()) if separate else None
    a_rows = alpha_rows.detach().float().expand(x.shape[0]).contiguous()
    a_cols = alpha_cols.detach().float().expand(y.shape[0]).contiguous()
    return (L._operand(x), L._operand(y), scale, bias, a_rows, a_cols, labels.contiguous(), tx, ty,
            _params(scale, bias, teacher_scale, teacher_bias), teacher)


def siglip_rows(x, y, scale, bias, alpha_rows, alpha_cols, labels, teacher_x, teacher_y, teacher_scale,
                teacher_bias):
    """Per-row losses row_i = sum_j e_ij (M,), fp32, differentiable in x, y, scale and bias (backend contract
    of psd_kernels.backends; bias may also be None: no bias)."""
    return _SigLIPRowsFunction.apply(*_inputs(x, y, scale, bias, alpha_rows, alpha_cols, labels, teacher_x,
                                              teacher_y, teacher_scale, teacher_bias))


def siglip_weighted_loss(x, y, scale, bias, alpha_rows, alpha_cols, labels, teacher_x, teacher_y, teacher_scale,
                         teacher_bias, weight):
    """weight * sum_i row_i as a 0-dim fp32 tensor (backend contract): with a gradient wanted, the loss and
    the gradients in one pass (_SigLIPWeightedFunction); otherwise the loss-only sweep."""
    needs = tuple(torch.is_grad_enabled() and t is not None and t.requires_grad for t in (x, y, scale, bias))
    args = _inputs(x, y, scale, bias, alpha_rows, alpha_cols, labels, teacher_x, teacher_y, teacher_scale,
                   teacher_bias)
    if not any(needs):
        return weight * _SigLIPRowsFunction.apply(*args).sum()
    return _SigLIPWeightedFunction.apply(*args, float(weight), needs)
