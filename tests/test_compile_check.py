"""The GPU kernels as the public API launches them fit the hardware, checked without a GPU.

psd_kernels.tools.launches records the launches of psd_loss / psd_clip_loss on meta tensors and
specialises them with Triton's binder; psd_kernels.tools.compile_check compiles each one for
sm_80 / sm_90 / sm_100. Here: the parsers and the occupancy arithmetic on fixed inputs, the
recording (every kernel, widths padded, offset inputs aligned, ints specialised as Triton
does), and a representative subset compiled: D = 500 (a padded width) and 768, B = 4097 (odd)
and 32768, the separate teacher (the most registers) and the self teacher (the one-sweep
forward), bfloat16 on sm_90 and sm_100 and float16 on sm_80. `make compile-check` runs the whole matrix.
The recording covers the reduction mean (and sum, which launches the same kernels): with a teacher
of statistics of its own that is the one-sweep forward and the gradient tiles with the cross
terms (CROSS); products whose output tiles are few split K over a third grid axis. The symmetric
calls are recorded under PSD_TRITON_COLUMN_STATS=second_pass too (two forward sweeps).

    .venv/bin/python -m pytest tests/test_compile_check.py

Recording and compiling need the real @triton.jit functions, which TRITON_INTERPRET=1 replaces
by interpreted ones; under it, test_compile_check_reruns_itself_without_the_interpreter re-runs
this file in a child pytest with TRITON_INTERPRET unset.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

from psd_kernels.backends.triton import kernels as K  # noqa: E402
from psd_kernels.tools import compile_check, launches, roofline  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
compiled = pytest.mark.skipif(INTERPRETED, reason="TRITON_INTERPRET=1: test_compile_check_reruns_itself_without_"
                                                  "the_interpreter runs this in a child pytest")
needs_ptxas = pytest.mark.skipif(
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

# The shape of a TTGIR: aliases, an outer loop with a synchronous load, a main loop with a dot.
TTGIR = """#mma = #ttg.nvidia_mma<{versionMajor = 2, versionMinor = 0, warpsPerCTA = [4, 1], instrShape = [16, 8]}>
#blocked = #ttg.blocked<{sizePerThread = [1, 8], threadsPerWarp = [4, 8], warpsPerCTA = [4, 1], order = [1, 0]}>
module {
  tt.func public @k() {
    scf.for %i = %a to %b step %c : i32 {
      %l = tt.load %p, %m : tensor<32x!tt.ptr<f32>, #blocked1>
      %r:2 = scf.for %k = %a to %D step %c64 iter_args(%x = %y) -> (tensor<64x32xf32, #mma>) : i32 {
        %a1 = ttg.async_copy_global_to_local %pa, %sa mask %ma : tensor<64x64x!tt.ptr<bf16>, #blocked> -> <64x64xbf16>
        %b1 = {LOAD}
        scf.if %cond {
          %q = tt.load %pq : tensor<64x!tt.ptr<f32>, #blocked1>
        } else {
        }
        %d = tt.dot %a2, %b2, %x, inputPrecision = tf32 : tensor<64x64xbf16, #ttg.dot_op<{opIdx = 0, parent = #mma, kWidth = 2}>> * tensor<64x32xbf16, #ttg.dot_op<{opIdx = 1, parent = #mma, kWidth = 2}>> -> tensor<64x32xf32, {LAYOUT}>
        scf.yield %d : tensor<64x32xf32, #mma>
      }
    }
    tt.return
  }
}
"""
ASYNC = "ttg.async_copy_global_to_local %pb, %sb : tensor<32x64x!tt.ptr<bf16>, #blocked> -> <32x64xbf16>"


def test_resource_usage_is_parsed_from_cuobjdump():
    usage = compile_check.parse_resource_usage(CUOBJDUMP_TEXT)
    assert usage == {"_psd_fwd_kernel": {"regs": 255, "spill_bytes": 1672, "smem_static": 1024},
                     "_gemm_kernel": {"regs": 106, "spill_bytes": 0, "smem_static": 0}}


def test_dots_and_main_loop_loads_are_read_from_the_ttgir():
    pipelined = TTGIR.replace("{LOAD}", ASYNC).replace("{LAYOUT}", "#mma")
    assert compile_check.lowered_dots(pipelined, 80) == (1, 0)          # mma.sync on sm_80
    assert compile_check.lowered_dots(pipelined, 90) == (0, 1)          # a tt.dot left on sm_90 is not wgmma
    assert compile_check.lowered_dots(pipelined.replace("#mma>\n", "#blocked>\n"), 80) == (0, 1)  # FMA
    wgmma = "%d = ttng.warp_group_dot %a, %b, %x {isAsync = true} : !ttg.memdesc<64x64xbf16> -> tensor<64x32xf32, #mma>"
    assert compile_check.lowered_dots(wgmma + "\n%w = ttng.warp_group_dot_wait %d\n", 90) == (1, 0)
    # one main loop (the inner one; the outer loop's load is not in it); its scf.if's load counts
    assert compile_check.main_loop_loads(pipelined) == (1, 1, 2)
    synchronous = TTGIR.replace("{LOAD}", "%b1 = tt.load %pb, %mb : tensor<32x64x!tt.ptr<bf16>, #blocked>")
    assert compile_check.main_loop_loads(synchronous.replace("{LAYOUT}", "#mma")) == (1, 2, 1)


def test_ctas_per_sm_limits_and_what_fails_a_row():
    assert compile_check.ctas_per_sm(90, regs=255, smem=20000, num_warps=8) == 1       # 256 x 256 regs per CTA
    assert compile_check.ctas_per_sm(90, regs=128, smem=20000, num_warps=4) == 4       # registers: 4 x 16K
    assert compile_check.ctas_per_sm(90, regs=64, smem=100 * 1024, num_warps=4) == 2   # shared memory
    assert compile_check.ctas_per_sm(80, regs=32, smem=0, num_warps=1) == 32           # the CTA limit
    assert compile_check.ctas_per_sm is roofline.ctas_per_sm   # one occupancy formula
    row = dict(arch=90, dtype="bfloat16", spill_bytes=24, smem=300 * 1024, dots=2, tc_dots=1, other_dots=1,
               main_loops=1, sync_loads=2, async_loads=0)
    why = compile_check.failures(row)
    assert len(why) == 4 and "shared memory" in why[0]
    assert "1 of 2 dots not on wgmma" in why[1] and "spills 24 bytes" in why[2] and "synchronous" in why[3]
    clean = dict(row, spill_bytes=0, smem=1000, tc_dots=2, other_dots=0, sync_loads=0, async_loads=2)
    assert compile_check.failures(clean) == []
    fp32 = dict(row, dtype="float32", smem=1000)
    assert compile_check.failures(fp32) == [] and "spills" in compile_check.notes(fp32)[0]


@pytest.mark.skipif(not INTERPRETED, reason="the tests run in this process")
@pytest.mark.timeout(900)
def test_compile_check_reruns_itself_without_the_interpreter():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    child = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                           cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True)
    assert child.returncode == 0, child.stdout[-6000:] + child.stderr[-2000:]


def _recorded(arch, **call):
    return [launch for _, launch in launches.record(arch, compile_check.SMS[arch], [launches.Call("bfloat16", **call)])]


@compiled
def test_recorded_launches_cover_every_kernel_with_the_binders_specialisation():
    """An odd batch, a padded width and offset inputs: every forward, gradient and product
    launch, each kept config, the first chunk's dy product (A transposed, not accumulating);
    the embeddings reach the kernels 16-byte aligned with a width divisible by 16."""
    rec = _recorded(90, b=4097, d=500, teacher="separate", dt=100, offset=True)
    names = {(launch.source.split(":")[1], launch.constexpr("stride_am"), launch.constexpr("ACCUMULATE"))
             for launch in rec}
    assert names == {("_psd_fwd_kernel", None, None), ("_psd_grad_kernel", None, None),
                     ("_gemm_kernel", None, False), ("_gemm_kernel", 1, False)}  # one chunk: dy not accumulated
    for launch in rec:
        if launch.source.endswith("_gemm_kernel"):
            assert {"a_ptr", "b_ptr", "c_ptr", "K", "N"} <= set(launch.attrs) or launch.constexpr("stride_am") == 1
        else:
            assert {"a_ptr", "b_ptr", "ta_ptr", "tb_ptr", "D", "DT", "stride_a", "stride_b"} <= set(launch.attrs)
    fwd = [launch for launch in rec if launch.source.endswith("_psd_fwd_kernel")]
    assert {launch.constexpr("BLOCK_N") for launch in fwd} == {32}  # the separate teacher's kept configs
    assert len(fwd) == 2 * 2  # both sweeps of the symmetric loss, two kept configs each
    # B = 65536 on 132 SMs: one column split, which the binder turns into the constant 1
    big = _recorded(90, b=65536, d=512, teacher="self_scaled")
    assert any(launch.constexpr("n_split") == 1 for launch in big)
    assert all(launch.programs > 0 for launch in big)


def _kernel(launch):
    return launch.source.split(":")[1]


def _tile(launch):
    return launch.constexpr("BLOCK_M"), launch.constexpr("BLOCK_N")


@compiled
def test_recorded_mean_takes_a_second_pass_where_the_one_sweep_would_spill(monkeypatch):
    """Before Triton 3.6 the sm_90 one sweep with a separate teacher spills in every kept tile: the
    symmetric mean then takes its column statistics by a second pass (no COL_STATS launch)."""
    monkeypatch.setattr(K, "TRITON_RELEASE", (3, 4))
    launches = _recorded(90, reduction="mean", b=4097, d=512, teacher="separate", dt=512)
    fwd = [launch for launch in launches if _kernel(launch) == "_psd_fwd_kernel"]
    assert fwd and not any(launch.constexpr("COL_STATS") for launch in fwd)
    monkeypatch.setattr(K, "TRITON_RELEASE", (3, 6))
    launches = _recorded(90, reduction="mean", b=4097, d=512, teacher="separate", dt=512)
    assert any(launch.constexpr("COL_STATS") for launch in launches if _kernel(launch) == "_psd_fwd_kernel")


@compiled
def test_recorded_mean_takes_the_one_sweep_and_the_cross_terms():
    """The symmetric mean with a teacher of statistics of its own (clip_weighted_loss): one forward
    sweep with column partials, gradient tiles with the cross terms, the products; "none" takes two
    sweeps and no cross terms; "sum" launches exactly what "mean" does."""
    case = dict(b=4097, d=512, teacher="separate", dt=512)
    if K.TRITON_RELEASE < (3, 6):
        pytest.skip(f"Triton {'.'.join(map(str, K.TRITON_RELEASE))} spills in this one sweep on sm_90: the launcher "
                    "takes a second pass there (kernels.one_sweep_spills, checked by the next test)")
    mean = _recorded(90, reduction="mean", **case)
    fwd = [launch for launch in mean if _kernel(launch) == "_psd_fwd_kernel"]
    grad = [launch for launch in mean if _kernel(launch) == "_psd_grad_kernel"]
    assert fwd and all(launch.constexpr("COL_STATS") for launch in fwd)   # one sweep
    # sm_90 keeps 64 x 32 on 4 warps for it (128 x 32 spills 16 bytes per thread with Triton 3.9.0)
    assert {_tile(launch) + (launch.option("num_warps"),) for launch in fwd} == {(64, 32, 4)}
    assert grad and all(launch.constexpr("CROSS") for launch in grad)
    assert {"wrow_ptr", "wcol_ptr", "grad_ptr", "stride_g"} <= set(grad[0].attrs)
    none = _recorded(90, reduction="none", **case)
    assert not any(launch.constexpr("CROSS") for launch in none if _kernel(launch) == "_psd_grad_kernel")
    assert not any(launch.constexpr("COL_STATS") for launch in none if _kernel(launch) == "_psd_fwd_kernel")
    assert [launch.key() for launch in _recorded(90, reduction="sum", **case)] == [launch.key() for launch in mean]
    # a self teacher at the student's scale: the one sweep for every reduction, no cross terms
    self_mean = _recorded(90, b=4097, d=512, teacher="self", reduction="mean")
    assert not any(launch.constexpr("CROSS") for launch in self_mean if _kernel(launch) == "_psd_grad_kernel")
    # sm_100: the one sweep runs 64 x 32 on 8 warps with at most 224 registers (every teacher), the
    # cross-term tiles 128 x 32
    blackwell = _recorded(100, reduction="mean", **case)
    assert {_tile(launch) + (launch.option("num_warps"), launch.option("maxnreg"))
            for launch in blackwell + _recorded(100, b=4097, d=512, teacher="self")
            if _kernel(launch) == "_psd_fwd_kernel" and launch.constexpr("COL_STATS")} == {(64, 32, 8, 224)}
    assert not any(_tile(launch) == (64, 32) and launch.option("num_warps") == 8 for launch in mean + none)
    assert {_tile(launch) for launch in blackwell if _kernel(launch) == "_psd_grad_kernel"} == {(128, 32)}


@compiled
def test_column_stats_second_pass_is_recorded_and_the_environment_restored(monkeypatch):
    """PSD_TRITON_COLUMN_STATS=second_pass: the symmetric loss runs two forward sweeps without column
    partials (a self teacher: LABELS_DIAG=1, COL_STATS=0, TEACHER=0, launched by no other call); the
    matrix records it, the compile check compiles its variants, and the variable is restored."""
    matrix = launches.calls("bfloat16", batches=(4097,), dims=(512,), teachers=("self",))
    assert {c.column_stats for c in matrix if c.symmetric} == {"partials", "second_pass"}
    assert {c.column_stats for c in matrix if not c.symmetric} == {"partials"}   # the switch is not read there
    sweep_fwd = dict(TEACHER=0, LABELS_DIAG=True, COL_STATS=False)

    def sweeps(launches_):
        return [launch for launch in launches_ if _kernel(launch) == "_psd_fwd_kernel"
                and all(launch.constexpr(k) == v for k, v in sweep_fwd.items())]

    for saved in (None, "partials"):
        if saved is None:
            monkeypatch.delenv("PSD_TRITON_COLUMN_STATS", raising=False)
        else:
            monkeypatch.setenv("PSD_TRITON_COLUMN_STATS", saved)
        swept = _recorded(90, b=4097, d=512, teacher="self", column_stats="second_pass")
        assert os.environ.get("PSD_TRITON_COLUMN_STATS") == saved
    assert len(sweeps(swept)) == 2 * 4   # both sweeps, the four kept configs of a 64-wide forward
    assert not sweeps(_recorded(90, b=4097, d=512, teacher="self"))
    variants, _ = compile_check.collect((90,), ("bfloat16",), (4097,), (512,), ("self",))
    assert len(sweeps([v.launch for v in variants])) == 4
    assert all("COLUMN_STATS=second_pass" in v.example for v in variants if sweeps([v.launch]))


@compiled
def test_recorded_products_split_k_when_their_tiles_are_few():
    """B = 4097, D = 512 on 132 SMs: the dx product (and the first chunk's dy) has 33 x 4 = 132 output
    tiles of 128 x 128, half the 264 CTA slots at two per SM, so K splits in two over the grid's third
    axis; the split length stays divisible by 16. At B = 32768 dx has 128 x 4 tiles per chunk of
    16384 rows: no split."""
    gemm = [launch for launch in _recorded(90, b=4097, d=512, teacher="self")
            if _kernel(launch) == "_gemm_kernel" and _tile(launch) == (128, 128)]
    assert len(gemm) == 2 and {launch.programs for launch in gemm} == {33 * 4 * 2}
    assert all("k_split" in launch.attrs for launch in gemm)
    big = [launch for launch in _recorded(90, b=32768, d=512, teacher="self")
           if _kernel(launch) == "_gemm_kernel" and _tile(launch) == (128, 128)
           and launch.constexpr("stride_am") is None]  # dx: A (G) row-major
    assert big and {launch.programs for launch in big} == {128 * 4}


@compiled
@needs_ptxas
@pytest.mark.timeout(600)
def test_kept_configs_do_not_spill_and_run_on_the_tensor_cores():
    subset = dict(batches=(4097, 32768), dims=(500, 768), teachers=("separate", "self"), modes=("cross",), jobs=2)
    rows = compile_check.run(archs=(90, 100), dtypes=("bfloat16",), **subset)[0]
    rows += compile_check.run(archs=(80,), dtypes=("float16",), **subset)[0]
    assert {r["kernel"] for r in rows} == {"fwd", "grad", "gemm", "siglip_tile"}   # the sigmoid loss's tiles too
    bad = [f"{r['kernel']} sm_{r['arch']} {r['dtype']} {r['flags']} {r['config']}: {'; '.join(r['failures'])}"
           for r in rows if r["failures"]]
    assert not bad, "\n".join(bad)
    assert all(r["tc_dots"] >= r["dots"] > 0 and r["other_dots"] == 0 for r in rows)


@compiled
def test_teacher_cases_reach_the_kernels_as_plain_values():
    """The host compares teacher cases by value (kernels.TEACHER_* are tl.constexpr for the kernels):
    no recorded constexpr is a tl.constexpr object, and each case launches with its TEACHER value."""
    from psd_kernels.backends.triton import kernels
    for teacher, case in (("self", kernels.TEACHER_SELF), ("self_scaled", kernels.TEACHER_SELF_SCALED),
                          ("separate", kernels.TEACHER_SEPARATE)):
        recorded = _recorded(90, b=97, d=64, teacher=teacher, dt=64 if teacher == "separate" else 0)
        values = [value for launch in recorded for _, value in launch.constexprs]
        assert not any(isinstance(value, kernels.tl.constexpr) for value in values), values
        assert {launch.constexpr("TEACHER") for launch in recorded} - {None} == {case.value}
    # the within-modality call passes no teacher: the student's own embeddings of the other side reach
    # the kernels as a separate teacher of width D
    within = [c for c in launches.calls("bfloat16", batches=(97,), dims=(64, 512)) if c.mode == "within_modality"]
    assert within and {(c.teacher, c.dt == c.d) for c in within} == {("separate", True)}
    recorded = _recorded(90, b=97, d=64, teacher="separate", dt=64, mode="within_modality")
    assert {launch.constexpr("TEACHER") for launch in recorded} - {None} == {kernels.TEACHER_SEPARATE.value}
