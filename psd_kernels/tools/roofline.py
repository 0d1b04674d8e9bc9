"""Roofline of the symmetric PSD loss (forward + backward) on Hopper: FLOPs, HBM bytes, predicted time.

    .venv/bin/python -m psd_kernels.tools.roofline            # a table
    .venv/bin/python -m psd_kernels.tools.roofline --json     # one JSON object per row

For each case (B = 32768, D = 512 with a self_scaled teacher (the student at half its scale) and
with a separate teacher of width D' = D; B = 1,048,576, D = 512, self_scaled), each GPU backend and each GPU
(H100 SXM, H200): the useful FLOPs, the FLOPs the backend's algorithm executes, the
HBM bytes it moves, and the predicted time = max(compute time, memory time), with
the bound that sets it. bf16 inputs (the GPU benchmark's dtype).

FLOPs. Useful work, as Case.flops counts it (the benchmarks measure the same Case): 6 B^2 D + 2 B^2 D'
(forward: 2 B^2 D for the student dot products both directions share, + 2 B^2 D' for
a separate teacher's; backward: the two gradient products, 4 B^2 D). A self teacher
(the student's own detached embeddings, at its scale or another) adds no product:
its logits are a multiple of the student's (D' = 0 here). Executed: what each
backend's algorithm runs, counting matrix products only (the element-wise
epilogues, exp included, are left out):

    psd-triton   mean/sum (the table; both cases' teachers have statistics of their own):
                 one forward sweep with column partials, 2 B^2 (D + D'); the gradient tiles,
                 formed in the forward, recompute the scores once, 2 B^2 (D + D'), and also
                 give the cross terms E_R[S]; then the products dx = s G y and dy = s G^T x,
                 4 B^2 D: 8 B^2 D + 4 B^2 D' in all, on bf16 tensor cores.
                 reduction="none" (printed below the table): the forward has no per-row
                 weights yet, so a teacher with statistics of its own takes two row sweeps
                 and the backward recomputes: 10 B^2 D + 6 B^2 D'. A self teacher at the
                 student's scale always takes one sweep: 8 B^2 D.
    psd-cpp      (csrc/psd_loss.cpp, CUDA) the forward_backward op: sweep 1 computes
                 the scores of every block of R = 2^26 / B rows (one cuBLAS GEMM, one
                 more for a separate teacher) for the row and column statistics;
                 sweep 2 recomputes them for every block but the last (still in the
                 buffer), forms G and runs the dx and dy GEMMs:
                 2 B^2 (D + D') + 2 (B - r_last) B (D + D') + 4 B^2 D, in fp32 (the
                 op upcasts fp16/bf16 inputs to fp32 copies): fp32 CUDA cores, or
                 TF32 tensor cores when torch.backends.cuda.matmul.allow_tf32 is set
                 (row "psd-cpp [tf32]").

HBM bytes: a lower bound, each kernel or GEMM launch reading its operands and writing
its results once (tiles re-read within a launch are taken to hit L2), per-row
vectors of O(B) floats left out except where a launch sweeps them per block.

    psd-triton   forward, per sweep: x, y (+ the teacher's); the per-(row, split)
                 partials (6 floats) written and merged. Backward, per chunk of rows
                 (1 GiB of bf16 G): the chunk's rows and all columns read, G written
                 once and read by both products, y re-read and dy (fp32) read and
                 written per chunk; dx, dy cast to bf16. The kernels re-read column
                 tiles per row block; that the programs sharing columns keep them in
                 L2 is assumed here; the printout also gives the re-read bytes and
                 their time if they all came from HBM (triton_tile_rereads).
    psd-cpp      fp32 copies of the inputs; per block, each GEMM reads its block
                 rows and all of y (x for dy) and writes (or reads and writes, dy) its
                 output; the R x B fp32 score blocks round-trip HBM: sweep 1 writes
                 them and the row- and column-statistics kernels read them, sweep 2
                 rewrites them, form_grad reads them and writes G over them, the dx
                 and dy GEMMs read G (8 passes over B^2 fp32 for a self_scaled teacher, 13 with
                 a separate one); the column statistics (6 floats per column) are
                 read and written by every block of sweep 1, the column coefficients
                 (4) read by every block of sweep 2 (the self_scaled teacher, the student at
                 half its scale as in the benchmark, keeps teacher statistics too); the gradients are cast back.

Waves (psd-triton): each launch runs its programs in ceil(P / slots) waves on slots = SMs x
CTAs per SM, the CTAs per SM following from the registers and shared memory of the config the
launcher runs first (python -m psd_kernels.tools.compile_check --arch 90 --dtype bfloat16), by
ctas_per_sm, the occupancy formula the compile check applies too; its compute time is
divided by the grid's efficiency (psd_kernels.backends.triton.grid: work / (slots x waves x longest program)).
psd-cpp's cuBLAS GEMMs are taken at the peak rate.

Peak rates and bandwidths are NVIDIA's datasheet figures (dense, no sparsity); what
a GPU reaches is lower (benchmarks/device_check.py measures bf16 torch.mm in the same
run as the losses: benchmarks/device_stages/peak.py).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from typing import Callable

from psd_kernels.backends.triton.grid import balanced_grid, group_split_efficiency, wave_efficiency
from psd_kernels.vocabulary import DTYPES, NO_TEACHER, TEACHER_CASES

TEACHERS = (NO_TEACHER,) + TEACHER_CASES   # what a Case's teacher may be

BF16_BYTES = 2
FP32_BYTES = 4


@dataclass(frozen=True)
class GPU:
    name: str
    bf16_tensor: float   # dense bf16 tensor-core rate, FLOP/s
    tf32_tensor: float   # dense TF32 tensor-core rate, FLOP/s
    fp32: float          # fp32 CUDA-core (non-tensor) rate, FLOP/s
    hbm: float           # HBM bandwidth, bytes/s
    sms: int             # streaming multiprocessors (the Triton backend sizes its grid by them)


# NVIDIA H100 Tensor Core GPU datasheet, H100 SXM column: BF16 Tensor Core 1,979 TFLOPS
# and TF32 Tensor Core 989 TFLOPS "with sparsity" (dense: half, 989.4 and 494.7, the H100
# whitepaper's dense figures), FP32 67 TFLOPS (66.9 in the whitepaper), GPU memory
# bandwidth 3.35 TB/s; 132 SMs (H100 whitepaper, SXM5).
H100_SXM = GPU("H100 SXM", bf16_tensor=989.4e12, tf32_tensor=494.7e12, fp32=66.9e12, hbm=3.35e12, sms=132)
# NVIDIA H200 Tensor Core GPU datasheet, H200 SXM column: the same compute figures as the
# H100 SXM (BF16 1,979 / TF32 989 TFLOPS with sparsity, FP32 67 TFLOPS; same GH100 chip,
# 132 SMs), GPU memory bandwidth 4.8 TB/s (HBM3e).
H200 = GPU("H200", bf16_tensor=989.4e12, tf32_tensor=494.7e12, fp32=66.9e12, hbm=4.8e12, sms=132)
GPUS = (H100_SXM, H200)


FLOP_FORMULA = ("useful FLOPs, recomputation not counted: forward = 2*B^2*D (one student product "
                "shared by both directions) + 2*B^2*D' (separate teacher only); backward = 4*B^2*D "
                "(dL/dimage and dL/dtext); full = 6*B^2*D + 2*B^2*D'")


@dataclass(frozen=True)
class Case:
    """The symmetric loss on B x D embeddings with a teacher: the case this roofline predicts and
    benchmarks/ measures (benchmarks/providers.py, benchmarks/device_check.py)."""

    batch: int
    dim: int
    teacher: str = NO_TEACHER     # NO_TEACHER (alpha = 0) or a teacher case (psd_kernels.vocabulary)
    dtype: str = "float32"        # a psd_kernels.vocabulary.DTYPES name
    teacher_dim: int = 0          # D' of a separate teacher; 0 means D

    def __post_init__(self):
        if self.teacher not in TEACHERS:
            raise ValueError(f"teacher must be one of {TEACHERS}, got {self.teacher!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        if self.batch < 1 or self.dim < 1:
            raise ValueError(f"batch and dim must be >= 1, got {self.batch} and {self.dim}")

    @property
    def d_teacher(self) -> int:
        """D' of the products a teacher adds: 0 for no teacher and for a self teacher (its logits are
        a multiple of the student's)."""
        return (self.teacher_dim or self.dim) if self.teacher == "separate" else 0

    @property
    def name(self) -> str:
        teacher = "no teacher" if self.teacher == NO_TEACHER else f"{self.teacher} teacher"
        return f"B={self.batch} D={self.dim} {teacher}" + (f" D'={self.d_teacher}" if self.d_teacher else "")

    @property
    def alpha(self) -> float:
        """The benchmarks' alpha: 0 without a teacher (plain CLIP), else 0.5 on every row."""
        return 0.0 if self.teacher == NO_TEACHER else 0.5

    def config(self) -> dict:
        """The case's identity without the batch size (the x axis of a benchmark row)."""
        out = asdict(self)
        del out["batch"]
        out["teacher_dim"] = self.d_teacher
        out["alpha"] = self.alpha
        return out

    def flops(self, mode: str = "full") -> float:
        """Useful FLOPs (FLOP_FORMULA): forward 2 B^2 (D + D'), backward's two gradient products 4 B^2 D."""
        b2 = float(self.batch) ** 2
        forward = 2 * b2 * self.dim + 2 * b2 * self.d_teacher
        backward = 4 * b2 * self.dim
        return {"forward": forward, "backward": backward, "full": forward + backward}[mode]


