"""Triton kernels of the fused PSD loss (docs/fused_algorithm.md): forward, gradient tiles, products.

All kernels see one generic problem: rows `a` (n_a x D) against columns `b` (n_b x D),
S = s * a b^T, teacher logits T as selected by the constexpr TEACHER, one of (the teacher cases,
named "self", "self_scaled" and "separate" in psd_kernels.tools and benchmarks/):

    TEACHER_SELF         = 0  the student at its own scale:   T = S, R = P (no teacher statistics)
    TEACHER_SELF_SCALED  = 1  the student at another scale:   T = s~ * a b^T (same dot products)
    TEACHER_SEPARATE     = 2  separate teacher embeddings:    T = s~ * ta tb^T (a second product)

_psd_fwd_kernel   sweeps column tiles per row block (online softmax) and writes per-row
                  partial statistics per column split; for the symmetric loss it also folds
                  every tile into per-(row group, column) partials, so one sweep serves both
                  directions (with a teacher of statistics of its own: the student's, then the
                  teacher's, without the cross terms E_R[S], so S and T are never live together).
                  Registers: the BLOCK_M x BLOCK_N score tile (and the teacher's).
_psd_grad_kernel  recomputes one BLOCK_M x BLOCK_N tile of S (and T) from the saved per-row
                  statistics and writes the gradient tile G = g (P - Q) (both directions'
                  terms for the symmetric loss) in the input dtype, plus the tile's share of
                  ds_i = sum_j G_ij d_ij and, on request (CROSS), of the cross terms E_R[S] of
                  rows and columns. Registers: the score tiles only.
_gemm_kernel      C (fp32) = [C +] alpha * A @ B with any strides: the gradient products
                  dx = s G y and dy = s G^T x over the G tiles of a chunk of rows; a third
                  grid axis splits K when the output tiles alone are too few for the SMs.

No kernel keeps a D-wide accumulator across column tiles (the old backward held BLOCK_M x D
fp32 gradient rows in registers and spilled); docs/fused_algorithm.md counts the FLOPs and
bytes of this split. In-tile offsets are 32-bit (a tile never spans 2^31 elements); the
per-program bases are 64-bit, so any B works. The host functions and the autograd Function
live in psd_kernels/backends/triton/launcher.py; psd_kernels/tools/compile_check.py compiles every variant for
sm_80 / sm_90 / sm_100 and reports registers, spills and the tensor-core instruction.

Tested by: .venv/bin/python -m pytest tests/test_triton.py (under TRITON_INTERPRET=1).
"""
from __future__ import annotations

import os

import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# The teacher cases (module docstring). Triton reads a global inside a kernel only when it is a
# tl.constexpr instance; on the host `teacher == TEACHER_SEPARATE` compares by value and
# TEACHER_SEPARATE.value is the int a launch passes.
TEACHER_SELF = tl.constexpr(0)
TEACHER_SELF_SCALED = tl.constexpr(1)
TEACHER_SEPARATE = tl.constexpr(2)


def _configs(shapes, keys=("BLOCK_M", "BLOCK_N"), maxnreg=None):
    """shapes: (block sizes..., num_warps, num_stages) tuples; maxnreg caps ptxas's registers per
    thread. The interpreter runs every config it is given; one small tile keeps its tests fast and
    still makes every masked edge appear."""
    if INTERPRET:
        small = {k: 16 for k in keys}
        return [triton.Config(small, num_warps=1, num_stages=1)]
    return [triton.Config(dict(zip(keys, shape[:-2])), num_warps=shape[-2], num_stages=shape[-1],
                          maxnreg=maxnreg) for shape in shapes]


# (BLOCK_M, BLOCK_N, warps, stages). wgmma on sm_90 needs 64 rows per warpgroup of 4 warps, so
# 64-row tiles run 4 warps and 128-row tiles 8 (one exception below, for sm_100). Every config
# kept by the prune functions below is spill-free for 16-bit inputs on sm_80, sm_90 and sm_100 at
# any D (psd_kernels.tools.compile_check; registers do not depend on D, which only sets the trip
# count of the K loops). The 4-stage forward config serves the one sweep with column partials only,
# the 32-wide gradient tile only where the 64-wide ones spill (see the prune functions).
FWD_CONFIGS = _configs(((128, 64, 8, 2), (64, 64, 4, 2), (128, 32, 8, 3), (128, 32, 8, 4), (64, 32, 4, 3)))
# sm_100's one sweep: 64 x 32 tiles on 8 warps (8 fp32 values of each score tile per thread instead
# of 16), 139 to 213 registers with Triton 3.6.0 / 3.8.0 / 3.9.0. Its cap of 224 registers is
# needed: left to itself ptxas holds this kernel to 128 (two CTAs of 256 threads per SM) and
# spills 8 to 40 bytes per thread.
FWD_CONFIGS += [] if INTERPRET else _configs(((64, 32, 8, 3),), maxnreg=224)
GRAD_CONFIGS = _configs(((128, 64, 8, 3), (64, 64, 4, 3), (128, 32, 8, 3)))
GEMM_CONFIGS = _configs(((128, 128, 64, 8, 3), (64, 128, 64, 4, 4), (64, 64, 64, 4, 4)),
                        keys=("BLOCK_M", "BLOCK_N", "BLOCK_K"))


