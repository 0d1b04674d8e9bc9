"""Triton kernels of the fused PSD loss (docs/fused_algorithm.md): forward, gradient tiles, products.

All kernels see one generic problem: rows `a` (n_a x D) against columns `b` (n_b x D),
S = s * a b^T, teacher logits T as selected by TEACHER:

    TEACHER = 0   self teacher at the student's scale: T = S, R = P (no teacher statistics)
    TEACHER = 1   self teacher at another scale:        T = s~ * a b^T (same dot products)
    TEACHER = 2   separate teacher:                     T = s~ * ta tb^T (a second product)

_psd_fwd_kernel   sweeps column tiles per row block (online softmax) and writes per-row
                  partial statistics per column split; for the symmetric loss it also folds
                  every tile into per-(row group, column) partials, so one sweep serves both
                  directions. Registers: the BLOCK_M x BLOCK_N score tile (and the teacher's).
_psd_grad_kernel  recomputes one BLOCK_M x BLOCK_N tile of S (and T) from the saved per-row
                  statistics and writes the gradient tile G = g (P - Q) (both directions'
                  terms for the symmetric loss) in the input dtype, plus the tile's share of
                  ds_i = sum_j G_ij d_ij. Registers: the score tiles only.
_gemm_kernel      C (fp32) = [C +] alpha * A @ B with any strides: the gradient products
                  dx = s G y and dy = s G^T x over the G tiles of a chunk of rows.

No kernel keeps a D-wide accumulator across column tiles (the old backward held BLOCK_M x D
fp32 gradient rows in registers and spilled); docs/fused_algorithm.md counts the FLOPs and
bytes of this split. In-tile offsets are 32-bit (a tile never spans 2^31 elements); the
per-program bases are 64-bit, so any B works. The host functions and the autograd Function
live in psd_kernels/triton_psd.py; psd_kernels/compile_check.py compiles every variant for
sm_80 / sm_90 / sm_100 and reports registers, spills and the tensor-core instruction.

Tested by: .venv/bin/python -m pytest tests/test_triton.py (under TRITON_INTERPRET=1).
"""
from __future__ import annotations

import os

import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _configs(shapes, keys=("BLOCK_M", "BLOCK_N")):
    """shapes: (block sizes..., num_warps, num_stages) tuples. The interpreter runs every config it
    is given; one small tile keeps its tests fast and still makes every masked edge appear."""
    if INTERPRET:
        small = {k: 16 for k in keys}
        return [triton.Config(small, num_warps=1, num_stages=1)]
    return [triton.Config(dict(zip(keys, shape[:-2])), num_warps=shape[-2], num_stages=shape[-1])
            for shape in shapes]


# (BLOCK_M, BLOCK_N, warps, stages). wgmma on sm_90 needs 64 rows per warpgroup of 4 warps, so
# 64-row tiles run 4 warps and 128-row tiles 8. Every config kept by the prune functions below is
# spill-free for 16-bit inputs on sm_80, sm_90 and sm_100 at any D (psd_kernels.compile_check;
# registers do not depend on D, which only sets the trip count of the K loops).
FWD_CONFIGS = _configs(((128, 64, 8, 2), (64, 64, 4, 2), (128, 32, 8, 3), (64, 32, 4, 3)))
GRAD_CONFIGS = _configs(((128, 64, 8, 3), (64, 64, 4, 3)))
GEMM_CONFIGS = _configs(((128, 128, 64, 8, 3), (64, 128, 64, 4, 4), (64, 64, 64, 4, 4)),
                        keys=("BLOCK_M", "BLOCK_N", "BLOCK_K"))


_ARCH_CACHE: dict = {}

# Configs that psd_kernels.compile_check saw spill on one arch only (with Triton's ptxas flags),
# as (arch, kernel, constexprs that must match, (BLOCK_M, BLOCK_N)); the prune functions drop them there.
_ARCH_SPILLS = (
    (100, "fwd", dict(TEACHER=0, COL_STATS=False), (128, 32)),
    (100, "fwd", dict(TEACHER=0, COL_STATS=True), (64, 32)),
    (100, "fwd", dict(TEACHER=1), (64, 32)),
    (100, "gemm", dict(ACCUMULATE=True), (64, 128)),
    (80, "grad", dict(B_DIR=True, TEACHER=0), (128, 64)),  # 8 bytes when n_b is not a multiple of 16
)


def _arch(operand) -> int:
    """Compute capability as 10 * major + minor of the device a launch runs on (cached per device),
    0 under the interpreter."""
    device = operand.device
    if device.type != "cuda":
        return 0
    import torch
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _ARCH_CACHE:
        major, minor = torch.cuda.get_device_capability(index)
        _ARCH_CACHE[index] = 10 * major + minor
    return _ARCH_CACHE[index]


def _drop_arch_spills(kernel, configs, named_args, kwargs):
    arch = _arch(named_args["a_ptr"])
    banned = {tile for a, k, when, tile in _ARCH_SPILLS
              if a == arch and k == kernel and all(kwargs.get(n) == v for n, v in when.items())}
    kept = [c for c in configs if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) not in banned]
    return kept or configs


