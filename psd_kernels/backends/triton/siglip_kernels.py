"""Triton kernel of the fused sigmoid (SigLIP) loss with PSD's soft targets (docs/siglip_loss.md).

One kernel, _siglip_tile_kernel, serves the forward, the gradient tiles and both at once. Rows
`a` (the images, n_a x D) against columns `b` (the texts, n_b x D), with params = (s, b, s~, b~):

    d_ij = <a_i, b_j>,   l_ij = s d_ij + b
    t_ij = l_ij  |  s~ d_ij + b~  |  s~ <ta_i, tb_j> + b~     TEACHER: the cases of kernels.py
    a_ij = (alpha_a_i + alpha_b_j) / 2,   z_ij = [j = labels_i]
    q_ij = (1 - a_ij) z_ij + a_ij sigmoid(t_ij)
    e_ij = (1 - q) softplus(l) + q softplus(-l),   G_ij = w_i (sigmoid(l_ij) - q_ij)

A sigmoid has no row normaliser, so a tile's loss and gradient are final as soon as its dot
products exist: no statistics are carried between tiles or between launches.

Program (i, h) takes row block i of the launch's rows [row_start, row_start + n_rows) and sweeps
the column tiles of split h (of n_split). Per row it accumulates, over the split's tiles,
LOSS: sum_j e_ij, and with WRITE_G: sum_j G_ij (l_ij - b) = s sum_j G_ij d_ij (the scale's gradient
times s: d need not stay live to the end of the tile) and sum_j G_ij (the bias's); it writes them
to part (3, n_split, n_rows), and with WRITE_G each tile G (input dtype) to rows i of the G chunk g
(n_rows x n_b, row stride stride_g). The host multiplies G into
dx = s G b and dy = s G^T a with kernels.py's _gemm_kernel (docs/siglip_loss.md, "Gradients").

Per tile: a BLOCK_M x D and a BLOCK_N x D operand slice (L2), 2 BLOCK_M BLOCK_N D FLOPs on the
tensor cores (+ 2 BLOCK_M BLOCK_N D' for a separate teacher: its product is formed once per tile,
never recomputed in the same launch), and an epilogue of one exp, one log and one division per
pair (+ one exp and one division for a teacher other than the student at its own scale and bias).
Registers: the dot's accumulator tile and the epilogue's pair values (see SIGLIP_CONFIGS); no
D-wide accumulator. Offsets inside a tile are 32-bit, per-program bases 64-bit.

Stable forms (no cut-off): with E = e^{-|l|} and u = 1 + E (rounded),
    sigmoid(l) = (l >= 0 ? 1 : E) / u
    log1p(E)   = log(u) + (E - (u - 1)) / u      (u - 1 is exact; the second term restores what
                                                   rounding 1 + E lost, so a negative at l = -10
                                                   keeps full fp32 precision)
    e_ij       = softplus(l) - q l,  softplus(l) = max(l, 0) + log1p(E)
                 ((1 - q) softplus(l) + q softplus(-l), exact at q = 0 and q = 1)

Host side: psd_kernels/backends/triton/siglip_launcher.py.
Tested by: .venv/bin/python -m pytest tests/test_triton_siglip.py (under TRITON_INTERPRET=1).
"""
from __future__ import annotations

import triton
import triton.language as tl

from psd_kernels.backends.triton.kernels import (INTERPRET, TEACHER_SELF, TEACHER_SELF_SCALED, TEACHER_SEPARATE,
                                                 _configs, _dot_tile, _prune_wide)

# (BLOCK_M, BLOCK_N, warps, stages). The epilogue holds several fp32 values per pair (l, e^-|l|,
# 1 / (1 + e^-|l|), softplus(l), q, the teacher's sigmoid, G) on top of the dot's accumulator, so
# the tiles are 32 columns wide: with 64-wide tiles (16 or 32 pairs per thread) ptxas reaches 255
# registers and spills 40 to 272 bytes per thread on sm_90 (bf16, D = 512), and 64 x 32 on 4 warps
# spills 8 bytes on sm_80 and sm_90 in some variants. 128 x 32 runs 8 warps (one warpgroup per 64
# rows, what wgmma needs); 64 x 32 runs 8 warps too (8 pairs per thread), with ptxas's registers
# capped at 224 as kernels.py's sm_100 sweep does: left to itself ptxas holds it to 128 on sm_80
# and spills 8 bytes. Compiled without a GPU with compile_check.compile_launch (Triton 3.8.0; every
# teacher, LOSS / WRITE_G variant and kept config; bf16 and fp16 at D 500 and 768, B 4097; bf16 at
# D 64 and 1536, B 1000; fp16 at D 1024, B 32768 on sm_90 and sm_100): spill-free on sm_80, sm_90
# and sm_100 after _prune_siglip, every dot on the tensor cores, every main-loop load asynchronous;
# 128 x 32 sits at up to 255 registers (no headroom), 64 x 32 at up to 211.
SIGLIP_CONFIGS = _configs(((128, 32, 8, 3),))
SIGLIP_CONFIGS += [] if INTERPRET else _configs(((64, 32, 8, 3),), maxnreg=224)


def _prune_siglip(configs, named_args, **kwargs):
    """The one pass (LOSS and WRITE_G) with a separate teacher keeps 64 x 32: its 128 x 32 tile spills
    16 to 40 bytes per thread on sm_90 and sm_100. fp32 inputs keep tiles of at most 64 x 64
    (kernels._prune_wide: all of these)."""
    kept = _prune_wide(configs, named_args, **kwargs)
    if kwargs.get("LOSS") and kwargs.get("WRITE_G") and kwargs.get("TEACHER") == TEACHER_SEPARATE:
        kept = [c for c in kept if c.kwargs["BLOCK_M"] <= 64] or kept
    return kept