_ARCH_CACHE: dict = {}

TRITON_RELEASE = tuple(int(part) for part in triton.__version__.split(".")[:2])

# Configs that psd_kernels.tools.compile_check saw spill on one arch only (with Triton's ptxas flags),
# as (arch, kernel, constexprs that must match, (BLOCK_M, BLOCK_N) or (BLOCK_M, BLOCK_N, num_warps));
# the prune functions drop them there.
_ARCH_SPILLS = (
    (100, "fwd", dict(TEACHER=TEACHER_SELF, COL_STATS=False), (128, 32)),
    # sm_100's one sweep, every teacher: 128 x 32 on 8 warps and 64 x 32 on 4 sit at 251-255
    # registers and spill 8 to 40 bytes per thread with Triton 3.6.0 or 3.9.0 (clean with 3.8.0,
    # no headroom); it runs 64 x 32 on 8 warps
    (100, "fwd", dict(COL_STATS=True), (128, 32)),
    (100, "fwd", dict(COL_STATS=True), (64, 32, 4)),
    # the symmetric loss's second sweep (PSD_TRITON_COLUMN_STATS=second_pass): at B a multiple of 16 ptxas
    # holds the 64-row tiles to 128 / 168 registers and spills 8 / 16 bytes; 128 x 64 stays spill-free
    (100, "fwd", dict(TEACHER=TEACHER_SELF, LABELS_DIAG=True, COL_STATS=False), (64, 32)),
    (100, "fwd", dict(TEACHER=TEACHER_SELF, LABELS_DIAG=True, COL_STATS=False), (64, 64)),
    (100, "fwd", dict(TEACHER=TEACHER_SELF_SCALED, COL_STATS=False), (64, 32)),
    # 16 bytes with Triton 3.9.0; before Triton 3.6 this launch does not run (one_sweep_spills)
    (90, "fwd", dict(TEACHER=TEACHER_SEPARATE, COL_STATS=True), (128, 32)),
    (100, "grad", dict(CROSS=True), (128, 64)),
    (100, "grad", dict(CROSS=True), (64, 64)),
    (100, "gemm", dict(ACCUMULATE=True), (64, 128)),
    (80, "grad", dict(B_DIR=True, TEACHER=TEACHER_SELF), (128, 64)),  # 8 bytes when n_b is not a multiple of 16
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


def one_sweep_spills(operand, teacher: int) -> bool:
    """Whether the symmetric one sweep (COL_STATS) would spill on this launch's GPU: with a separate
    teacher on sm_90, Triton 3.4.0 (torch 2.8's) spills in every tile the sweep keeps (128 x 32 on 8
    warps 8 bytes per thread, 64 x 32 on 4 warps 8 / 16 bytes); 3.6.0 and 3.8.0 do not (3.5 is
    not checked). The launcher then takes the column statistics by a second pass."""
    return teacher == TEACHER_SEPARATE.value and TRITON_RELEASE < (3, 6) and _arch(operand) == 90


def _drop_arch_spills(kernel, configs, named_args, kwargs):
    arch = _arch(named_args["a_ptr"])
    banned = {tile for a, k, when, tile in _ARCH_SPILLS
              if a == arch and k == kernel and all(kwargs.get(n) == v for n, v in when.items())}
    kept = [c for c in configs if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) not in banned
            and (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps) not in banned]
    return kept or configs


def _prune_wide(configs, named_args, **kwargs):
    """fp32 inputs (tf32/ieee dots, twice the operand bytes) keep the tiles of at most 64 x 64."""
    if named_args["a_ptr"].element_size() < 4:
        return configs
    kept = [c for c in configs if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 64 * 64]
    return kept or configs[:1]


