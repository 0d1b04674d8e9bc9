"""Triton kernels of the fused PSD loss (docs/fused_algorithm.md): forward and backward.

Both kernels see one generic problem: rows `a` (n_a x D) against columns `b`
(n_b x D), S = s * a b^T, teacher logits T as selected by TEACHER:

    TEACHER = 0   self teacher at the student's scale: T = S, R = P (no teacher statistics)
    TEACHER = 1   self teacher at another scale:        T = s~ * a b^T (same dot products)
    TEACHER = 2   separate teacher:                     T = s~ * ta tb^T (a second product)

The forward sweeps column tiles per row block (online softmax), writing per-row
partial statistics per column split; for the symmetric loss it also folds every
tile into per-(row group, column) partials, so one sweep serves both directions.
The backward recomputes the tiles from the saved per-row statistics: one call
per side (rows a = image for d image, a = text for d text), or one call whose
column side is added atomically. No kernel writes an n_a x n_b buffer. The host
functions and the autograd Function live in psd_kernels/triton_psd.py.

Tested by: .venv/bin/python -m pytest tests/test_triton.py (under TRITON_INTERPRET=1).
"""
from __future__ import annotations

import os

import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# Per-thread fp32 accumulator budget of the backward: BLOCK_M * BLOCK_D / (32 * num_warps)
# registers hold the gradient rows; above ~128 the kernel spills. The atomic variant's
# BLOCK_N x BLOCK_D column-gradient tile lives only within one step: it may add half again.
_ACC_REGS_PER_THREAD = 128


def keep_fwd(config) -> bool:
    """Forward filter: eight warps exactly for the tiles of 128 x 64 and up."""
    area = config.kwargs["BLOCK_M"] * config.kwargs["BLOCK_N"]
    return (config.num_warps == 8) == (area >= 128 * 64)


def keep_bwd(config) -> bool:
    """Backward filter: four warps up to BLOCK_M = 32, eight from 32 on (for the gradient rows)."""
    bm = config.kwargs["BLOCK_M"]
    return (bm <= 32 and config.num_warps == 4) or (bm >= 32 and config.num_warps == 8)


def _configs(tiles, warps, stages, keep):
    if INTERPRET:
        # The interpreter runs every config it is given; one small tile keeps tests fast
        # and still makes every masked edge and every column split appear.
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=1, num_stages=1)]
    return [c for c in (triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st)
                        for bm, bn in tiles for w in warps for st in stages) if keep(c)]


# Forward: a GEMM with an online-softmax epilogue; big tiles amortise the epilogue.
FWD_CONFIGS = _configs(((64, 64), (128, 64), (64, 128), (128, 128)), (4, 8), (3, 4), keep_fwd)
# Backward: BLOCK_M x BLOCK_D fp32 gradient rows live in registers, so BLOCK_M stays small.
BWD_CONFIGS = _configs(((16, 32), (32, 32), (32, 64), (64, 32), (64, 64)), (4, 8), (2,), keep_bwd)


def _prune_fwd(configs, named_args, **kwargs):
    """fp32 inputs use at most 64 x 128 tiles: their operands take twice the shared memory."""
    wide = named_args["a_ptr"].element_size() >= 4
    kept = [c for c in configs if not wide or c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 64 * 128]
    return kept or configs[:1]


def _prune_bwd(configs, named_args, **kwargs):
    """Drop tiles whose fp32 gradient rows (BLOCK_M x BLOCK_D, plus the BLOCK_N x BLOCK_D
    tile of atomically added column gradients) or staged column tiles do not fit."""
    block_d = kwargs["BLOCK_D"]
    size = named_args["a_ptr"].element_size()
    atomic = kwargs.get("ATOMIC_DB", False)
    budget = _ACC_REGS_PER_THREAD * 3 // 2 if atomic else _ACC_REGS_PER_THREAD
    kept = [c for c in configs
            if (c.kwargs["BLOCK_M"] + atomic * c.kwargs["BLOCK_N"]) * block_d // (32 * c.num_warps) <= budget
            and c.kwargs["BLOCK_N"] * block_d * size * c.num_stages <= 160 * 1024]
    return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])]