@triton.jit
def _sigmoid(v):
    """sigmoid(v) with one exp and one division, exact in range for any v."""
    ev = tl.exp(-tl.abs(v))
    return tl.where(v >= 0, 1.0, ev) / (1.0 + ev)


@triton.autotune(configs=SIGLIP_CONFIGS, key=["TUNE_N", "D", "DT", "TEACHER", "LOSS", "WRITE_G"],
                 prune_configs_by={"early_config_prune": _prune_siglip})
@triton.jit
def _siglip_tile_kernel(a_ptr, b_ptr, ta_ptr, tb_ptr, labels_ptr, alpha_a_ptr, alpha_b_ptr, w_ptr, params_ptr,
                        g_ptr, part_ptr, row_start, n_rows, n_b, D, DT, stride_a, stride_b, stride_ta, stride_tb,
                        stride_g, n_split, TUNE_N,
                        TEACHER: tl.constexpr, LOSS: tl.constexpr, WRITE_G: tl.constexpr,
                        BLOCK_K: tl.constexpr, BLOCK_KT: tl.constexpr,
                        DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Row block pid(0) of rows [row_start, row_start + n_rows) against column split pid(1) (module
    docstring). Reads per tile: the operand slices, BLOCK_N column alphas; writes per tile (WRITE_G):
    the G tile once; per program: 3 floats per row to part (zeros for an empty split)."""
    pid_m = tl.program_id(0)
    pid_h = tl.program_id(1)
    s = tl.load(params_ptr)
    bias = tl.load(params_ptr + 1)
    st = tl.load(params_ptr + 2)
    bt = tl.load(params_ptr + 3)

    local = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = row_start + local
    row_mask = local < n_rows
    row0 = row_start + pid_m * BLOCK_M
    lab = tl.load(labels_ptr + rows, mask=row_mask, other=-1)
    alpha_r = tl.load(alpha_a_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
    if WRITE_G:
        w = tl.load(w_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)

    tiles_per_split = tl.cdiv(tl.cdiv(n_b, BLOCK_N), n_split)
    start = pid_h * tiles_per_split * BLOCK_N
    end = tl.minimum(start + tiles_per_split * BLOCK_N, n_b)
    acc_e = tl.zeros((BLOCK_M,), tl.float32)  # per row: sum_j e_ij, sum_j G_ij d_ij, sum_j G_ij
    acc_ds = acc_e
    acc_db = acc_e
    for c0 in range(start, end, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        col_mask = cols < n_b
        tile_mask = row_mask[:, None] & col_mask[None, :]
        # Ordered for registers: the separate teacher's product first, reduced at once to sigmoid(t),
        # so that only that tile is live through the student's K loop; then every pair value dies
        # as soon as (softplus(l), sigmoid(l)) exist.
        if TEACHER == TEACHER_SEPARATE:
            pt = _sigmoid(st * _dot_tile(ta_ptr, tb_ptr, row0, c0, row_start + n_rows, n_b, DT, stride_ta,
                                         stride_tb, BLOCK_M, BLOCK_N, BLOCK_KT, DOT_FP32, PRECISION) + bt)
        d = _dot_tile(a_ptr, b_ptr, row0, c0, row_start + n_rows, n_b, D, stride_a, stride_b,
                      BLOCK_M, BLOCK_N, BLOCK_K, DOT_FP32, PRECISION)
        logit = s * d + bias
        ev = tl.exp(-tl.abs(logit))
        u = 1.0 + ev
        r = 1.0 / u
        p = tl.where(logit >= 0, r, ev * r)                                   # sigmoid(l)
        if LOSS:
            softplus = tl.maximum(logit, 0.0) + tl.log(u) + (ev - (u - 1.0)) * r   # max(l, 0) + log1p(E)
        if TEACHER == TEACHER_SELF:
            pt = p                                   # t = l: the student's own probability
        elif TEACHER == TEACHER_SELF_SCALED:
            pt = _sigmoid(st * d + bt)               # the same dot products
        alpha_c = tl.load(alpha_b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
        a = (alpha_r[:, None] + alpha_c[None, :]) * 0.5
        hot = cols[None, :] == lab[:, None]
        q = tl.where(hot, 1.0 - a, 0.0) + a * pt
        if LOSS:
            # (1 - q) softplus(l) + q softplus(-l) = softplus(l) - q l: exact at q = 0 and at q = 1
            acc_e += tl.sum(tl.where(tile_mask, softplus - q * logit, 0.0), axis=1)
        if WRITE_G:
            if TEACHER == TEACHER_SELF:
                G = (1.0 - a) * (p - hot.to(tl.float32))   # p - q without the cancellation of p - a p
            else:
                G = p - q
            G = tl.where(tile_mask, w[:, None] * G, 0.0)
            acc_ds += tl.sum(G * (logit - bias), axis=1)   # s sum G d: d need not stay live
            acc_db += tl.sum(G, axis=1)
            out = g_ptr + tl.cast(pid_m * BLOCK_M, tl.int64) * stride_g + c0 \
                + (tl.arange(0, BLOCK_M)[:, None] * stride_g + tl.arange(0, BLOCK_N)[None, :])
            tl.store(out, G.to(g_ptr.dtype.element_ty), mask=tile_mask)
    plane = tl.cast(n_split, tl.int64) * n_rows
    dst = part_ptr + tl.cast(pid_h, tl.int64) * n_rows + local
    tl.store(dst, acc_e, mask=row_mask)
    tl.store(dst + plane, acc_ds, mask=row_mask)
    tl.store(dst + 2 * plane, acc_db, mask=row_mask)