def _prune_wide(configs, named_args, **kwargs):
    """fp32 inputs (tf32/ieee dots, twice the operand bytes) keep the tiles of at most 64 x 64."""
    if named_args["a_ptr"].element_size() < 4:
        return configs
    kept = [c for c in configs if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 64 * 64]
    return kept or configs[:1]


def _prune_grad(configs, named_args, **kwargs):
    return _drop_arch_spills("grad", _prune_wide(configs, named_args, **kwargs), named_args, kwargs)


def _prune_gemm(configs, named_args, **kwargs):
    """The accumulating product (db += s G^T a) reads A transposed and C back: its 128 x 128 tile
    spills on sm_80 (compile_check), so it keeps the smaller tiles."""
    kept = _prune_wide(configs, named_args, **kwargs)
    if kwargs.get("ACCUMULATE"):
        kept = [c for c in kept if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 64 * 128] or kept
    return _drop_arch_spills("gemm", kept, named_args, kwargs)


def _prune_fwd(configs, named_args, **kwargs):
    """The one-sweep symmetric forward (COL_STATS) also folds every tile into column statistics,
    and a separate teacher (TEACHER 2) adds a second score tile: their 64-wide tiles spill (sm_80,
    sm_90), so they keep the 32-wide ones."""
    kept = _prune_wide(configs, named_args, **kwargs)
    if kwargs.get("COL_STATS") or kwargs.get("TEACHER") == 2:
        kept = [c for c in kept if c.kwargs["BLOCK_N"] <= 32] or [c for c in configs if c.kwargs["BLOCK_N"] <= 32]
    return _drop_arch_spills("fwd", kept, named_args, kwargs)