@triton.jit
def _dot_tile(a_ptr, b_ptr, rows, cols, row_mask, col_mask, K, stride_a, stride_b,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
              DOT_FP32: tl.constexpr, PRECISION: tl.constexpr):
    """d = a[rows] @ b[cols]^T over K in BLOCK_K chunks, fp32 accumulation (masked rows/cols give 0)."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    a_row = a_ptr + rows.to(tl.int64)[:, None] * stride_a
    b_row = b_ptr + cols.to(tl.int64)[:, None] * stride_b
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < K
        a = tl.load(a_row + ks[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        b = tl.load(b_row + ks[None, :], mask=col_mask[:, None] & k_mask[None, :], other=0.0)
        if DOT_FP32:  # the interpreter's reduced-precision dot is wrong; upcast there
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, tl.trans(b), acc, input_precision=PRECISION)
    return acc


@triton.jit
def _col_update(ptr, stride_k, cols, col_mask, block_in_group, S, T, row_mask, TEACHER: tl.constexpr):
    """Fold one tile into the column statistics of a row group (read-modify-write).

    Column j's running (m', l') of exp(S_ij - m') over the group's rows i, the
    teacher's (mt', lt') and w' = sum_i exp(T_ij - mt') S_ij, as in the row sweep
    with the roles of rows and columns swapped. The group's first row block
    (block_in_group == 0) starts from the empty state instead of reading the
    buffer, so a re-run (e.g. by the autotuner) never folds a tile in twice.
    """
    load_mask = col_mask & (block_in_group != 0)
    m = tl.load(ptr + cols, mask=load_mask, other=-1.0e30)
    l = tl.load(ptr + stride_k + cols, mask=load_mask, other=0.0)
    mt = tl.load(ptr + 2 * stride_k + cols, mask=load_mask, other=-1.0e30)
    lt = tl.load(ptr + 3 * stride_k + cols, mask=load_mask, other=0.0)
    w = tl.load(ptr + 4 * stride_k + cols, mask=load_mask, other=0.0)
    S_max = tl.where(row_mask[:, None], S, float("-inf"))
    m_new = tl.maximum(m, tl.max(S_max, axis=0))
    p = tl.exp(S_max - m_new[None, :])
    corr = tl.exp(m - m_new)
    l = l * corr + tl.sum(p, axis=0)
    if TEACHER == 0:
        w = w * corr + tl.sum(p * S, axis=0)
        mt = m_new
        lt = l
    else:
        T_max = tl.where(row_mask[:, None], T, float("-inf"))
        mt_new = tl.maximum(mt, tl.max(T_max, axis=0))
        pt = tl.exp(T_max - mt_new[None, :])
        corr_t = tl.exp(mt - mt_new)
        lt = lt * corr_t + tl.sum(pt, axis=0)
        w = w * corr_t + tl.sum(pt * S, axis=0)
        mt = mt_new
    tl.store(ptr + cols, m_new, mask=col_mask)
    tl.store(ptr + stride_k + cols, l, mask=col_mask)
    tl.store(ptr + 2 * stride_k + cols, mt, mask=col_mask)
    tl.store(ptr + 3 * stride_k + cols, lt, mask=col_mask)
    tl.store(ptr + 4 * stride_k + cols, w, mask=col_mask)


@triton.autotune(configs=FWD_CONFIGS, key=["TUNE_N", "D", "DT", "TEACHER", "COL_STATS"],
                 prune_configs_by={"early_config_prune": _prune_fwd})
@triton.jit
def _psd_fwd_kernel(a_ptr, b_ptr, ta_ptr, tb_ptr, labels_ptr, scale_ptr, tscale_ptr, part_ptr, colpart_ptr,
                    n_a, n_b, D, DT, stride_a, stride_b, stride_ta, stride_tb, n_split, n_groups, TUNE_N,
                    TEACHER: tl.constexpr, LABELS_DIAG: tl.constexpr, COL_STATS: tl.constexpr,
                    BLOCK_K: tl.constexpr, BLOCK_KT: tl.constexpr,
                    DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Row statistics of one column split, and column statistics of one row group.

    Program (g, h): the row blocks of row group g (of n_groups) against the column
    tiles of split h (of n_split). Per row block, online over the split's tiles:
    running max m and sum l of exp(S - m); mt, lt for the teacher; w = sum
    exp(T - mt) * S, rescaled whenever mt moves; pos = S_{i,c_i} when the tile
    holds c_i. Writes 6 floats per (row, split) to part (6, n_a, n_split).
    COL_STATS (the symmetric loss, one sweep for both directions): each tile is
    also folded into 5 floats per (group, column) in colpart (5, n_groups, n_b).
    Per tile: reads a BLOCK_M x D and a BLOCK_N x D slice (L2), 2 BLOCK_M BLOCK_N D
    FLOPs (twice with a separate teacher). The host merges the partials:
        lse = LSE_h(m_h + log l_h),  E_R[S] = sum_h w_h e^{mt_h} / sum_h lt_h e^{mt_h}.
    """
    pid_g = tl.program_id(0)
    pid_h = tl.program_id(1)
    s = tl.load(scale_ptr).to(tl.float32)
    st = tl.load(tscale_ptr).to(tl.float32)

    n_row_blocks = tl.cdiv(n_a, BLOCK_M)
    blocks_per_group = tl.cdiv(n_row_blocks, n_groups)
    rb_start = pid_g * blocks_per_group
    rb_end = tl.minimum(rb_start + blocks_per_group, n_row_blocks)
    tiles_per_split = tl.cdiv(tl.cdiv(n_b, BLOCK_N), n_split)
    start = pid_h * tiles_per_split * BLOCK_N
    end = tl.minimum(start + tiles_per_split * BLOCK_N, n_b)
    colpart = colpart_ptr + pid_g * n_b
    col_plane = n_groups * n_b

    for rb in range(rb_start, rb_end):
        rows = rb * BLOCK_M + tl.arange(0, BLOCK_M)
        row_mask = rows < n_a
        if LABELS_DIAG:
            lab = rows
        else:
            lab = tl.load(labels_ptr + rows, mask=row_mask, other=-1)
        # A finite floor for the running maxima: exp(floor - finite) = 0, never NaN.
        m = tl.full((BLOCK_M,), -1.0e30, tl.float32)
        l = tl.zeros((BLOCK_M,), tl.float32)
        mt = tl.full((BLOCK_M,), -1.0e30, tl.float32)
        lt = tl.zeros((BLOCK_M,), tl.float32)
        w = tl.zeros((BLOCK_M,), tl.float32)
        pos = tl.zeros((BLOCK_M,), tl.float32)
        for c0 in range(start, end, BLOCK_N):
            cols = c0 + tl.arange(0, BLOCK_N)
            col_mask = cols < n_b
            d = _dot_tile(a_ptr, b_ptr, rows, cols, row_mask, col_mask, D, stride_a, stride_b,
                          BLOCK_M, BLOCK_N, BLOCK_K, DOT_FP32, PRECISION)
            S = s * d  # finite everywhere (masked rows and columns read zeros)
            S_max = tl.where(col_mask[None, :], S, float("-inf"))
            m_new = tl.maximum(m, tl.max(S_max, axis=1))
            p = tl.exp(S_max - m_new[:, None])  # 0 on masked columns
            corr = tl.exp(m - m_new)
            l = l * corr + tl.sum(p, axis=1)
            if TEACHER == 0:
                # T = S: the teacher weights are P's, w = sum exp(S - m) S.
                T = S
                w = w * corr + tl.sum(p * S, axis=1)
            else:
                if TEACHER == 1:
                    T = st * d
                else:
                    T = st * _dot_tile(ta_ptr, tb_ptr, rows, cols, row_mask, col_mask, DT, stride_ta,
                                       stride_tb, BLOCK_M, BLOCK_N, BLOCK_KT, DOT_FP32, PRECISION)
                T_max = tl.where(col_mask[None, :], T, float("-inf"))
                mt_new = tl.maximum(mt, tl.max(T_max, axis=1))
                pt = tl.exp(T_max - mt_new[:, None])
                corr_t = tl.exp(mt - mt_new)
                lt = lt * corr_t + tl.sum(pt, axis=1)
                w = w * corr_t + tl.sum(pt * S, axis=1)
                mt = mt_new
            pos += tl.sum(tl.where(cols[None, :] == lab[:, None], S, 0.0), axis=1)
            m = m_new
            if COL_STATS:
                _col_update(colpart, col_plane, cols, col_mask, rb - rb_start, S, T, row_mask, TEACHER)
        if TEACHER == 0:
            mt = m
            lt = l
        plane = n_a * n_split
        out = part_ptr + rows.to(tl.int64) * n_split + pid_h
        tl.store(out, m, mask=row_mask)
        tl.store(out + plane, l, mask=row_mask)
        tl.store(out + 2 * plane, mt, mask=row_mask)
        tl.store(out + 3 * plane, lt, mask=row_mask)
        tl.store(out + 4 * plane, w, mask=row_mask)
        tl.store(out + 5 * plane, pos, mask=row_mask)


@triton.jit
def _direction_grad(S, T, lse, lset, g, alpha, onehot, TEACHER: tl.constexpr):
    """g * (P - Q) for one direction, lse/lset/g/alpha broadcast to the tile.

    P = exp(S - lse), R = exp(T - lset), Q = (1 - alpha) onehot + alpha R;
    with a self teacher at the same scale R = P, so g (1 - alpha) (P - onehot).
    """
    P = tl.exp(S - lse)
    hot = onehot.to(tl.float32)
    if TEACHER == 0:
        G = (1.0 - alpha) * (P - hot)
    else:
        G = P - (1.0 - alpha) * hot - alpha * tl.exp(T - lset)
    return g * G


@triton.autotune(configs=BWD_CONFIGS, key=["TUNE_N", "D", "DT", "TEACHER", "ATOMIC_DB"],
                 prune_configs_by={"early_config_prune": _prune_bwd}, restore_value=["db_ptr"])
@triton.jit
def _psd_bwd_kernel(a_ptr, b_ptr, ta_ptr, tb_ptr, scale_ptr, tscale_ptr,
                    lse_a_ptr, lset_a_ptr, g_a_ptr, alpha_a_ptr, labels_a_ptr,
                    lse_b_ptr, lset_b_ptr, g_b_ptr, alpha_b_ptr, labels_b_ptr,
                    da_ptr, ds_ptr, db_ptr,
                    n_a, n_b, D, DT, stride_a, stride_b, stride_ta, stride_tb, n_split, TUNE_N,
                    A_DIR: tl.constexpr, B_DIR: tl.constexpr, TEACHER: tl.constexpr,
                    LABELS_DIAG: tl.constexpr, COMPUTE_DS: tl.constexpr, ATOMIC_DB: tl.constexpr,
                    BLOCK_K: tl.constexpr, BLOCK_KT: tl.constexpr, BLOCK_D: tl.constexpr,
                    DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Gradient rows of `a` over one column split, recomputing every tile.

        G_ij = [A_DIR] g_i (P_ij - Q_ij) + [B_DIR] g'_j (P'_ji - Q'_ji)
        da_i = s * sum_j G_ij b_j            ds_i = sum_j G_ij <a_i, b_j>

    A_DIR: the direction whose queries are the rows a (statistics lse_a ... of a's
    rows, positive column labels_a). B_DIR: the direction whose queries are the
    columns b (statistics of b's rows, positive row labels_b), i.e. P'_ji =
    exp(S_ij - lse_b[j]). Called with (x, y) for dx and (y, x) for dy, so neither
    side needs atomics. Per tile: reads a block (L2) and the column tile twice
    (the product and G @ b); writes da (n_split, n_a, D) fp32 and ds (n_split, n_a)
    once per program, summed on the host.
    Grid (row blocks, column splits, D slices): D wider than BLOCK_D is covered by
    slices that each recompute the tiles (only for D > 1024, see the host).
    ATOMIC_DB: one call for both sides instead, db_j += s * sum_i G_ij a_i added
    atomically per tile into db (n_b, D) fp32, zeroed by the host (one recomputation
    of S instead of two; the order of the additions, hence the last bits, varies).
    """
    pid_m = tl.program_id(0)
    pid_h = tl.program_id(1)
    pid_d = tl.program_id(2)  # which BLOCK_D-wide slice of the gradient rows (D > BLOCK_D)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < n_a
    s = tl.load(scale_ptr).to(tl.float32)
    st = tl.load(tscale_ptr).to(tl.float32)
    if A_DIR:
        lse_a = tl.load(lse_a_ptr + rows, mask=row_mask, other=0.0)[:, None]
        lset_a = tl.load(lset_a_ptr + rows, mask=row_mask, other=0.0)[:, None]
        g_a = tl.load(g_a_ptr + rows, mask=row_mask, other=0.0)[:, None]
        alpha_a = tl.load(alpha_a_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)[:, None]
        if LABELS_DIAG:
            lab_a = rows
        else:
            lab_a = tl.load(labels_a_ptr + rows, mask=row_mask, other=-1)

    dcols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = dcols < D
    if ATOMIC_DB:
        a_full = tl.load(a_ptr + rows.to(tl.int64)[:, None] * stride_a + dcols[None, :],
                         mask=row_mask[:, None] & d_mask[None, :], other=0.0)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    ds = tl.zeros((BLOCK_M,), dtype=tl.float32)

    tiles_per_split = tl.cdiv(tl.cdiv(n_b, BLOCK_N), n_split)
    start = pid_h * tiles_per_split * BLOCK_N
    end = tl.minimum(start + tiles_per_split * BLOCK_N, n_b)
    for c0 in range(start, end, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        col_mask = cols < n_b
        d = _dot_tile(a_ptr, b_ptr, rows, cols, row_mask, col_mask, D, stride_a, stride_b,
                      BLOCK_M, BLOCK_N, BLOCK_K, DOT_FP32, PRECISION)
        S = s * d
        if TEACHER == 1:
            T = st * d
        elif TEACHER == 2:
            T = st * _dot_tile(ta_ptr, tb_ptr, rows, cols, row_mask, col_mask, DT, stride_ta, stride_tb,
                               BLOCK_M, BLOCK_N, BLOCK_KT, DOT_FP32, PRECISION)
        else:
            T = S
        G = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        if A_DIR:
            G += _direction_grad(S, T, lse_a, lset_a, g_a, alpha_a, cols[None, :] == lab_a[:, None], TEACHER)
        if B_DIR:
            lse_b = tl.load(lse_b_ptr + cols, mask=col_mask, other=0.0)[None, :]
            lset_b = tl.load(lset_b_ptr + cols, mask=col_mask, other=0.0)[None, :]
            g_b = tl.load(g_b_ptr + cols, mask=col_mask, other=0.0)[None, :]
            alpha_b = tl.load(alpha_b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
            if LABELS_DIAG:
                lab_b = cols
            else:
                lab_b = tl.load(labels_b_ptr + cols, mask=col_mask, other=-1)
            G += _direction_grad(S, T, lse_b, lset_b, g_b, alpha_b, rows[:, None] == lab_b[None, :], TEACHER)
        G = tl.where(row_mask[:, None] & col_mask[None, :], G, 0.0)
        if COMPUTE_DS:
            ds += tl.sum(G * d, axis=1)
        b_full = tl.load(b_ptr + cols.to(tl.int64)[:, None] * stride_b + dcols[None, :],
                         mask=col_mask[:, None] & d_mask[None, :], other=0.0)
        if DOT_FP32:
            acc = tl.dot(G, b_full.to(tl.float32), acc, input_precision=PRECISION)
        else:
            acc = tl.dot(G.to(b_full.dtype), b_full, acc, input_precision=PRECISION)
        if ATOMIC_DB:
            if DOT_FP32:
                db = tl.dot(tl.trans(G), a_full.to(tl.float32), input_precision=PRECISION)
            else:
                db = tl.dot(tl.trans(G.to(a_full.dtype)), a_full, input_precision=PRECISION)
            tl.atomic_add(db_ptr + cols.to(tl.int64)[:, None] * D + dcols[None, :], s * db,
                          mask=col_mask[:, None] & d_mask[None, :], sem="relaxed")

    out = da_ptr + (pid_h * n_a + rows.to(tl.int64))[:, None] * D + dcols[None, :]
    tl.store(out, s * acc, mask=row_mask[:, None] & d_mask[None, :])
    if COMPUTE_DS:  # every D slice computes ds; the first one stores it
        tl.store(ds_ptr + pid_h * n_a + rows, ds, mask=row_mask & (pid_d == 0))