CASES = (Case(32768, 512, "self_scaled", "bfloat16"),
         Case(32768, 512, "separate", "bfloat16", 512),
         Case(1 << 20, 512, "self_scaled", "bfloat16"))


def triton_forward_sweeps(case: Case, reduction: str = "mean") -> int:
    """Row sweeps of the symmetric forward: one with column partials for mean/sum (the gradients
    are formed in the forward, the cross terms in the gradient tiles); two (rows, then columns) for
    reduction="none" when the teacher has statistics of its own, as the benchmark's self_scaled teacher at
    half the scale and a separate teacher do (backends/triton/launcher.py)."""
    return 1 if reduction != "none" else 2


def triton_flops(case: Case, reduction: str = "mean") -> float:
    """Forward: 2 B^2 (D + D') per sweep; gradient tiles: the scores recomputed once for both sides,
    2 B^2 (D + D'); the two products dx = s G y and dy = s G^T x, 4 B^2 D."""
    b2 = float(case.batch) ** 2
    k = case.dim + case.d_teacher
    return triton_forward_sweeps(case, reduction) * 2 * b2 * k + 2 * b2 * k + 4 * b2 * case.dim


# The config each Triton kernel runs first (the autotuner may pick another) and its resources on
# sm_90 at B = 32768, D = D' = 512, bf16, from the whole-matrix python -m psd_kernels.tools.compile_check
# (Triton 3.8.0; the larger of the two teacher cases' registers, the self teacher at another scale
# and the separate teacher): (BLOCK_M, BLOCK_N, warps, registers per thread, shared memory bytes).
TRITON_KERNELS = {
    "fwd_sym": (128, 32, 8, 222, 82944),    # one sweep with column partials (4 stages); a separate
                                            # teacher runs 64 x 32 on 4 warps there (255, 37888:
                                            # 2 CTAs per SM, the same 97% grid)
    "fwd_sym2": (128, 64, 8, 219, 50176),   # a row sweep (reduction="none": two of them); the
                                            # separate teacher runs 128 x 32 there (226, 62464)
    "grad": (128, 64, 8, 255, 74752),       # gradient tiles with the cross terms: 255 / 254
    "gemm": (128, 128, 8, 112, 99328),      # dx chunk (112), and the first chunk's dy (104)
    "gemm_acc": (64, 128, 4, 160, 99328),   # dy += s G^T x_chunk
    # the sigmoid loss's tile kernel, loss and G in one sweep (LOSS=1, WRITE_G=1), the larger of the
    # self_scaled and separate teachers' registers: a separate teacher runs 64 x 32 on 8 warps there
    "siglip_tile": (128, 32, 8, 255, 62464),
}
# Per SM, by arch (sm_80: A100, sm_90: H100 / H200, sm_100: B200): shared memory (1 KiB of it
# reserved per CTA), registers, warps and CTAs it holds.
SMEM_PER_SM = {80: 164 * 1024, 90: 228 * 1024, 100: 228 * 1024}
SMEM_RESERVED = 1024
REGS_PER_SM, MAX_WARPS_PER_SM, MAX_CTAS_PER_SM = 65536, 64, 32


