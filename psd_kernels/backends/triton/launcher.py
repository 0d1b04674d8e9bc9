"""The Triton backend of the PSD loss: host functions, one autograd Function, the backend contract.

Implements the fused algorithm of docs/fused_algorithm.md with the kernels of
psd_kernels/backends/triton/kernels.py; returns per-row losses (psd_kernels.assembly reduces them).

Forward: one sweep over column tiles per row block (split over columns when
there are few row blocks), writing per-row partial statistics that are merged
here. The symmetric loss with a self teacher at the student's scale uses the same
sweep for both directions: each program owns a row group and a column split and also
folds its tiles into per-(group, column) partials (PSD_TRITON_COLUMN_STATS=second_pass instead
runs a second sweep with the roles swapped; both are timed by benchmarks/device_check.py);
the grid (row groups x column splits) comes from psd_kernels.backends.triton.grid.balanced_grid.
A teacher with statistics of its own (another scale, separate embeddings):
  mean / sum with gradients (clip_weighted_loss): one sweep that folds the student's tile and
      then the teacher's into row and column statistics, without the cross terms E_R[S]
      (holding S and T together with column partials spilled registers); the gradient tiles,
      formed in the forward since every row's weight is known, also sum R * S into E_R[S];
      then the products. dx, dy, ds are kept and scaled by the upstream gradient in the backward.
  "none": the per-row weights come only with the backward, so the forward takes a second
      sweep with the roles swapped and the backward recomputes as below.

Backward, per chunk of rows (as many as keep the chunk's gradient tile matrix within
_GRAD_CHUNK_BYTES): _psd_grad_kernel recomputes every tile of S (and T) from the saved
per-row statistics and writes G = g (P - Q) in the input dtype, both directions' terms at
once for the symmetric loss; then two products on the tensor cores, dx_chunk = s G y and
dy += s G^T x_chunk (_gemm_kernel, fp32 accumulation, deterministic), and ds from the
tiles' sums of G d. One recomputation of the scores serves both sides.
docs/fused_algorithm.md counts why this beats holding D-wide gradient rows in registers.

Memory beyond inputs and outputs: O(B) statistics (6 floats per (row, column split) and 5
per (row group, column) in the forward, 3 per row saved for the backward), the fp32
gradient accumulators (n_a + n_b) x D, one chunk of G (at most _GRAD_CHUNK_BYTES), and
copies of the inputs whose width is not a multiple of 16 or whose start is not 16-byte aligned.
Any M, N, D: tiles are masked at the edges, D and D' only set the length of the K loops.
Every width runs the specialised, pipelined kernels: _operand() hands the kernels rows whose
width is a multiple of 16 (zero columns appended: exact, an O(B D) copy) and whose start is
16-byte aligned, which is what Triton's binder needs to mark D, the row strides and the
pointers divisible by 16 (vectorised, asynchronous loads; psd_kernels.tools.compile_check).
Autotuning: configs keyed on the swept length (power-of-two bucket, capped at 65536),
D, D', teacher case and dtypes; PSD_TRITON_AUTOTUNE=0 runs the first config that fits.
psd_kernels.tools.compile_check records the launches of this module (psd_kernels.tools.launches) and
compiles each one for sm_80, sm_90 and sm_100.

Use it through the public API: psd_kernels.psd_loss(..., backend="triton").
Teacher tensors never receive a gradient, even if they require one.
Tested by: .venv/bin/python -m pytest tests/test_triton.py
"""
from __future__ import annotations

import os

import torch
import triton

from psd_kernels.backends.triton import kernels as K
from psd_kernels.backends.triton.grid import balanced_grid

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# The values of PSD_TRITON_COLUMN_STATS (_column_stats_mode), the default first.
COLUMN_STATS = ("partials", "second_pass")
# Largest G chunk of the backward (rows x columns x element size); interpreted tests use
# a tiny one so that several chunks, and the accumulation of dy over them, are exercised.
_GRAD_CHUNK_BYTES = 2048 if K.INTERPRET else 1 << 30
_SM_CACHE: dict = {}
_MIN_BLOCK_N = min(c.kwargs["BLOCK_N"] for c in K.GRAD_CONFIGS)
_MIN_BLOCK_M = min(c.kwargs["BLOCK_M"] for c in K.GRAD_CONFIGS)
# Shortest K range of a split product (_k_splits); interpreted tests split K at tiny sizes.
_MIN_K_SPLIT = 32 if K.INTERPRET else 2048