@triton.jit
def _dot_tile(a_ptr, b_ptr, row0, col0, n_a, n_b, K, stride_a, stride_b,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
              DOT_FP32: tl.constexpr, PRECISION: tl.constexpr):
    """d = a[row0:row0+BLOCK_M] @ b[col0:col0+BLOCK_N]^T over K in BLOCK_K chunks, fp32 accumulation.

    Rows past n_a and columns past n_b read zeros. Per step: a BLOCK_M x BLOCK_K and a
    BLOCK_N x BLOCK_K slice (from L2), 2 BLOCK_M BLOCK_N BLOCK_K FLOPs.
    """
    rm = tl.arange(0, BLOCK_M)
    rn = tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + tl.cast(row0, tl.int64) * stride_a + (rm[:, None] * stride_a + rk[None, :])
    b_ptrs = b_ptr + tl.cast(col0, tl.int64) * stride_b + (rn[:, None] * stride_b + rk[None, :])
    a_rows = (row0 + rm) < n_a
    b_rows = (col0 + rn) < n_b
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_mask = (k0 + rk) < K
        a = tl.load(a_ptrs, mask=a_rows[:, None] & k_mask[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=b_rows[:, None] & k_mask[None, :], other=0.0)
        if DOT_FP32:  # the interpreter's reduced-precision dot is wrong; upcast there
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, tl.trans(b), acc, input_precision=PRECISION)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
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
    exp(T - mt) * S, rescaled whenever mt moves; pos = S_{i,c_i} from the tile that holds
    c_i (the same S as in lse, so a one-column loss cancels exactly). Writes 6 floats per
    (row, split) to part (6, n_a, n_split).
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
    colpart = colpart_ptr + tl.cast(pid_g, tl.int64) * n_b
    col_plane = tl.cast(n_groups, tl.int64) * n_b

    for rb in range(rb_start, rb_end):
        row0 = rb * BLOCK_M
        rows = row0 + tl.arange(0, BLOCK_M)
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
            d = _dot_tile(a_ptr, b_ptr, row0, c0, n_a, n_b, D, stride_a, stride_b,
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
                    T = st * _dot_tile(ta_ptr, tb_ptr, row0, c0, n_a, n_b, DT, stride_ta, stride_tb,
                                       BLOCK_M, BLOCK_N, BLOCK_KT, DOT_FP32, PRECISION)
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
        plane = tl.cast(n_a, tl.int64) * n_split
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


@triton.autotune(configs=GRAD_CONFIGS, key=["TUNE_N", "D", "DT", "TEACHER", "A_DIR", "B_DIR"],
                 prune_configs_by={"early_config_prune": _prune_grad})
@triton.jit
def _psd_grad_kernel(a_ptr, b_ptr, ta_ptr, tb_ptr, scale_ptr, tscale_ptr,
                     lse_a_ptr, lset_a_ptr, g_a_ptr, alpha_a_ptr, labels_a_ptr,
                     lse_b_ptr, lset_b_ptr, g_b_ptr, alpha_b_ptr, labels_b_ptr,
                     grad_ptr, ds_ptr, row_start, n_rows, n_b, stride_g, D, DT,
                     stride_a, stride_b, stride_ta, stride_tb, TUNE_N,
                     A_DIR: tl.constexpr, B_DIR: tl.constexpr, TEACHER: tl.constexpr,
                     LABELS_DIAG: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_KT: tl.constexpr,
                     DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One tile of the gradient matrix, recomputed from the saved per-row statistics.

        G_ij = [A_DIR] g_i (P_ij - Q_ij) + [B_DIR] g'_j (P'_ji - Q'_ji)

    for rows i in [row_start, row_start + n_rows) of a and columns j of b. A_DIR: the
    direction whose queries are a's rows (statistics lse_a ..., positive column
    labels_a). B_DIR: the direction whose queries are b's rows (statistics of b's
    rows, positive row labels_b), i.e. P'_ji = exp(S_ij - lse_b[j]).
    Program (i, j) writes G[rows, cols] to grad (n_rows x n_b, row stride stride_g, input dtype) and its
    share sum_{j in tile} G_ij d_ij of the logit-scale gradient to ds (n_col_tiles, n_rows).
    Per tile: 2 BLOCK_M BLOCK_N D FLOPs (+ D' with a separate teacher), reads the
    operand slices from L2, writes the tile once.
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    local = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = row_start + local
    row_mask = local < n_rows
    col0 = pid_n * BLOCK_N
    cols = col0 + tl.arange(0, BLOCK_N)
    col_mask = cols < n_b
    s = tl.load(scale_ptr).to(tl.float32)
    st = tl.load(tscale_ptr).to(tl.float32)

    d = _dot_tile(a_ptr, b_ptr, row_start + pid_m * BLOCK_M, col0, row_start + n_rows, n_b, D, stride_a,
                  stride_b, BLOCK_M, BLOCK_N, BLOCK_K, DOT_FP32, PRECISION)
    S = s * d
    if TEACHER == 1:
        T = st * d
    elif TEACHER == 2:
        T = st * _dot_tile(ta_ptr, tb_ptr, row_start + pid_m * BLOCK_M, col0, row_start + n_rows, n_b, DT,
                           stride_ta, stride_tb, BLOCK_M, BLOCK_N, BLOCK_KT, DOT_FP32, PRECISION)
    else:
        T = S
    G = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if A_DIR:
        lse_a = tl.load(lse_a_ptr + rows, mask=row_mask, other=0.0)[:, None]
        lset_a = tl.load(lset_a_ptr + rows, mask=row_mask, other=0.0)[:, None]
        g_a = tl.load(g_a_ptr + rows, mask=row_mask, other=0.0)[:, None]
        alpha_a = tl.load(alpha_a_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)[:, None]
        if LABELS_DIAG:
            lab_a = rows
        else:
            lab_a = tl.load(labels_a_ptr + rows, mask=row_mask, other=-1)
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
    tile_mask = row_mask[:, None] & col_mask[None, :]
    G = tl.where(tile_mask, G, 0.0)
    tl.store(ds_ptr + tl.cast(pid_n, tl.int64) * n_rows + local, tl.sum(G * d, axis=1), mask=row_mask)
    out = grad_ptr + tl.cast(pid_m * BLOCK_M, tl.int64) * stride_g + col0 \
        + (tl.arange(0, BLOCK_M)[:, None] * stride_g + tl.arange(0, BLOCK_N)[None, :])
    tl.store(out, G.to(grad_ptr.dtype.element_ty), mask=tile_mask)


@triton.autotune(configs=GEMM_CONFIGS, key=["M", "N", "K", "ACCUMULATE"],
                 prune_configs_by={"early_config_prune": _prune_gemm}, restore_value=["c_ptr"])
@triton.jit
def _gemm_kernel(a_ptr, b_ptr, c_ptr, alpha_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn, stride_cm,
                 ACCUMULATE: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """C = [C +] alpha * A @ B, A (M x K) and B (K x N) of one dtype with any strides, C fp32 (M x N,
    row stride stride_cm), fp32 accumulation. Each program owns one BLOCK_M x BLOCK_N tile of C,
    so accumulation needs no atomics. Per K step: BLOCK_M x BLOCK_K and BLOCK_K x BLOCK_N operand
    slices, 2 BLOCK_M BLOCK_N BLOCK_K FLOPs.
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = tl.arange(0, BLOCK_M)
    rn = tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    row0 = pid_m * BLOCK_M
    col0 = pid_n * BLOCK_N
    a_ptrs = a_ptr + tl.cast(row0, tl.int64) * stride_am + (rm[:, None] * stride_am + rk[None, :] * stride_ak)
    b_ptrs = b_ptr + tl.cast(col0, tl.int64) * stride_bn + (rk[:, None] * stride_bk + rn[None, :] * stride_bn)
    a_rows = (row0 + rm) < M
    b_cols = (col0 + rn) < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_mask = (k0 + rk) < K
        a = tl.load(a_ptrs, mask=a_rows[:, None] & k_mask[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_mask[:, None] & b_cols[None, :], other=0.0)
        if DOT_FP32:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    acc = acc * tl.load(alpha_ptr).to(tl.float32)
    c_ptrs = c_ptr + tl.cast(row0, tl.int64) * stride_cm + col0 + (rm[:, None] * stride_cm + rn[None, :])
    c_mask = a_rows[:, None] & b_cols[None, :]
    if ACCUMULATE:
        acc += tl.load(c_ptrs, mask=c_mask, other=0.0)
    tl.store(c_ptrs, acc, mask=c_mask)