def _prune_grad(configs, named_args, **kwargs):
    """The 64-wide tiles; the 32-wide one only where both spill (sm_100 with the cross terms, 56 to
    88 bytes per thread once the launch's sizes are specialised)."""
    kept = _drop_arch_spills("grad", _prune_wide(configs, named_args, **kwargs), named_args, kwargs)
    return [c for c in kept if c.kwargs["BLOCK_N"] >= 64] or kept


def _prune_gemm(configs, named_args, **kwargs):
    """The accumulating product (db += s G^T a) reads A transposed and C back: its 128 x 128 tile
    spills on sm_80 (compile_check), so it keeps the smaller tiles."""
    kept = _prune_wide(configs, named_args, **kwargs)
    if kwargs.get("ACCUMULATE"):
        kept = [c for c in kept if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 64 * 128] or kept
    return _drop_arch_spills("gemm", kept, named_args, kwargs)


def _prune_fwd(configs, named_args, **kwargs):
    """The one-sweep symmetric forward (COL_STATS) also folds every tile into column statistics,
    and a separate teacher (TEACHER_SEPARATE) adds a second score tile: their 64-wide tiles spill (sm_80,
    sm_90, sm_100; 8 to 336 bytes per thread), so they keep the 32-wide ones. The one sweep runs
    its 128 x 32 tile with 4 stages: with 3 it spills on sm_100 (8 to 56 bytes per thread, for a
    teacher with statistics of its own) and the other sweeps keep 3. The 64-row tile on 8 warps
    serves sm_100's one sweep only (_ARCH_SPILLS drops the others there)."""
    kept = _prune_wide(configs, named_args, **kwargs)
    if kwargs.get("COL_STATS") or kwargs.get("TEACHER") == TEACHER_SEPARATE:
        kept = [c for c in kept if c.kwargs["BLOCK_N"] <= 32] or [c for c in configs if c.kwargs["BLOCK_N"] <= 32]
    stages = 3 if kwargs.get("COL_STATS") else 4   # the 128 x 32 config this launch does not run
    kept = [c for c in kept if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_stages) != (128, 32, stages)]
    if not (kwargs.get("COL_STATS") and _arch(named_args["a_ptr"]) == 100):  # 64 rows on 8 warps: sm_100's one sweep
        kept = [c for c in kept if (c.kwargs["BLOCK_M"], c.num_warps) != (64, 8)]
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
def _col_fold(m_ptr, l_ptr, w_ptr, cols, col_mask, block_in_group, X, S, row_mask, WITH_W: tl.constexpr):
    """Fold one tile of logits X into a row group's column statistics (read-modify-write).

    Column j's running max m' and sum l' = sum_i exp(X_ij - m') over the group's rows i, and with
    WITH_W the cross term w' = sum_i exp(X_ij - m') S_ij, as in the row sweep with rows and
    columns swapped. The group's first row block (block_in_group == 0) starts from the empty
    state instead of reading the buffer, so a re-run (e.g. by the autotuner) never folds a tile
    in twice.
    """
    load_mask = col_mask & (block_in_group != 0)
    m = tl.load(m_ptr + cols, mask=load_mask, other=-1.0e30)
    l = tl.load(l_ptr + cols, mask=load_mask, other=0.0)
    X_max = tl.where(row_mask[:, None], X, float("-inf"))
    m_new = tl.maximum(m, tl.max(X_max, axis=0))
    p = tl.exp(X_max - m_new[None, :])
    corr = tl.exp(m - m_new)
    tl.store(m_ptr + cols, m_new, mask=col_mask)
    tl.store(l_ptr + cols, l * corr + tl.sum(p, axis=0), mask=col_mask)
    if WITH_W:
        w = tl.load(w_ptr + cols, mask=load_mask, other=0.0)
        tl.store(w_ptr + cols, w * corr + tl.sum(p * S, axis=0), mask=col_mask)


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
    COL_STATS (the symmetric loss, one sweep for both directions): each tile is also folded
    into per-(group, column) partials in colpart (5, n_groups, n_b): (m', l', -, -, w') for a
    self teacher at the student's scale; (m', l', mt', lt', -) otherwise, the student's tile
    folded before the teacher's is formed, and the rows keep no w either (the cross terms
    E_R[S] come from the gradient tiles).
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
            if TEACHER == TEACHER_SELF:
                # T = S: the teacher weights are P's, w = sum exp(S - m) S.
                w = w * corr + tl.sum(p * S, axis=1)
            elif not COL_STATS:
                # the teacher's statistics and the cross term w = sum exp(T - mt) S in this tile
                if TEACHER == TEACHER_SELF_SCALED:
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
                # the student's column statistics (and w' for a self teacher at the same scale)
                _col_fold(colpart, colpart + col_plane, colpart + 4 * col_plane, cols, col_mask,
                          rb - rb_start, S, S, row_mask, TEACHER == TEACHER_SELF)
                if TEACHER != TEACHER_SELF:
                    # then the teacher's, rows and columns, once S is no longer needed: no cross
                    # term here (the gradient-tile kernel forms it), so S and T are never live
                    # together
                    if TEACHER == TEACHER_SELF_SCALED:
                        T = st * d
                    else:
                        T = st * _dot_tile(ta_ptr, tb_ptr, row0, c0, n_a, n_b, DT, stride_ta, stride_tb,
                                           BLOCK_M, BLOCK_N, BLOCK_KT, DOT_FP32, PRECISION)
                    T_max = tl.where(col_mask[None, :], T, float("-inf"))
                    mt_new = tl.maximum(mt, tl.max(T_max, axis=1))
                    lt = lt * tl.exp(mt - mt_new) + tl.sum(tl.exp(T_max - mt_new[:, None]), axis=1)
                    mt = mt_new
                    _col_fold(colpart + 2 * col_plane, colpart + 3 * col_plane, colpart, cols, col_mask,
                              rb - rb_start, T, T, row_mask, False)
        if TEACHER == TEACHER_SELF:
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
def _direction_grad(P, R, g, alpha, onehot, TEACHER: tl.constexpr):
    """g * (P - Q) for one direction, g and alpha broadcast to the tile.

    P = exp(S - lse), R = exp(T - lse~), Q = (1 - alpha) onehot + alpha R;
    with a self teacher at the same scale R = P, so g (1 - alpha) (P - onehot).
    """
    hot = onehot.to(tl.float32)
    if TEACHER == TEACHER_SELF:
        G = (1.0 - alpha) * (P - hot)
    else:
        G = P - (1.0 - alpha) * hot - alpha * R
    return g * G