def supports(device: torch.device, dtype: torch.dtype) -> str | None:
    """None when the Triton kernels can run on `device` with `dtype`, else the reason."""
    if dtype not in _DTYPES:
        return f"the Triton kernels take float16, bfloat16 or float32, not {dtype}"
    if device.type == "cuda":
        return None
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        return None
    return f"the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors), got {device}"


def _autotune() -> bool:
    """PSD_TRITON_AUTOTUNE=0 skips tuning and runs the first config that fits (quick checks)."""
    return os.environ.get("PSD_TRITON_AUTOTUNE", "1") != "0"


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 2  # the interpreter: small so that tiny tests still split their columns
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_CACHE:
        _SM_CACHE[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_CACHE[index]


def _num_splits(rows: int, cols: int, device: torch.device, block_m: int, cap: int) -> int:
    """Column splits so that (row blocks x splits) fills about twice the SMs, at most `cap`."""
    row_blocks = triton.cdiv(rows, block_m)
    min_cols = 16 if K.INTERPRET else 64  # interpreted tests: splits (some empty) at tiny sizes
    return max(1, min(cap, triton.cdiv(cols, min_cols), triton.cdiv(2 * _num_sms(device), row_blocks)))


def _tune_n(n: int) -> int:
    """Autotune key for the swept length: its power of two, capped so huge batches reuse 64K's pick."""
    return min(triton.next_power_of_2(n), 65536)


def _block_k(d: int, dtype: torch.dtype) -> int:
    return min(max(16, triton.next_power_of_2(d)), 32 if dtype == torch.float32 else 64)


def _launch(kernel, grid, args, record=None, **meta):
    """Run an autotuned kernel, or its first surviving config when tuning is off; `record`
    (a dict) receives the block sizes of the config that ran."""
    if _autotune():
        kernel[grid](*args, **meta)
        config = kernel.best_config
    else:
        named = dict(zip(kernel.fn.arg_names, args))
        config = kernel.early_config_prune(kernel.configs, named, **meta)[0] if kernel.early_config_prune \
            else kernel.configs[0]
        kernel.fn[grid](*args, **meta, **config.kwargs, num_warps=config.num_warps,
                        num_stages=config.num_stages)
    if record is not None:
        record.update(config.kwargs)


def _common(a, ta):
    interpret = K.INTERPRET
    fp32 = a.dtype == torch.float32
    return dict(DOT_FP32=interpret, PRECISION="ieee" if (fp32 or interpret) else None,
                BLOCK_K=_block_k(a.shape[1], a.dtype),
                BLOCK_KT=_block_k(ta.shape[1], a.dtype) if ta is not None else 16)


def _merge(m, l, mt, lt, w, dim):
    """Merge partial online-softmax states along `dim`.

    lse = m* + log sum_k l_k e^{m_k - m*}; the teacher's lse~ likewise; and
    E_R[S] = sum_k w_k e^{mt_k - mt*} / sum_k lt_k e^{mt_k - mt*}.
    """
    m_max = m.amax(dim=dim, keepdim=True)
    lse = m_max.squeeze(dim) + torch.log((l * torch.exp(m - m_max)).sum(dim=dim))
    mt_max = mt.amax(dim=dim, keepdim=True)
    ct = torch.exp(mt - mt_max)
    lt_sum = (lt * ct).sum(dim=dim)
    return lse, mt_max.squeeze(dim) + torch.log(lt_sum), (w * ct).sum(dim=dim) / lt_sum


def _groups(n_rows: int, n_cols: int, device: torch.device) -> tuple[int, int]:
    """(row groups, column splits) of the one-sweep symmetric forward: the grid of
    psd_kernels.backends.triton.grid.balanced_grid over 128-row blocks and 32-column tiles (the kept tiles), which
    fills the SMs in whole waves at one and at two CTAs per SM."""
    if K.INTERPRET:  # tiny tests: several groups, some of them empty
        return min(4, triton.cdiv(n_rows, 16)), min(4, triton.cdiv(n_cols, 16))
    return balanced_grid(triton.cdiv(n_rows, 128), triton.cdiv(n_cols, 32), _num_sms(device))


def _column_stats_mode() -> str:
    """PSD_TRITON_COLUMN_STATS: "partials" (default: one sweep, per-group column partials
    merged here) or "second_pass" (a second sweep with the roles swapped; for measurements)."""
    mode = os.environ.get("PSD_TRITON_COLUMN_STATS", "partials")
    if mode not in COLUMN_STATS:
        raise ValueError(f"PSD_TRITON_COLUMN_STATS must be one of {COLUMN_STATS}, got {mode!r}")
    return mode


def _forward_stats(a, b, ta, tb, scale, tscale, labels, teacher, col_stats):
    """One sweep of rows `a` against columns `b`.

    Returns (lse, lse~, E_R[S], S_{i,c_i}) of a's rows, and with `col_stats` also
    (lse', lse~', E_R'[S]) of b's rows seen as queries against a's rows (fp32). With
    `col_stats` and a teacher of statistics of its own the sweep leaves the cross terms
    out (the gradient-tile kernel forms them, _gradients(cross=True)): both E's are None.
    """
    n_a, n_b = a.shape[0], b.shape[0]
    if col_stats:
        n_groups, n_split = _groups(n_a, n_b, a.device)
        colpart = torch.zeros((5, n_groups, n_b), device=a.device, dtype=torch.float32)
        colpart[0::2][:2].fill_(-1.0e30)  # empty state: m' = mt' = -1e30, l' = lt' = w' = 0
        grid = (n_groups, n_split)
    else:
        n_split = _num_splits(n_a, n_b, a.device, 128 if not K.INTERPRET else 16, cap=64)
        n_groups, colpart = max(n_a, 1), a  # one row block per program; colpart unused
        grid = lambda meta: (triton.cdiv(n_a, meta["BLOCK_M"]), n_split)  # noqa: E731
    part = torch.empty((6, n_a, n_split), device=a.device, dtype=torch.float32)
    diag = labels is None
    ta_, tb_ = (ta, tb) if teacher == K.TEACHER_SEPARATE.value else (a, b)
    _launch(K._psd_fwd_kernel, grid,
            (a, b, ta_, tb_, a if diag else labels, scale, tscale, part, colpart,
             n_a, n_b, a.shape[1], ta_.shape[1], a.stride(0), b.stride(0), ta_.stride(0), tb_.stride(0),
             n_split, n_groups, _tune_n(n_b)),
            TEACHER=teacher, LABELS_DIAG=diag, COL_STATS=col_stats,
            **_common(a, ta if teacher == K.TEACHER_SEPARATE.value else None))
    m, l, mt, lt, w, pos = part.unbind(0)
    lse, lset, expected = _merge(m, l, mt, lt, w, dim=1)
    if not col_stats:
        return (lse, lset, expected, pos.sum(dim=1)), None
    m, l, mt, lt, w = colpart.unbind(0)
    if teacher == K.TEACHER_SELF.value:  # the kernel keeps m', l', w' only: the teacher's statistics are the student's
        mt, lt = m, l
    cols = _merge(m, l, mt, lt, w, dim=0)
    if teacher != K.TEACHER_SELF.value:
        return (lse, lset, None, pos.sum(dim=1)), cols[:2] + (None,)
    return (lse, lset, expected, pos.sum(dim=1)), cols


def _row_losses(lse, expected_s, pos, alpha):
    """l_i = LSE_j(S_ij) - (1 - alpha_i) S_{i,c_i} - alpha_i E_{R_i}[S_i]."""
    alpha = alpha.float()
    return lse - (1.0 - alpha) * pos - alpha * expected_s


def _chunk_rows(n_a: int, n_b: int, element_size: int) -> int:
    """Rows per G chunk: as many as fit _GRAD_CHUNK_BYTES, a multiple of 128 (16 interpreted)."""
    unit = 16 if K.INTERPRET else 128
    rows = max(unit, _GRAD_CHUNK_BYTES // max(1, n_b * element_size) // unit * unit)
    return min(rows, triton.cdiv(n_a, unit) * unit)


def _k_splits(m: int, n: int, k: int, device: torch.device) -> tuple[int, int]:
    """(splits, columns of K per split) for C = A @ B: one split when its 128 x 128 output tiles
    fill two CTA slots per SM; otherwise (a chunk of few rows against a long batch) as many splits
    as keep tiles x splits within those slots (whole waves at one or two CTAs per SM), each at
    least _MIN_K_SPLIT and a multiple of 64 long."""
    unit = 16 if K.INTERPRET else 128
    tiles, slots = triton.cdiv(m, unit) * triton.cdiv(n, unit), 2 * _num_sms(device)
    splits = max(1, min(slots // tiles, k // _MIN_K_SPLIT))
    if splits == 1:
        return 1, k
    k_split = triton.cdiv(triton.cdiv(k, splits), 64) * 64
    return triton.cdiv(k, k_split), k_split


def _gemm(a, b, c, alpha, accumulate):
    """c (fp32) = [c +] alpha * a @ b on the tensor cores (a, b: one dtype, any strides). A product
    whose output tiles are too few for the SMs splits K over a third grid axis into fp32 partial
    products, summed here."""
    m, k = a.shape
    n = b.shape[1]
    splits, k_split = (1, k) if accumulate else _k_splits(m, n, k, a.device)
    out = c if splits == 1 else torch.empty((splits, m, n), device=c.device, dtype=torch.float32)
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"]), splits)  # noqa: E731
    fp32 = a.dtype == torch.float32
    _launch(K._gemm_kernel, grid, (a, b, out, alpha, m, n, k, k_split, a.stride(0), a.stride(1), b.stride(0),
                                   b.stride(1), out.stride(-2), out.stride(0) if splits > 1 else 0),
            ACCUMULATE=accumulate, DOT_FP32=K.INTERPRET, PRECISION="ieee" if (fp32 or K.INTERPRET) else None)
    if splits > 1:
        c.copy_(out.sum(dim=0))


def _gradients(a, b, ta, tb, scale, tscale, a_dir, b_dir, teacher, diag, need_da, need_db, need_ds,
               cross=False, weight=1.0):
    """(da, db, ds): gradients of weight * (the loss) for rows a and columns b (input dtype) and the
    scale (fp32 0-dim); with `cross` also (E_R[S] of a's rows, E_R'[S] of b's rows) (fp32).

    a_dir / b_dir: None or (lse, lset, g, alpha, labels) of the direction whose queries are
    a's rows / b's rows (labels None on the diagonal). Per chunk of a's rows: the G tiles
    (_psd_grad_kernel), then da_chunk = s G b and db += s G^T a_chunk (_gemm_kernel). `weight`
    multiplies the products' alpha and ds, so G itself stays at the scale of g (P - Q).
    `cross` (a teacher with statistics of its own): the tiles also sum R * S along their rows
    and columns, the cross terms E_R[S] that the one-sweep forward left out.
    G's columns, and so b's rows in the products, run to n_b rounded up to a multiple of 16,
    the extra ones zero: the products' G loads then see a row stride and a masked length
    divisible by 16 (asynchronous at any n_b), and the zeros change no sum.
    """
    n_a, n_b = a.shape[0], b.shape[0]
    n_b16 = triton.cdiv(n_b, 16) * 16
    b16 = b if n_b16 == n_b else torch.nn.functional.pad(b, (0, 0, 0, n_b16 - n_b))
    da = torch.empty(a.shape, device=a.device, dtype=torch.float32) if need_da else None
    db = torch.empty((n_b16, b.shape[1]), device=a.device, dtype=torch.float32) if need_db else None  # first chunk writes
    ds = torch.zeros((), device=a.device, dtype=torch.float32)
    w_rows = torch.empty(n_a, device=a.device, dtype=torch.float32) if cross else None
    w_cols = torch.zeros(n_b, device=a.device, dtype=torch.float32) if cross else None
    dummy = (scale,) * 5
    sa = tuple(scale if t is None else t for t in (a_dir or dummy))
    sb = tuple(scale if t is None else t for t in (b_dir or dummy))
    ta_, tb_ = (ta, tb) if teacher == K.TEACHER_SEPARATE.value else (a, b)
    chunk = _chunk_rows(n_a, n_b16, a.element_size())
    alpha32 = (scale.float() * weight).reshape(1)
    for r0 in range(0, n_a, chunk):
        rows = min(chunk, n_a - r0)
        grad = torch.empty((rows, n_b16), device=a.device, dtype=a.dtype)
        grad[:, n_b:].zero_()  # the kernel writes columns < n_b
        ds_tiles = torch.empty((triton.cdiv(n_b, _MIN_BLOCK_N), rows), device=a.device, dtype=torch.float32)
        wrow = torch.empty_like(ds_tiles) if cross else ds_tiles
        wcol = torch.empty((triton.cdiv(rows, _MIN_BLOCK_M), n_b), device=a.device, dtype=torch.float32) \
            if cross else ds_tiles
        grid = lambda meta: (triton.cdiv(rows, meta["BLOCK_M"]), triton.cdiv(n_b, meta["BLOCK_N"]))  # noqa: E731,B023
        meta = {}
        _launch(K._psd_grad_kernel, grid,
                (a, b, ta_, tb_, scale, tscale, *sa, *sb, grad, ds_tiles, wrow, wcol, r0, rows, n_b, grad.stride(0),
                 a.shape[1], ta_.shape[1], a.stride(0), b.stride(0), ta_.stride(0), tb_.stride(0), _tune_n(n_b)),
                A_DIR=a_dir is not None, B_DIR=b_dir is not None, TEACHER=teacher, CROSS=cross, LABELS_DIAG=diag,
                record=meta, **_common(a, ta if teacher == K.TEACHER_SEPARATE.value else None))
        if need_ds:  # only the first n_b / BLOCK_N rows of ds_tiles were written
            ds += ds_tiles[:triton.cdiv(n_b, meta["BLOCK_N"])].sum()
        if cross:  # likewise the first tiles of the cross-term partials
            w_rows[r0:r0 + rows] = wrow[:triton.cdiv(n_b, meta["BLOCK_N"])].sum(dim=0)
            w_cols += wcol[:triton.cdiv(rows, meta["BLOCK_M"])].sum(dim=0)
        if need_da:
            _gemm(grad, b16, da[r0:r0 + rows], alpha32, accumulate=False)
        if need_db:
            _gemm(grad.T, a[r0:r0 + rows], db, alpha32, accumulate=r0 > 0)
    db = None if db is None else db[:n_b]
    grads = (None if da is None else da.to(a.dtype), None if db is None else db.to(b.dtype), ds * weight)
    return grads + ((w_rows, w_cols),) if cross else grads


class _PSDFunction(torch.autograd.Function):
    """Per-row losses of one direction (M,) or of both directions (2, B) with diagonal labels.

    Reductions happen outside, so the backward always receives per-row upstream gradients.
    """

    @staticmethod
    def forward(ctx, x, y, scale, alpha_x, alpha_y, labels, tx, ty, tscale, teacher, symmetric):
        s = scale.detach()
        ts = s if tscale is None else tscale.detach()
        # Column partials in the same sweep for a self teacher at the student's scale; with teacher
        # statistics of their own (TEACHER_SELF_SCALED, TEACHER_SEPARATE) the loss needs the cross terms E_R[S],
        # which a sweep with column partials leaves to the gradient tiles, unknown here without
        # the per-row weights: the columns get a second sweep (mean/sum: _ClipWeightedFunction).
        one_sweep = symmetric and teacher == K.TEACHER_SELF.value and _column_stats_mode() == "partials"
        (lse_x, lset_x, e_x, pos), cols = _forward_stats(x, y, tx, ty, s, ts, labels, teacher, one_sweep)
        loss_x = _row_losses(lse_x, e_x, pos, alpha_x)
        lse_y = lset_y = None
        out = loss_x
        if symmetric:
            if cols is None:  # the second sweep: text rows against image columns
                (lse_y, lset_y, e_y, _), _ = _forward_stats(y, x, ty, tx, s, ts, None, teacher, False)
            else:
                lse_y, lset_y, e_y = cols
            # The positive of text j is S_jj, the positive of image j.
            out = torch.stack((loss_x, _row_losses(lse_y, e_y, pos, alpha_y)))
        ctx.teacher, ctx.symmetric = teacher, symmetric
        ctx.save_for_backward(x, y, s, ts, alpha_x, alpha_y, labels, tx, ty, lse_x, lset_x, lse_y, lset_y)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, y, s, ts, alpha_x, alpha_y, labels, tx, ty, lse_x, lset_x, lse_y, lset_y = ctx.saved_tensors
        need_dx, need_dy, need_ds = ctx.needs_input_grad[:3]
        teacher, symmetric = ctx.teacher, ctx.symmetric
        g = grad_out.float().contiguous()
        if symmetric:
            # Both directions live on the one matrix S = s x y^T with diagonal positives.
            x_dir = (lse_x, lset_x, g[0], alpha_x, None)
            y_dir = (lse_y, lset_y, g[1], alpha_y, None)
            diag = True
        else:
            x_dir = (lse_x, lset_x, g, alpha_x, labels)
            y_dir = None
            diag = False
        dx, dy, ds = _gradients(x, y, tx, ty, s, ts, x_dir, y_dir, teacher, diag, need_dx, need_dy, need_ds)
        return (dx, dy, ds.to(s.dtype) if need_ds else None) + (None,) * 8


class _ClipWeightedFunction(torch.autograd.Function):
    """weight * (sum of both directions' row losses) on one B x B matrix, its gradients formed in
    the forward (a teacher with statistics of its own; the mean and sum reductions).

    One sweep gives both directions' lse and lse~ (the student's and the teacher's column
    statistics in turn, never both score tiles at once); the gradient tiles, formed at once since
    every row's weight is known, also sum R * S into the cross terms E_R[S] of both directions;
    then the two products. Executed: 2 B^2 (D + D') + 2 B^2 (D + D') + 4 B^2 D, against
    3 x 2 B^2 (D + D') + 4 B^2 D for two forward sweeps and a recomputing backward. dx, dy, ds
    are kept until the backward, which scales them by the upstream gradient in place (a second
    backward through the same graph is refused: use reduction="none").
    """

    @staticmethod
    def forward(ctx, x, y, scale, alpha_x, alpha_y, tx, ty, tscale, teacher, weight, needs):
        s = scale.detach()
        ts = s if tscale is None else tscale.detach()
        (lse_x, lset_x, _, pos), (lse_y, lset_y, _) = _forward_stats(x, y, tx, ty, s, ts, None, teacher, True)
        ones = torch.ones_like(lse_x)
        dx, dy, ds, (e_x, e_y) = _gradients(x, y, tx, ty, s, ts, (lse_x, lset_x, ones, alpha_x, None),
                                            (lse_y, lset_y, ones, alpha_y, None), teacher, True, *needs,
                                            cross=True, weight=weight)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(dx, dy, ds)
        ctx.scale_dtype = scale.dtype
        total = _row_losses(lse_x, e_x, pos, alpha_x).sum() + _row_losses(lse_y, e_y, pos, alpha_y).sum()
        return weight * total

    @staticmethod
    def backward(ctx, grad_loss):
        dx, dy, ds = ctx.saved_tensors
        if grad_loss is None:
            return (None,) * 11
        g = grad_loss.float()
        dx = None if dx is None else dx.mul_(g.to(dx.dtype))
        dy = None if dy is None else dy.mul_(g.to(dy.dtype))
        return (dx, dy, (g * ds).to(ctx.scale_dtype)) + (None,) * 8


def _operand(t: torch.Tensor) -> torch.Tensor:
    """t as the kernels read it: contiguous, 16-byte aligned, its width a multiple of 16.

    Triton's binder marks ints divisible by 16 and 16-byte aligned pointers; only with D, the row
    strides and the pointers marked are the rows' loads vectorised and pipelined (cp.async) and the
    tiles free of spills. Zero columns add nothing to any dot product, so the padded width gives
    the same scores; the copy is O(B D) and differentiable (the gradient is sliced back to t's width).
    """
    pad = -t.shape[1] % 16
    if pad:
        return torch.nn.functional.pad(t, (0, pad))
    t = t.contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


def _teacher_args(teacher_x, teacher_y, teacher_scale):
    """(teacher case, x~, y~, s~) for the kernels: the value of K.TEACHER_SELF (the student at its
    scale), K.TEACHER_SELF_SCALED (the student at s~) or K.TEACHER_SEPARATE."""
    if teacher_x is not None:
        teacher = K.TEACHER_SEPARATE.value
    else:
        teacher = (K.TEACHER_SELF if teacher_scale is None else K.TEACHER_SELF_SCALED).value
    tx = _operand(teacher_x.detach()) if teacher == K.TEACHER_SEPARATE.value else None
    ty = _operand(teacher_y.detach()) if teacher == K.TEACHER_SEPARATE.value else None
    ts = None if teacher_scale is None else teacher_scale.float()
    return teacher, tx, ty, ts


def psd_rows(x, y, scale, alpha, labels, teacher_x, teacher_y, teacher_scale):
    """Per-row losses of one direction (backend contract of psd_kernels.backends), fp32."""
    teacher, tx, ty, ts = _teacher_args(teacher_x, teacher_y, teacher_scale)
    return _PSDFunction.apply(_operand(x), _operand(y), scale, alpha.contiguous(), alpha.contiguous(),
                              labels.contiguous(), tx, ty, ts, teacher, False)


def clip_rows(image, text, scale, alpha_image, alpha_text, teacher_image, teacher_text, teacher_scale):
    """(2, B) per-row losses of both directions on one B x B matrix (diagonal positives), one sweep."""
    teacher, ti, tt, ts = _teacher_args(teacher_image, teacher_text, teacher_scale)
    return _PSDFunction.apply(_operand(image), _operand(text), scale, alpha_image.contiguous(),
                              alpha_text.contiguous(), None, ti, tt, ts, teacher, True)


def clip_weighted_loss(image, text, scale, alpha_image, alpha_text, teacher_image, teacher_text, teacher_scale,
                       weight):
    """weight * (sum of both directions' row losses) on one B x B matrix (backend contract). A teacher
    with statistics of its own, with gradients wanted: one sweep and the gradients in the forward
    (_ClipWeightedFunction); otherwise the sum of clip_rows."""
    teacher, ti, tt, ts = _teacher_args(teacher_image, teacher_text, teacher_scale)
    needs = tuple(torch.is_grad_enabled() and t.requires_grad for t in (image, text, scale))
    if teacher == K.TEACHER_SELF.value or not any(needs) or _column_stats_mode() != "partials" \
            or K.one_sweep_spills(image, teacher):
        return weight * clip_rows(image, text, scale, alpha_image, alpha_text, teacher_image, teacher_text,
                                  teacher_scale).sum()
    return _ClipWeightedFunction.apply(_operand(image), _operand(text), scale, alpha_image.contiguous(),
                                       alpha_text.contiguous(), ti, tt, ts, teacher, float(weight), needs)

from psd_kernels.backends.triton.siglip_launcher import siglip_rows, siglip_weighted_loss  # noqa: E402,F401  the sigmoid loss