def ctas_per_sm(arch: int, regs: int, smem: int, num_warps: int) -> int:
    """CTAs one SM of sm_<arch> holds: registers (allocated per warp in units of 256), shared memory
    (plus the 1 KiB reserved per block), warps and the CTA limit. The one occupancy formula: the
    compile check applies it to what ptxas reports, the roofline to TRITON_KERNELS."""
    regs_per_warp = math.ceil(max(regs, 1) * 32 / 256) * 256
    by_regs = (REGS_PER_SM // regs_per_warp) // num_warps
    by_smem = SMEM_PER_SM[arch] // (smem + SMEM_RESERVED)
    return min(by_regs, by_smem, MAX_WARPS_PER_SM // num_warps, MAX_CTAS_PER_SM)


def kernel_ctas(kernel: str) -> int:
    """CTAs per SM of a TRITON_KERNELS entry on sm_90."""
    _, _, warps, regs, smem = TRITON_KERNELS[kernel]
    return ctas_per_sm(90, regs, smem, warps)


@dataclass(frozen=True)
class PredictedLaunches:
    """`count` launches of one kernel as the roofline models them (not a recorded launch:
    psd_kernels.tools.launches.Launch is what triton.compile receives)."""

    kernel: str        # a key of TRITON_KERNELS
    count: int         # how many such launches (one per G chunk, ...)
    flops: float       # per launch
    programs: int      # per launch
    efficiency: float  # of the grid on the GPU's slots (psd_kernels.backends.triton.grid)

    @property
    def ctas(self) -> int:
        return kernel_ctas(self.kernel)


def triton_launches(case: Case, gpu: GPU, reduction: str = "mean") -> list:
    """Every launch of a forward + backward at B = case.batch with its grid (backends/triton/launcher.py)."""
    b, d, k = case.batch, case.dim, case.dim + case.d_teacher
    cd = math.ceil

    def launch(kernel, count, flops, programs, efficiency=None):
        slots = gpu.sms * kernel_ctas(kernel)
        eff = wave_efficiency(programs, slots) if efficiency is None else efficiency(slots)
        return PredictedLaunches(kernel, count, flops, programs, eff)

    if triton_forward_sweeps(case, reduction) == 1:
        groups, splits = balanced_grid(cd(b / 128), cd(b / 32), gpu.sms)
        out = [launch("fwd_sym", 1, 2.0 * b * b * k, groups * splits,
                      lambda slots: group_split_efficiency(cd(b / 128), cd(b / 32), groups, splits, slots))]
    else:
        out = [launch("fwd_sym2", 2, 2.0 * b * b * k, cd(b / 128) * _triton_splits(b, gpu.sms))]
    rows = triton_chunk_rows(b)
    full, last = divmod(b, rows)
    for r, count in ((rows, full), (last, 1 if last else 0)):
        if count:
            out.append(launch("grad", count, 2.0 * r * b * k, cd(r / 128) * cd(b / 64)))
            splits = triton_k_splits(r, d, b, gpu.sms)[0]
            out.append(launch("gemm", count, 2.0 * r * b * d, cd(r / 128) * cd(d / 128) * splits))
    # dy: the first chunk writes (128 x 128 tiles), the others accumulate (64 x 128)
    first = min(rows, b)
    out.append(launch("gemm", 1, 2.0 * first * b * d, cd(b / 128) * cd(d / 128)))
    for r, count in ((rows, full - 1), (last, 1 if last and full else 0)):
        if count > 0:
            out.append(launch("gemm_acc", count, 2.0 * r * b * d, cd(b / 64) * cd(d / 128)))
    return out


def siglip_triton_launches(case: Case, gpu: GPU) -> list:
    """The sigmoid loss's forward + backward with a mean (backends/triton/siglip_launcher.py): per
    chunk of R rows, one tile kernel (the scores, the loss, G written; grid row blocks x column
    splits), dx_chunk = s G y and dy += s G^T x_chunk by the GEMM kernel. Executed: 6 B^2 D + 2 B^2 D'."""
    b, d, k = case.batch, case.dim, case.dim + case.d_teacher
    cd = math.ceil
    out = []
    rows = triton_chunk_rows(b)
    full, last = divmod(b, rows)
    for r, count in ((rows, full), (last, 1 if last else 0)):
        if count:
            programs = cd(r / 128) * _triton_splits(r, gpu.sms)
            for kernel, flops, grid in (("siglip_tile", 2.0 * r * b * k, programs),
                                        ("gemm", 2.0 * r * b * d,
                                         cd(r / 128) * cd(d / 128) * triton_k_splits(r, d, b, gpu.sms)[0]),
                                        ("gemm_acc", 2.0 * r * b * d, cd(b / 64) * cd(d / 128))):
                slots = gpu.sms * kernel_ctas(kernel)
                out.append(PredictedLaunches(kernel, count, flops, grid, wave_efficiency(grid, slots)))
    return out


def siglip_triton_flops(case: Case) -> float:
    return sum(x.count * x.flops for x in siglip_triton_launches(case, H100_SXM))


def siglip_triton_compute_seconds(case: Case, gpu: GPU) -> float:
    return sum(x.count * x.flops / (gpu.bf16_tensor * x.efficiency) for x in siglip_triton_launches(case, gpu))


def siglip_triton_bytes(case: Case, gpu: GPU) -> float:
    """Per chunk of R rows: the tile kernel reads the chunk's rows and all B columns (+ the teacher's)
    and writes R x B bf16 G and 3 floats per (row, split); the dx product reads G and y and writes R x D
    fp32; the dy product reads G and the chunk's rows and reads (after the first chunk) and writes
    B x D fp32. Then dx, dy are cast to bf16."""
    b, d, dt, e, f = case.batch, case.dim, case.d_teacher, BF16_BYTES, FP32_BYTES
    rows = triton_chunk_rows(b)
    chunks = math.ceil(b / rows)
    tiles = chunks * b * (d + dt) * e + b * (d + dt) * e + b * b * e + 3 * b * _triton_splits(rows, gpu.sms) * f
    products = 2 * b * b * e + chunks * b * d * e + b * d * e + b * d * f + (2 * chunks - 1) * b * d * f
    return tiles + products + 2 * (b * d * f + b * d * e)


def siglip_cpp_flops(case: Case) -> float:
    """The CUDA driver's one sweep over row blocks: scores (+ the teacher's), dx and dy: 6 B^2 D + 2 B^2 D'."""
    b2 = float(case.batch) ** 2
    return 6 * b2 * case.dim + 2 * b2 * case.d_teacher


def siglip_cpp_bytes(case: Case) -> float:
    """Per R x B fp32 block (csrc/psd_siglip.cpp): the GEMM(s) write the scores, the epilogue reads
    them and writes G in place, dx and dy read G; x, y (+ the teacher's) copied to fp32, dy read and
    written per block."""
    b, d, dt, e, f = case.batch, case.dim, case.d_teacher, BF16_BYTES, FP32_BYTES
    rows, blocks, _ = cpp_blocks(b)
    products = 2 if case.teacher == "separate" else 1
    total = 2 * b * (d + dt) * (e + f)
    per_block = (rows * d * f + b * d * f) + products * rows * b * f * 2 + rows * b * f \
        + 2 * rows * b * f + rows * d * f + 2 * b * d * f
    return total + blocks * per_block + 2 * (b * d * f + b * d * e)


def triton_k_splits(m: int, n: int, k: int, sms: int) -> tuple[int, int]:
    """K splits of the dx product (launcher._k_splits): when its 128 x 128 output tiles are fewer
    than 2 x SMs, as many splits of at least 2048 as keep tiles x splits within 2 x SMs."""
    tiles = math.ceil(m / 128) * math.ceil(n / 128)
    splits = max(1, min(2 * sms // tiles, k // 2048))
    if splits == 1:
        return 1, k
    k_split = math.ceil(math.ceil(k / splits) / 64) * 64
    return math.ceil(k / k_split), k_split


def triton_compute_seconds(case: Case, gpu: GPU, reduction: str = "mean") -> float:
    """Sum over launches of FLOPs / (bf16 peak x the grid's efficiency)."""
    return sum(x.count * x.flops / (gpu.bf16_tensor * x.efficiency) for x in triton_launches(case, gpu, reduction))


def triton_chunk_rows(batch: int, chunk_bytes: int = 1 << 30) -> int:
    """Rows per chunk of G (launcher._chunk_rows): as many as fit 1 GiB of bf16, a multiple of 128."""
    return min(max(128, chunk_bytes // (batch * BF16_BYTES) // 128 * 128), math.ceil(batch / 128) * 128)


def cpp_blocks(batch: int) -> tuple[int, int, int]:
    """(R, blocks, rows of the last block) of the CUDA driver: R = max(1, 2^26 // B) capped at B
    (csrc/psd_loss.cpp: block_rows, a 256 MB fp32 buffer)."""
    rows = max(1, min((1 << 26) // batch, batch))
    blocks = math.ceil(batch / rows)
    return rows, blocks, batch - (blocks - 1) * rows


def cpp_flops(case: Case) -> float:
    """Sweep 1: 2 B^2 (D + D'); sweep 2: the same again for all but the last block, + dx, dy: 4 B^2 D."""
    b, k = float(case.batch), case.dim + case.d_teacher
    _, _, last = cpp_blocks(case.batch)
    return 2 * b * b * k + 2 * (b - last) * b * k + 4 * b * b * case.dim


def _triton_splits(batch: int, sms: int) -> int:
    """Column splits of a row sweep (launcher._num_splits with 128-row blocks)."""
    return max(1, min(64, math.ceil(batch / 64), math.ceil(2 * sms / math.ceil(batch / 128))))


def triton_bytes(case: Case, gpu: GPU, reduction: str = "mean") -> float:
    """Forward: each sweep reads the inputs (+ the teacher's) and writes and merges its partials:
    two row sweeps 6 floats per (row, column split) each; the one sweep 6 per (row, split) and 4
    per (row group, column) (m', l', mt', lt': both cases' teachers have statistics). Per chunk
    of R rows: the G kernel reads the chunk's rows and all columns, writes R x B bf16 and its
    per-tile sums (ds, and with the one sweep the cross terms: per 64-column tile and row, per
    128-row tile and column; written and read once); the dx product reads G and y and writes
    R x D fp32 (split over K when its tiles are few: the fp32 partials written and read once
    more); the dy product reads G and the chunk's rows and reads (after the first chunk) and
    writes B x D fp32. Then dx, dy are cast to bf16."""
    b, d, dt, e, f = case.batch, case.dim, case.d_teacher, BF16_BYTES, FP32_BYTES
    inputs = 2 * b * (d + dt) * e
    one_sweep = triton_forward_sweeps(case, reduction) == 1
    if one_sweep:
        groups, splits = balanced_grid(math.ceil(b / 128), math.ceil(b / 32), gpu.sms)
        forward = inputs + 2 * (6 * b * splits + 4 * groups * b) * f
    else:
        forward = 2 * (inputs + 2 * 6 * b * _triton_splits(b, gpu.sms) * f)
    rows = triton_chunk_rows(b)
    chunks = math.ceil(b / rows)
    grad_tiles = chunks * b * (d + dt) * e + b * (d + dt) * e + b * b * e   # columns per chunk, rows once, G
    tile_sums = 2 * b * math.ceil(b / 64) * f                                # ds per (64-column tile, row)
    if one_sweep:
        tile_sums += 2 * (b * math.ceil(b / 64) + math.ceil(b / 128) * b) * f  # the cross terms
    products = 2 * b * b * e + b * d * e + b * d * f                         # G twice; y per chunk below
    for r in [rows] * (b // rows) + ([b % rows] if b % rows else []):
        splits = triton_k_splits(r, d, b, gpu.sms)[0]
        products += 2 * splits * r * d * f if splits > 1 else 0               # dx partials written, summed
    products += (chunks - 1) * b * d * e + b * d * e                         # y re-read, x chunks
    products += (2 * chunks - 1) * b * d * f                                 # dy read and written per chunk
    cast = 2 * (b * d * f + b * d * e)
    return forward + grad_tiles + tile_sums + products + cast


def triton_tile_rereads(case: Case, rows_per_block: int = 128, reduction: str = "mean") -> float:
    """Bytes the Triton kernels read in column tiles if none of the re-reads hit L2: every 128-row
    block of each forward sweep and of the G kernel streams all B columns (+ the teacher's)."""
    b = case.batch
    column_bytes = b * (case.dim + case.d_teacher) * BF16_BYTES
    return (triton_forward_sweeps(case, reduction) + 1) * math.ceil(b / rows_per_block) * column_bytes


def cpp_bytes(case: Case) -> float:
    b, d, dt, e, f = case.batch, case.dim, case.d_teacher, BF16_BYTES, FP32_BYTES
    separate = case.teacher == "separate"
    rows, blocks, last = cpp_blocks(b)
    total = 2 * b * (d + dt) * (e + f)             # fp32 copies of x, y (+ the teacher's)
    total += b * d * f                             # dy zeroed
    products = 2 if separate else 1                # score blocks per block: d (+ t)
    col_stats, col_coef = 6, 4                     # with teacher statistics (both cases here)
    for r, recompute in ((rows, True), (last, False)):
        n = blocks - 1 if recompute else 1         # the last block is the one sweep 2 does not recompute
        block = r * b * f
        gemm_in = r * d * f + b * d * f + (r * dt * f + b * dt * f if separate else 0)
        sweep1 = gemm_in + products * block        # GEMM(s): read block rows and all columns, write scores
        sweep1 += products * block                 # row statistics read the scores
        sweep1 += products * block + 2 * col_stats * b * f  # column statistics: scores; stats read, written
        sweep2 = (gemm_in + products * block) if recompute else 0
        sweep2 += products * block + block + col_coef * b * f  # form_grad reads d (+ t), writes G
        sweep2 += block + b * d * f + r * d * f    # dx = s G y
        sweep2 += block + r * d * f + 2 * b * d * f  # dy += s G^T x_blk
        total += n * (sweep1 + sweep2)
    total += 2 * (b * d * f + b * d * e)           # dx, dy cast back to bf16
    return total


@dataclass(frozen=True)
class Backend:
    name: str
    precision: str          # which peak rate its products run at: "bf16", "tf32" or "fp32"
    flops: Callable[[Case], float]
    bytes: Callable[[Case, GPU], float]
    compute: Callable[[Case, GPU], float] | None = None   # seconds; None: executed FLOPs at the peak


BACKENDS = (
    Backend("psd-triton", "bf16", triton_flops, triton_bytes, triton_compute_seconds),
    Backend("psd-cpp", "fp32", cpp_flops, lambda case, gpu: cpp_bytes(case)),
    Backend("psd-cpp [tf32]", "tf32", cpp_flops, lambda case, gpu: cpp_bytes(case)),
    # the sigmoid (SigLIP) loss, mean reduction
    Backend("psd-siglip-triton", "bf16", siglip_triton_flops, siglip_triton_bytes, siglip_triton_compute_seconds),
    Backend("psd-siglip-cpp", "fp32", siglip_cpp_flops, lambda case, gpu: siglip_cpp_bytes(case)),
)


def peak_rate(gpu: GPU, precision: str) -> float:
    return {"bf16": gpu.bf16_tensor, "tf32": gpu.tf32_tensor, "fp32": gpu.fp32}[precision]


def predict(case: Case, backend: Backend, gpu: GPU) -> dict:
    """One row: FLOPs, bytes, compute and memory time, the predicted time and its bound."""
    executed = backend.flops(case)
    moved = backend.bytes(case, gpu)
    rate = peak_rate(gpu, backend.precision)
    compute_s = executed / rate if backend.compute is None else backend.compute(case, gpu)
    memory_s = moved / gpu.hbm
    predicted = max(compute_s, memory_s)
    return {"case": case.name, "B": case.batch, "D": case.dim, "teacher": case.teacher, "D_teacher": case.d_teacher,
            "gpu": gpu.name, "backend": backend.name, "precision": backend.precision,
            "useful_flops": case.flops(), "executed_flops": executed,
            "useful_share": case.flops() / executed, "hbm_bytes": moved,
            "peak_flops_per_s": rate, "hbm_bytes_per_s": gpu.hbm,
            "compute_ms": 1e3 * compute_s, "memory_ms": 1e3 * memory_s, "predicted_ms": 1e3 * predicted,
            "bound": "compute" if compute_s >= memory_s else "memory",
            "useful_tflops_per_s": case.flops() / predicted / 1e12}


def rows(cases=CASES, backends=BACKENDS, gpus=GPUS) -> list[dict]:
    return [predict(case, backend, gpu) for case in cases for gpu in gpus for backend in backends]


def _si(value: float, unit: str) -> str:
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if value >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def table(results: list[dict]) -> str:
    head = ("| case | GPU | backend | useful FLOP | executed FLOP (precision) | useful/executed | HBM bytes | "
            "compute ms | memory ms | predicted ms | bound | useful TFLOP/s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        lines.append(f"| {r['case']} | {r['gpu']} | {r['backend']} | {_si(r['useful_flops'], 'FLOP')} | "
                     f"{_si(r['executed_flops'], 'FLOP')} ({r['precision']}) | {100 * r['useful_share']:.0f}% | "
                     f"{_si(r['hbm_bytes'], 'B')} | "
                     f"{r['compute_ms']:.4g} | {r['memory_ms']:.4g} | {r['predicted_ms']:.4g} | {r['bound']} | "
                     f"{r['useful_tflops_per_s']:.0f} |")
    return "\n".join(lines)


def launch_table(cases, gpu: GPU) -> str:
    """psd-triton per case and reduction: executed FLOPs in units of B^2 D, the share of them that is
    useful, and every launch's programs, CTAs per SM, waves and grid efficiency on `gpu`."""
    head = ("| case | reduction | executed (B^2 D) | useful/executed | launch | count | programs | CTAs/SM | "
            "waves | grid efficiency |")
    lines = [f"psd-triton launches on the {gpu.name} ({gpu.sms} SMs; CTAs per SM from the sm_90 compile check):",
             "", head, "|" + "---|" * (head.count("|") - 1)]
    for case in cases:
        unit = float(case.batch) ** 2 * case.dim
        for reduction in ("mean", "none"):
            executed = triton_flops(case, reduction)
            for i, x in enumerate(triton_launches(case, gpu, reduction)):
                share = f"{100 * case.flops() / executed:.0f}%"
                first = (f"{executed / unit:.3g}", share) if i == 0 else ("", "")
                lines.append(f"| {case.name if i == 0 else ''} | {reduction if i == 0 else ''} | {first[0]} | "
                             f"{first[1]} | {x.kernel} | {x.count} | {x.programs} | {x.ctas} | "
                             f"{x.programs / (gpu.sms * x.ctas):.2f} | {100 * x.efficiency:.1f}% |")
    return "\n".join(lines)


NOTES = (
    "Peaks: dense datasheet rates (bf16 tensor 989.4, TF32 tensor 494.7, fp32 66.9 TFLOP/s; HBM 3.35 TB/s "
    "H100 SXM, 4.8 TB/s H200). Executed FLOPs: matrix products only. HBM bytes: a lower bound, each launch "
    "reading its operands and writing its results once.",
    "psd-cpp: fp32 cuBLAS on fp32 copies (no tensor cores unless torch.backends.cuda.matmul.allow_tf32 = True, "
    "the [tf32] rows); its R x B fp32 score blocks round-trip HBM 8 times (13 with a separate teacher) and at "
    "B = 1,048,576 (R = 64 rows) every block's GEMMs re-read all of y and read and write all of dy.",
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per row instead of the table")
    args = parser.parse_args(argv)
    results = rows()
    if args.json:
        for r in results:
            print(json.dumps(r, sort_keys=True))
        return 0
    print(table(results))
    print()
    for note in NOTES:
        print(f"- {note}")
    print()
    print(launch_table(CASES, H100_SXM))
    print()
    for case in CASES:
        reread = triton_tile_rereads(case)
        print(f"- psd-triton, {case.name}: the column tiles re-read per 128-row block of the forward sweeps "
              f"and the gradient tiles are {_si(reread, 'B')}; served by L2 above (programs sharing columns run in "
              f"step); from HBM they would take {1e3 * reread / H100_SXM.hbm:.4g} ms on the H100 SXM, "
              f"{1e3 * reread / H200.hbm:.4g} ms on the H200.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