@triton.autotune(configs=GRAD_CONFIGS, key=["TUNE_N", "D", "DT", "TEACHER", "A_DIR", "B_DIR", "CROSS"],
                 prune_configs_by={"early_config_prune": _prune_grad})
@triton.jit
def _psd_grad_kernel(a_ptr, b_ptr, ta_ptr, tb_ptr, scale_ptr, tscale_ptr,
                     lse_a_ptr, lset_a_ptr, g_a_ptr, alpha_a_ptr, labels_a_ptr,
                     lse_b_ptr, lset_b_ptr, g_b_ptr, alpha_b_ptr, labels_b_ptr,
                     grad_ptr, ds_ptr, wrow_ptr, wcol_ptr, row_start, n_rows, n_b, stride_g, D, DT,
                     stride_a, stride_b, stride_ta, stride_tb, TUNE_N,
                     A_DIR: tl.constexpr, B_DIR: tl.constexpr, TEACHER: tl.constexpr, CROSS: tl.constexpr,
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
    CROSS (a teacher with statistics of its own, whose forward sweep left the cross terms out):
    also the tile's shares of E_R[S_i] = sum_j R_ij S_ij to wrow (n_col_tiles, n_rows) and of
    E_R'[S_.j] = sum_i R'_ji S_ij to wcol (n_row_tiles, n_b), from the R the tile forms anyway.
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
    if TEACHER == TEACHER_SELF_SCALED:
        T = st * d
    elif TEACHER == TEACHER_SEPARATE:
        T = st * _dot_tile(ta_ptr, tb_ptr, row_start + pid_m * BLOCK_M, col0, row_start + n_rows, n_b, DT,
                           stride_ta, stride_tb, BLOCK_M, BLOCK_N, BLOCK_KT, DOT_FP32, PRECISION)
    else:
        T = S
    # Masked rows and columns read zeros, so S = 0 there and every R * S below vanishes.
    G = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if A_DIR:
        lse_a = tl.load(lse_a_ptr + rows, mask=row_mask, other=0.0)[:, None]
        g_a = tl.load(g_a_ptr + rows, mask=row_mask, other=0.0)[:, None]
        alpha_a = tl.load(alpha_a_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)[:, None]
        if LABELS_DIAG:
            lab_a = rows
        else:
            lab_a = tl.load(labels_a_ptr + rows, mask=row_mask, other=-1)
        P_a = tl.exp(S - lse_a)
        if TEACHER == TEACHER_SELF:
            R_a = P_a
        else:
            R_a = tl.exp(T - tl.load(lset_a_ptr + rows, mask=row_mask, other=0.0)[:, None])
            if CROSS:
                tl.store(wrow_ptr + tl.cast(pid_n, tl.int64) * n_rows + local, tl.sum(R_a * S, axis=1),
                         mask=row_mask)
        G += _direction_grad(P_a, R_a, g_a, alpha_a, cols[None, :] == lab_a[:, None], TEACHER)
    if B_DIR:
        lse_b = tl.load(lse_b_ptr + cols, mask=col_mask, other=0.0)[None, :]
        g_b = tl.load(g_b_ptr + cols, mask=col_mask, other=0.0)[None, :]
        alpha_b = tl.load(alpha_b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
        if LABELS_DIAG:
            lab_b = cols
        else:
            lab_b = tl.load(labels_b_ptr + cols, mask=col_mask, other=-1)
        P_b = tl.exp(S - lse_b)
        if TEACHER == TEACHER_SELF:
            R_b = P_b
        else:
            R_b = tl.exp(T - tl.load(lset_b_ptr + cols, mask=col_mask, other=0.0)[None, :])
            if CROSS:
                tl.store(wcol_ptr + tl.cast(pid_m, tl.int64) * n_b + cols, tl.sum(R_b * S, axis=0),
                         mask=col_mask)
        G += _direction_grad(P_b, R_b, g_b, alpha_b, rows[:, None] == lab_b[None, :], TEACHER)
    tile_mask = row_mask[:, None] & col_mask[None, :]
    G = tl.where(tile_mask, G, 0.0)
    tl.store(ds_ptr + tl.cast(pid_n, tl.int64) * n_rows + local, tl.sum(G * d, axis=1), mask=row_mask)
    out = grad_ptr + tl.cast(pid_m * BLOCK_M, tl.int64) * stride_g + col0 \
        + (tl.arange(0, BLOCK_M)[:, None] * stride_g + tl.arange(0, BLOCK_N)[None, :])
    tl.store(out, G.to(grad_ptr.dtype.element_ty), mask=tile_mask)


@triton.autotune(configs=GEMM_CONFIGS, key=["M", "N", "K", "ACCUMULATE"],
                 prune_configs_by={"early_config_prune": _prune_gemm}, restore_value=["c_ptr"])
@triton.jit
def _gemm_kernel(a_ptr, b_ptr, c_ptr, alpha_ptr, M, N, K, k_split, stride_am, stride_ak, stride_bk, stride_bn,
                 stride_cm, stride_cs, ACCUMULATE: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """C = [C +] alpha * A @ B, A (M x K) and B (K x N) of one dtype with any strides, C fp32 (M x N,
    row stride stride_cm), fp32 accumulation. Each program owns one BLOCK_M x BLOCK_N tile of C,
    so accumulation needs no atomics. Per K step: BLOCK_M x BLOCK_K and BLOCK_K x BLOCK_N operand
    slices, 2 BLOCK_M BLOCK_N BLOCK_K FLOPs.
    Program (i, j, h) sums k in [h k_split, (h + 1) k_split) only and writes its tile to
    C + h stride_cs: with one split (k_split >= K) that is C itself, with several the host adds
    the partial products (deterministic, no atomics).
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    rm = tl.arange(0, BLOCK_M)
    rn = tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    row0 = pid_m * BLOCK_M
    col0 = pid_n * BLOCK_N
    k_start = pid_k * k_split
    k_end = tl.minimum(K, k_start + k_split)
    a_ptrs = a_ptr + (tl.cast(row0, tl.int64) * stride_am + tl.cast(k_start, tl.int64) * stride_ak) \
        + (rm[:, None] * stride_am + rk[None, :] * stride_ak)
    b_ptrs = b_ptr + (tl.cast(col0, tl.int64) * stride_bn + tl.cast(k_start, tl.int64) * stride_bk) \
        + (rk[:, None] * stride_bk + rn[None, :] * stride_bn)
    a_rows = (row0 + rm) < M
    b_cols = (col0 + rn) < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        k_mask = (k0 + rk) < k_end
        a = tl.load(a_ptrs, mask=a_rows[:, None] & k_mask[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_mask[:, None] & b_cols[None, :], other=0.0)
        if DOT_FP32:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    acc = acc * tl.load(alpha_ptr).to(tl.float32)
    c_ptrs = c_ptr + (tl.cast(pid_k, tl.int64) * stride_cs + tl.cast(row0, tl.int64) * stride_cm + col0) \
        + (rm[:, None] * stride_cm + rn[None, :])
    c_mask = a_rows[:, None] & b_cols[None, :]
    if ACCUMULATE:
        acc += tl.load(c_ptrs, mask=c_mask, other=0.0)
    tl.store(c_ptrs, acc, mask=c_mask)
