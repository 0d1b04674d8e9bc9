"""psd_kernels.tools.roofline: its formulas on small cases, counted by hand here, and the printout.

    .venv/bin/python -m pytest tests/test_roofline.py -q
"""
import json

import pytest

from psd_kernels.tools import roofline as R

# B = 16384, D = 64, a separate teacher of width D' = 32; B^2 = 268,435,456.
SMALL = R.Case(16384, 64, "separate", "bfloat16", 32)


def test_useful_flops_are_6_b2_d_plus_2_b2_dprime():
    # forward 2 B^2 (64 + 32) + backward 4 B^2 64 = 448 B^2
    assert SMALL.flops() == 120_259_084_288
    # a self teacher adds no product: 6 B^2 D = 384 B^2
    assert R.Case(16384, 64, "self_scaled").flops() == 103_079_215_104
    # forward and backward apart: 2 B^2 (64 + 32) and 4 B^2 64
    assert SMALL.flops("forward") + SMALL.flops("backward") == SMALL.flops("full") == SMALL.flops()
    assert SMALL.flops("backward") == 256 * 16384 ** 2


def test_triton_executes_one_sweep_for_mean_and_two_for_none():
    # mean/sum: one sweep 2 B^2 96 = 192 B^2; G tiles (in the forward): 192 B^2; products 4 B^2 64 = 256 B^2
    assert R.triton_flops(SMALL) == R.triton_flops(SMALL, "sum") == 640 * 16384 ** 2
    # none: two sweeps 384 B^2, G tiles 192 B^2, products 256 B^2
    assert R.triton_flops(SMALL, "none") == 832 * 16384 ** 2 == 223_338_299_392
    # at D' = D: 12 B^2 D executed for 8 B^2 D useful (67%); a self teacher 8 for 6 (75%)
    wide = R.Case(32768, 512, "separate", "bfloat16", 512)
    unit = 32768 ** 2 * 512
    assert R.triton_flops(wide) == 12 * unit and wide.flops() == 8 * unit
    assert R.triton_flops(R.CASES[0]) == 8 * unit and R.triton_flops(R.CASES[0], "none") == 10 * unit


def test_ctas_per_sm_on_sm_90_from_registers_shared_memory_and_warps():
    # 255 registers: 8192 per warp (32 x 256), 8 warps take all 65,536 of an SM; 4 warps fit twice
    assert R.ctas_per_sm(90, regs=255, smem=62464, num_warps=8) == 1
    assert R.ctas_per_sm(90, regs=255, smem=33792, num_warps=4) == 2
    assert R.ctas_per_sm(90, regs=128, smem=100 * 1024, num_warps=4) == 2   # 233,472 // (102,400 + 1024) = 2
    assert R.ctas_per_sm(90, regs=64, smem=1024, num_warps=4) == 8           # 2048 registers per warp: 8 x 4 warps
    assert R.ctas_per_sm(90, regs=32, smem=1024, num_warps=4) == 16          # 64 warps per SM at most


def test_triton_launch_grids_ctas_and_k_splits_at_b_32768_and_1m():
    launches = R.triton_launches(R.CASES[1], R.H100_SXM)
    fwd = launches[0]
    # one sweep: 16 row groups x 16 column splits, 16 blocks of 128 rows by 64 tiles of 32 columns
    # each, one CTA per SM: two waves on 132 SMs, 256 / 264 of the slots' time used
    assert (fwd.kernel, fwd.programs, fwd.ctas) == ("fwd_sym", 256, 1)
    assert fwd.efficiency == pytest.approx(256 / 264)
    # two chunks of 16384 rows: G tiles 128 x 256 tiles each, dx 128 x 4, dy 256 x 4 then 512 x 4
    kinds = [(x.kernel, x.count, x.programs) for x in launches[1:]]
    assert kinds == [("grad", 2, 128 * 512), ("gemm", 2, 128 * 4), ("gemm", 1, 256 * 4), ("gemm_acc", 1, 512 * 4)]
    # sm_90 resources (TRITON_KERNELS): the 8-warp forward and gradient tiles one CTA per SM, the
    # products two (128 x 128 at 112 registers and 64 x 128 at 160, 97 KiB of shared memory each)
    assert [x.ctas for x in launches] == [1, 1, 2, 2, 2]
    assert sum(x.count * x.flops for x in launches) == R.triton_flops(R.CASES[1])
    # B = 1,048,576: 512-row chunks, whose dx product (4 x 4 output tiles) splits K = B in 16
    big = R.triton_launches(R.CASES[2], R.H100_SXM)
    assert R.triton_k_splits(512, 512, 1 << 20, 132) == (16, 65536)
    assert (big[2].kernel, big[2].count, big[2].programs) == ("gemm", 2048, 4 * 4 * 16)
    assert big[2].efficiency == pytest.approx(256 / 264)
    # the compute time divides each launch's FLOPs by its grid's efficiency
    ideal = R.triton_flops(R.CASES[1]) / R.H100_SXM.bf16_tensor
    assert ideal < R.triton_compute_seconds(R.CASES[1], R.H100_SXM) < ideal / 0.96


