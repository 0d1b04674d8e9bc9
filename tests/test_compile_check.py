"""The GPU kernels fit the hardware: compiled here for sm_80 / sm_90 (no GPU needed), no autotune
config the host may launch spills registers, exceeds shared memory, or (on sm_90) falls back to
pre-Hopper mma.sync. A representative subset: 16-bit inputs at D = 768 (not a power of two), the
separate teacher (the most registers: two products per tile) and the self teacher (the one-sweep
symmetric forward). `make compile-check` runs the whole matrix.

    .venv/bin/python -m pytest tests/test_compile_check.py
"""
import os

import pytest

triton = pytest.importorskip("triton")

from psd_kernels import compile_check  # noqa: E402

pytestmark = pytest.mark.skipif(
    not os.path.isfile(compile_check._tool("ptxas")) or not os.path.isfile(compile_check._tool("cuobjdump")),
    reason="Triton's bundled ptxas/cuobjdump are missing (a Triton build without the NVIDIA backend)")

CUOBJDUMP_TEXT = """
Resource usage:
 Common:
  GLOBAL:0
 Function _psd_fwd_kernel:
  REG:255 STACK:1672 SHARED:1024 LOCAL:0 CONSTANT[0]:664 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function _gemm_kernel:
  REG:106 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:600 TEXTURE:0 SURFACE:0 SAMPLER:0
"""


def test_resource_usage_and_mma_parsing():
    usage = compile_check.parse_resource_usage(CUOBJDUMP_TEXT)
    assert usage == {"_psd_fwd_kernel": {"regs": 255, "spill_bytes": 1672, "smem_static": 1024},
                     "_gemm_kernel": {"regs": 106, "spill_bytes": 0, "smem_static": 0}}
    assert compile_check.mma_kind("wgmma.mma_async.sync.aligned.m64n64k16") == "wgmma"
    assert compile_check.mma_kind("wgmma.mma_async ... mma.sync.aligned.m16n8k16") == "mma.sync"
    assert compile_check.mma_kind("tcgen05.mma.cta_group::1") == "tcgen05"
    assert compile_check.mma_kind("fma.rn.f32") == "fma"


def test_failures_name_each_problem():
    row = dict(arch=90, dtype="bf16", spill_bytes=24, smem=300 * 1024, mma="mma.sync")
    why = compile_check.failures(row)
    assert len(why) == 3 and "spills 24 bytes" in why[0] and "shared memory" in why[1] and "mma.sync" in why[2]
    assert compile_check.failures(dict(arch=80, dtype="bf16", spill_bytes=0, smem=1000, mma="mma.sync")) == []
    fp32 = dict(arch=90, dtype="fp32", spill_bytes=8, smem=1000, mma="fma")
    assert compile_check.failures(fp32) == [] and "fp32" in compile_check.notes(fp32)[0]


def test_every_launchable_variant_is_listed():
    from psd_kernels.triton_psd import compile_variants
    kernels = {v.kernel for v in compile_variants("bf16", 768, "separate", 90)}
    assert kernels == {"fwd", "fwd_sym2", "fwd_sym", "grad", "grad_sym", "grad_cross", "gemm_da", "gemm_db"}
    # a self teacher at the student's scale: no teacher statistics, so no cross terms to form
    assert {v.kernel for v in compile_variants("bf16", 768, "self", 90)} == kernels - {"grad_cross"}
    fp32 = compile_variants("fp32", 768, "separate", 90)
    assert all(v.constexprs["BLOCK_M"] * v.constexprs["BLOCK_N"] <= 64 * 64 for v in fp32 if v.kernel != "gemm_db")


@pytest.mark.timeout(600)
def test_kept_configs_do_not_spill_and_use_wgmma_on_hopper():
    rows = compile_check.run(archs=(90,), dtypes=("bf16",), dims=(768,), teachers=("separate", "self"), jobs=2)
    rows += compile_check.run(archs=(80,), dtypes=("fp16",), dims=(768,), teachers=("separate",), jobs=2)
    assert rows
    bad = [f"{r['kernel']} sm_{r['arch']} {r['dtype']} {r['teacher']} {r['config']}: {'; '.join(r['failures'])}"
           for r in rows if r["failures"]]
    assert not bad, "\n".join(bad)
    hopper = [r for r in rows if r["arch"] == 90]
    assert all(r["mma"] == "wgmma" for r in hopper), {(r["kernel"], r["mma"]) for r in hopper}