def test_cpp_recomputes_all_blocks_but_the_last():
    assert R.cpp_blocks(16384) == (4096, 4, 4096)            # R = 2^26 / B rows, 4 blocks
    assert R.cpp_blocks(3) == (3, 1, 3)                      # R capped at B
    assert R.cpp_blocks(1 << 20) == (64, 16384, 64)
    # sweep 1: 2 B^2 96 = 51,539,607,552; sweep 2 recomputes 3 of the 4 blocks (12288 rows):
    # 2 * 12288 * 16384 * 96 = 38,654,705,664; dx and dy: 4 B^2 64 = 68,719,476,736
    assert R.cpp_flops(SMALL) == 158_913_789_952
    # one block: nothing recomputed, the executed FLOPs are the useful ones
    one = R.Case(1024, 64, "separate", "bfloat16", 32)
    assert R.cpp_flops(one) == one.flops()


def test_cpp_bytes_pass_by_pass():
    # B = 4, D = 2, self teacher, one block of R = 4 rows; bf16 = 2 bytes, fp32 = 4.
    # fp32 copies: read 2*4*2*2 = 32, write 2*4*2*4 = 64; dy zeroed: 32          -> 128
    # sweep 1: GEMM reads x_blk 32 + y 32, writes the 4x4 block 64; row stats read 64;
    #          column stats read 64 and read + write 6 column vectors 2*6*4*4 = 192 -> 448
    # sweep 2 (no recompute for the last block): form_grad reads 64, writes 64, reads 4
    #          coefficient vectors 64; dx reads G 64 + y 32, writes 32; dy reads G 64 + x_blk 32,
    #          reads and writes dy 64                                                 -> 480
    # dx, dy cast back: 2 * (32 + 16)                                                 -> 96
    assert R.cpp_bytes(R.Case(4, 2, "self_scaled")) == 128 + 448 + 480 + 96


def test_triton_bytes_pass_by_pass():
    # B = 128, D = 64, self teacher, 132 SMs: one G chunk of 128 rows.
    tiny = R.Case(128, 64, "self_scaled")
    assert R.triton_chunk_rows(128) == 128
    inputs = 2 * 128 * 64 * 2                                # x, y in bf16: 32768
    grad_tiles = 128 * 64 * 2 + 128 * 64 * 2 + 128 * 128 * 2  # columns, rows, G written
    ds_sums = 2 * 128 * 2 * 4                                # ds per (64-column tile, row), written and read
    products = 2 * 128 * 128 * 2 + 128 * 64 * 2 + 128 * 64 * 4 + 128 * 64 * 2 + 128 * 64 * 4
    cast = 2 * (128 * 64 * 4 + 128 * 64 * 2)
    # none: two sweeps with 2 column splits each, partials written + merged
    assert R._triton_splits(128, 132) == 2
    forward = 2 * (inputs + 2 * 6 * 128 * 2 * 4)
    assert R.triton_bytes(tiny, R.H100_SXM, "none") == forward + grad_tiles + ds_sums + products + cast
    # mean: one sweep, 1 row group x 4 splits (one 32-column tile each); row and column partials;
    # the cross terms per (64-column tile, row) and per (128-row tile, column)
    assert R.balanced_grid(1, 4, 132) == (1, 4)
    forward = inputs + 2 * (6 * 128 * 4 + 4 * 1 * 128) * 4
    cross = 2 * (128 * 2 + 1 * 128) * 4
    assert R.triton_bytes(tiny, R.H100_SXM) == forward + grad_tiles + ds_sums + cross + products + cast
    assert R.triton_chunk_rows(1 << 20) == 512                # 1 GiB of bf16 G rows at B = 1M


def test_prediction_is_the_larger_time_and_names_its_bound():
    tri = R.predict(SMALL, R.BACKENDS[0], R.H100_SXM)
    assert tri["compute_ms"] == pytest.approx(1e3 * R.triton_compute_seconds(SMALL, R.H100_SXM))
    assert tri["compute_ms"] >= 1e3 * R.triton_flops(SMALL) / 989.4e12
    # D = 64: the G tiles (2 bytes written, 4 read per element against 2 (D + D') + 4 D FLOPs) set the time
    assert tri["predicted_ms"] == max(tri["compute_ms"], tri["memory_ms"]) and tri["bound"] == "memory"
    wide = R.predict(R.CASES[1], R.BACKENDS[0], R.H200)               # D = D' = 512: compute-bound
    assert wide["bound"] == "compute" and wide["predicted_ms"] == wide["compute_ms"]
    cpp = {b.name: R.predict(SMALL, b, R.H200) for b in R.BACKENDS}
    assert cpp["psd-cpp"]["compute_ms"] == pytest.approx(1e3 * 158_913_789_952 / 66.9e12)
    assert cpp["psd-cpp [tf32]"]["compute_ms"] == pytest.approx(1e3 * 158_913_789_952 / 494.7e12)
    assert cpp["psd-cpp"]["memory_ms"] == pytest.approx(1e3 * R.cpp_bytes(SMALL) / 4.8e12)
    slow_memory = R.predict(R.CASES[2], R.BACKENDS[2], R.H100_SXM)   # B = 1M, tf32: y re-read per 64 rows
    assert slow_memory["bound"] == "memory" and slow_memory["predicted_ms"] == slow_memory["memory_ms"]


def test_gpu_rates_are_the_datasheet_dense_figures():
    assert (R.H100_SXM.bf16_tensor, R.H100_SXM.tf32_tensor, R.H100_SXM.fp32, R.H100_SXM.hbm) == \
        (989.4e12, 494.7e12, 66.9e12, 3.35e12)
    assert (R.H200.bf16_tensor, R.H200.tf32_tensor, R.H200.fp32, R.H200.hbm) == (989.4e12, 494.7e12, 66.9e12, 4.8e12)


def test_printout_has_every_row_the_one_sweep_grid_and_json(capsys):
    assert R.main([]) == 0
    out = capsys.readouterr().out
    assert out.count("| psd-triton |") == 6 and "| memory |" in out and "| compute |" in out
    assert "| fwd_sym | 1 | 256 | 1 | 1.94 | 97.0% |" in out   # B = 32768: the one sweep's grid
    assert R.main(["--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == len(R.CASES) * len(R.GPUS) * len(R.BACKENDS) == 30
    assert {r["B"] for r in rows} == {32768, 1 << 20} and {r["gpu"] for r in rows} == {"H100 SXM", "H200"}
    assert all(r["predicted_ms"] == max(r["compute_ms"], r["memory_ms"]) for r in rows)
    assert {r["case"] for r in rows} == {"B=32768 D=512 self_scaled teacher", "B=32768 D=512 separate teacher D'=512",
                                         "B=1048576 D=512 self_scaled teacher"}


def test_sigmoid_loss_rows_execute_only_the_useful_products():
    """The sigmoid loss (mean) computes the scores once (+ the teacher's) and the two gradient
    products: executed = useful = 6 B^2 D + 2 B^2 D' on both backends, whatever the chunking."""
    for case in R.CASES:
        for name in ("psd-siglip-triton", "psd-siglip-cpp"):
            backend = next(b for b in R.BACKENDS if b.name == name)
            row = R.predict(case, backend, R.H100_SXM)
            assert row["executed_flops"] == pytest.approx(case.flops()) and row["useful_share"] == pytest.approx(1.0)
    separate = R.CASES[1]
    assert separate.flops() == pytest.approx(8.0 * separate.batch ** 2 * separate.dim)   # D' = D
    launches = R.siglip_triton_launches(R.CASES[0], R.H100_SXM)
    assert {x.kernel for x in launches} == {"siglip_tile", "gemm", "gemm_acc"} and R.kernel_ctas("siglip_tile") == 1
