"""The one prepared GPU check: every GPU backend against the reference, then speed and memory.

    python benchmarks/device_check.py [--out DIR] [--budget-s 400]          # on a CUDA machine
    python benchmarks/device_check.py --dry-run --out /tmp/dc              # CPU, TRITON_INTERPRET=1

Builds nothing (build the C++ extension first if it should be checked: `make device-check`
does). Needs only torch and triton: open_clip and inf_cl are used where importable, and
skipped with the reason otherwise. Stages, each case failing soft (an exception or OOM is
recorded and the next case runs); about 8 minutes in all with the default budget:

1. correctness: psd_loss / psd_clip_loss with backend="triton" and, when the C++
   extension has CUDA, backend="cpp", against the float64 reference on the same
   rounded inputs: fp32, bf16, fp16; every teacher case; awkward sizes (1, 7, 97,
   1025 rows, widths that are not powers of two); per-row alpha, labels, reduction
   "none" with random per-row upstream gradients. Autotuning is off here
   (PSD_TRITON_AUTOTUNE=0: the first config that fits) to save compiles.
2. the bf16 matmul rate, the peak the losses are measured against in the same run: an
   8192^3 torch.mm and x @ y^T at each benchmark shape.
3. forward + backward of the symmetric loss, bf16, B = 4096 .. 65536, D = 512, 768,
   timed with triton.testing.do_bench (median, p20, p80), peak memory. The providers
   are the CPU benchmark's (benchmarks/providers.py, one list): psd-triton (and, at
   D = 512 without a teacher, its variant [column sweep]), psd-cpp,
   openclip-clip (teacher none) and openclip-distill (ClipLoss + DistillClipLoss, a
   separate teacher of width D), inf-cl (teacher none, D a multiple of 256). Achieved
   TFLOP/s counts 6 B^2 D + 2 B^2 D' (providers.FLOP_FORMULA), recomputation not
   counted. The autotuned psd results are checked against an fp32 reference up to
   B = 16384.
4. B = 1,048,576, D = 512, one forward + backward with Triton: does it fit?

open_clip on a machine without it: a copy of its loss.py (it needs only torch) is used
from --open-clip-loss PATH (sets PSD_OPEN_CLIP_LOSS) or from .venv/lib/python3*/site-
packages/open_clip/loss.py when the repository's .venv came along.
Rows go to device_check.csv in --out (default: $OUT, else benchmarks/data) through the
CPU benchmark's row writer and schema (benchmark_psd_loss.append_csv, CSV_FIELDS;
metrics time / throughput / memory as there, plus max_rel_error for correctness), the
tables to device_check.md. Exit status 1 when a correctness case fails.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

DRY = "--dry-run" in sys.argv
if DRY:  # must precede the first import of triton
    os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import psd_kernels  # noqa: E402
from benchmark_psd_loss import CSV_FIELDS, append_csv  # noqa: E402
from providers import (FLOP_FORMULA, OPEN_CLIP_LOSS_ENV, SEPARATE_TEACHER_SCALE, STUDENT_SCALE, Case,  # noqa: E402
                       all_providers, make_inputs)
from psd_kernels.backends import available_backends  # noqa: E402
from psd_kernels.tools import against_reference  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Max error / max(|reference|, 0.05), the harness's tensor-core column (psd_kernels.tools.against_reference,
# shared with tests/test_triton.py and tests/test_cpp.py): fp32 accumulation; fp16/bf16 gradient
# products take G rounded to the input dtype.
TOL = {name: against_reference.tolerance(dtype, "tensor_cores") for name, dtype in DTYPES.items()}
TOL_AUTOTUNED_VS_FP32 = TOL["bf16"]  # bf16 inputs, fp32 reference on the same rounded inputs
# The timed providers, from the shared list (benchmarks/providers.py): the GPU backends and their peers.
GPU_PROVIDERS = ("psd-triton", "psd-cpp", "openclip-clip", "openclip-distill", "inf-cl")

# (op, sizes, teacher): one direction takes (M, N, D), the symmetric loss (B, D). Awkward
# sizes: 1, 7, 97 and 1025 rows, widths that are not powers of two.
GPU_CASES = [("psd_loss", (1, 7, 3), "self_scaled"), ("psd_loss", (7, 97, 100), "self"),
             ("psd_loss", (97, 1000, 100), "separate"), ("psd_loss", (1025, 777, 768), "separate"),
             ("psd_clip_loss", (1, 37), "self"), ("psd_clip_loss", (7, 100), "self"),
             ("psd_clip_loss", (97, 300), "separate"), ("psd_clip_loss", (1025, 520), "self_scaled"),
             ("psd_clip_loss", (4096, 768), "separate")]
DRY_CASES = [("psd_loss", (3, 70, 20), "separate"), ("psd_clip_loss", (19, 24), "self_scaled")]


class Recorder:
    """Rows in the benchmarks' CSV schema (CSV_FIELDS; config is JSON) plus markdown lines,
    printed as they come."""

    def __init__(self, device_name: str, version: str):
        self.rows, self.md = [], []
        self.device, self.version = device_name, version
        self.stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

    def row(self, op, provider, mode, metric, unit, x_name, x_value, p50, p20="", p80="", config=None):
        row = dict(op=op, provider=provider, mode=mode, metric=metric, unit=unit, x_name=x_name,
                   x_value=x_value, p50=p50, p20=p20, p80=p80, config=json.dumps(config or {}, sort_keys=True),
                   device=self.device, timestamp=self.stamp, version=self.version)
        assert tuple(row) == CSV_FIELDS
        self.rows.append(row)

    def line(self, text=""):
        print(text, flush=True)
        self.md.append(text)

    def write(self, out: Path) -> Path:
        path = append_csv(self.rows, str(out), "device_check.csv")
        (out / "device_check.md").write_text("\n".join(self.md) + "\n")
        return Path(path)


def _unit(n, d, dtype, device):
    return F.normalize(torch.randn(n, d, device=device, dtype=torch.float32), dim=1).to(dtype)


def _short(exc: BaseException) -> str:
    if isinstance(exc, torch.OutOfMemoryError):
        return "OOM"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:90] if str(exc) else ''}"


def _free():
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- stage 1: correctness
def _case_inputs(op, sizes, teacher, dtype, device):
    """Inputs and keyword arguments of one correctness case (fresh random values)."""
    if op == "psd_loss":
        m, n, d = sizes
        kw = dict(alpha=torch.rand(m, device=device), labels=torch.randint(0, n, (m,), device=device))
        names = ("teacher_x", "teacher_y")
        upstream = torch.randn(m, device=device)
    else:
        m, d = sizes
        n = m
        kw = dict(alpha_image=torch.rand(m, device=device), alpha_text=0.3)
        names = ("teacher_image", "teacher_text")
        upstream = torch.randn(2, m, device=device)
    if teacher == "self_scaled":
        kw["teacher_scale"] = 0.5 * STUDENT_SCALE
    elif teacher == "separate":
        kw.update({names[0]: _unit(m, 48, dtype, device), names[1]: _unit(n, 48, dtype, device),
                   "teacher_scale": SEPARATE_TEACHER_SCALE})
    x, y = _unit(m, d, dtype, device), _unit(n, d, dtype, device)
    return x, y, kw, upstream


def _loss_and_grads(op, backend, x, y, kw, upstream, to64=False):
    s = torch.tensor(STUDENT_SCALE, device=x.device)
    return against_reference.loss_and_grads(op, backend, x, y, s, kw, upstream, "none", float64=to64)


def check_correctness(rec, device, cases, budget_end):
    rec.line("## Correctness against the float64 reference (max error / max |reference|)")
    rec.line()
    rec.line("| backend | op | sizes | dtype | teacher | loss | dx | dy | dscale | tol | status |")
    rec.line("|---|---|---|---|---|---|---|---|---|---|---|")
    failures = 0
    os.environ["PSD_TRITON_AUTOTUNE"] = "0"
    for dname, dtype in DTYPES.items():
        backends = [b for b, why in available_backends(device, dtype).items()
                    if b in ("triton", "cpp") and why is None]
        for backend in backends:
            for op, sizes, teacher in cases:
                label = "x".join(map(str, sizes))
                if time.monotonic() > budget_end:
                    rec.line(f"| {backend} | {op} | {label} | {dname} | {teacher} | | | | | | skipped (time) |")
                    continue
                errs = []
                try:
                    x, y, kw, up = _case_inputs(op, sizes, teacher, dtype, device)
                    got = _loss_and_grads(op, backend, x, y, kw, up)
                    want = _loss_and_grads(op, "reference", x, y, kw, up, to64=True)
                    dtypes_ok = against_reference.dtypes_ok(got, dtype)
                    errs = against_reference.errors(got, want)
                    ok = dtypes_ok and all(e <= TOL[dname] for e in errs)
                    status = "ok" if ok else ("FAIL" if dtypes_ok else "FAIL (dtype)")
                    cells = " | ".join(f"{e:.1e}" for e in errs)
                except Exception as exc:  # fail soft: record and go on
                    ok, status, cells = False, f"FAIL {_short(exc)}", " | | | "
                failures += not ok
                rec.line(f"| {backend} | {op} | {label} | {dname} | {teacher} | {cells} | {TOL[dname]:.0e} "
                         f"| {status} |")
                rec.row("psd_correctness", f"psd-{backend}", "full", "max_rel_error", "ratio", "case",
                        f"{op}:{label}", max(errs) if errs else "",
                        config=dict(dtype=dname, teacher=teacher, status=status))
                _free()
    os.environ["PSD_TRITON_AUTOTUNE"] = "1"
    rec.line()
    return failures


# ---------------------------------------------------------------- timing helpers
def _bench(fn, dry):
    """(p50, p20, p80) in ms: triton.testing.do_bench on CUDA, perf_counter quantiles on CPU."""
    if not dry:
        from triton.testing import do_bench
        return tuple(do_bench(fn, warmup=25, rep=100, quantiles=[0.5, 0.2, 0.8]))
    fn()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t0))
    q = statistics.quantiles(times, n=10, method="inclusive")
    return statistics.median(times), q[1], q[7]


def _peak_gib(fn, device) -> float | str:
    if device.type != "cuda":
        return ""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**30


# ---------------------------------------------------------------- stage 2: matmul rate
def matmul_rates(rec, device, shapes, dry):
    """bf16 TFLOP/s of a square product and of x @ y^T at each (B, D)."""
    rec.line("## bf16 matmul rate (torch.matmul)")
    rec.line()
    rec.line("| product | p50 ms | TFLOP/s |")
    rec.line("|---|---|---|")
    rates = {}
    square = 256 if dry else 8192
    todo = [("square", square, square)] + [("xyT", b, d) for b, d in shapes]
    for kind, b, d in todo:
        try:
            if kind == "square":
                a = torch.randn(b, b, device=device, dtype=torch.bfloat16)
                c = torch.randn(b, b, device=device, dtype=torch.bfloat16)
                flops = 2.0 * b ** 3
                name = f"{b}^3"
                fn = lambda: a @ c  # noqa: E731
            else:
                a = torch.randn(b, d, device=device, dtype=torch.bfloat16)
                flops = 2.0 * b * b * d
                name = f"({b}x{d}) @ ({d}x{b})"
                fn = lambda: a @ a.T  # noqa: E731
            p50, p20, p80 = _bench(fn, dry)
            tf = flops / (p50 * 1e-3) / 1e12
            rates[(kind, b, d)] = tf
            rec.line(f"| {name} | {p50:.3f} | {tf:.0f} |")
            rec.row("matmul_bf16", "torch", "forward", "throughput", "TFLOP/s", "shape", name, tf,
                    flops / (p80 * 1e-3) / 1e12, flops / (p20 * 1e-3) / 1e12, dict(dtype="bfloat16"))
        except Exception as exc:
            rec.line(f"| {kind} {b}x{d} | {_short(exc)} | |")
        finally:
            a = c = None
            _free()
    rec.line()
    return rates


# ---------------------------------------------------------------- stage 3: providers
def gpu_providers(device, variants):
    """The timed providers (GPU_PROVIDERS, the psd-triton variants when `variants`) from the
    shared list, and {name: why it cannot run here} for the others of GPU_PROVIDERS."""
    providers, skipped = all_providers(device, torch.bfloat16, variants=variants)
    chosen = [p for p in providers if p.name.split(" ")[0] in GPU_PROVIDERS]
    return chosen, {name: why for name, why in skipped.items() if name in GPU_PROVIDERS}


def benchmark(rec, device, batches, dims, rates, dry, budget_end):
    rec.line("## Forward + backward of the symmetric loss, bf16")
    rec.line()
    rec.line(f"FLOPs counted: {FLOP_FORMULA}. % matmul: of the bf16 x @ y^T rate at that shape. Baseline of "
             "the speed-up: open_clip (ClipLoss, or ClipLoss + DistillClipLoss with the teacher).")
    rec.line()
    _, skipped = gpu_providers(device, False)
    for name, why in skipped.items():
        rec.line(f"- {name} not run: {why}")
    rec.line()
    told = set()  # (provider, reason) already printed
    rec.line("| B | D | teacher | provider | p50 ms | p20 ms | p80 ms | TFLOP/s | % matmul | peak GiB | "
             "x faster than open_clip | check vs fp32 ref |")
    rec.line("|---|---|---|---|---|---|---|---|---|---|---|---|")
    results = {}
    last = {}  # (provider, D, teacher) -> (B, p50 ms) of its previous point, to foresee the next
    for d in dims:
        for b in batches:
            for teacher in ("none", "separate"):
                case = Case(b, d, teacher, "bfloat16")
                inputs = None  # made once per point, on first use: the same inputs for every provider
                times = {}
                providers, _ = gpu_providers(device, variants=teacher == "none" and d == dims[0])
                for provider in providers:
                    name = provider.name
                    why = provider.unavailable(case, device)
                    if why is not None:
                        if (name, why) not in told:
                            told.add((name, why))
                            rec.line(f"| {b} | {d} | {teacher} | {name} | not run: {why} | | | | | | | |")
                        continue
                    prev = last.get((name, d, teacher))
                    # do_bench runs >= ~10 calls; the cost grows as B^2
                    foreseen = 10e-3 * prev[1] * (b / prev[0]) ** 2 if prev else 0.0
                    if time.monotonic() + foreseen > budget_end:
                        rec.line(f"| {b} | {d} | {teacher} | {name} | skipped (time budget) | | | | | | | |")
                        continue
                    if inputs is None:
                        inputs = make_inputs(case, device)
                    cells = _bench_one(rec, device, case, inputs, provider, rates, dry)
                    times[name] = cells
                    if cells:
                        last[(name, d, teacher)] = (b, cells["p50"])
                    _free()
                base = next((v["p50"] for k, v in times.items() if k.startswith("openclip") and v), None)
                for name, cells in times.items():
                    if not cells:
                        continue
                    speed = f"{base / cells['p50']:.2f}" if base and not name.startswith("openclip") else ""
                    rec.line(f"| {b} | {d} | {teacher} | {name} | {cells['p50']:.3f} | {cells['p20']:.3f} | "
                             f"{cells['p80']:.3f} | {cells['tflops']:.0f} | {cells['pct']} | {cells['peak']} | "
                             f"{speed} | {cells['check']} |")
                    results[(b, d, teacher, name)] = dict(cells, speedup=base / cells["p50"] if base else None)
    rec.line()
    return results


def _bench_one(rec, device, case, inputs, provider, rates, dry):
    """Time one provider at one point; returns its cells, or {} after recording the failure."""
    b, d, name = case.batch, case.dim, provider.name
    config = dict(case.config(), timer="triton.testing.do_bench" if not dry else "perf_counter")
    try:
        fn = provider.build(case)
        leaves = (inputs["image"], inputs["text"], inputs["scale"])

        def step():
            return torch.autograd.grad(fn(inputs), leaves)

        check = _check_autotuned(case, inputs, fn) if not name.startswith("openclip") and b <= 16384 else ""
        p50, p20, p80 = _bench(step, dry)
        peak = _peak_gib(step, device)
        flops = case.flops("full")
        tflops = flops / (p50 * 1e-3) / 1e12
        mm = rates.get(("xyT", b, d))
        pct = f"{100 * tflops / mm:.0f}%" if mm else ""
        rec.row("psd_clip_loss", name, "full", "time", "ms", "B", b, p50, p20, p80, config)
        rec.row("psd_clip_loss", name, "full", "throughput", "TFLOP/s", "B", b, tflops,
                flops / (p80 * 1e-3) / 1e12, flops / (p20 * 1e-3) / 1e12, config)
        if peak != "":
            mib = peak * 1024
            rec.row("psd_clip_loss", name, "full", "memory", "MiB", "B", b, mib, mib, mib,
                    dict(case.config(), method="torch.cuda.max_memory_allocated() minus memory_allocated() "
                                               "before the call"))
        return dict(p50=p50, p20=p20, p80=p80, tflops=tflops, pct=pct,
                    peak=f"{peak:.2f}" if peak != "" else "", check=check)
    except Exception as exc:  # OOM or a broken provider: record, go on
        rec.line(f"| {b} | {d} | {case.teacher} | {name} | {_short(exc)} | | | | | | | |")
        gib = float("nan")
        rec.row("psd_clip_loss", name, "full", "oom" if isinstance(exc, torch.OutOfMemoryError) else "error",
                "GiB", "B", b, gib, gib, gib, dict(case.config(), message=_short(exc)))
        return {}


def _check_autotuned(case, inputs, fn):
    """A psd provider (autotuned) or Inf-CL against the fp32 reference on the same bf16 inputs."""
    try:
        leaves = (inputs["image"], inputs["text"], inputs["scale"])
        loss = fn(inputs)
        got = [g.float() for g in (loss.detach(),) + torch.autograd.grad(loss, leaves)]
        xf = inputs["image"].detach().float().requires_grad_()
        yf = inputs["text"].detach().float().requires_grad_()
        sf = inputs["scale"].detach().clone().requires_grad_()
        kw = {}
        if case.teacher == "separate":
            kw = dict(teacher_image=inputs["teacher_image"].float(), teacher_text=inputs["teacher_text"].float(),
                      teacher_scale=inputs["teacher_scale"])
        ref = psd_kernels.psd_clip_loss(xf, yf, sf, alpha_image=case.alpha, backend="reference", **kw)
        want = [ref.detach()] + list(torch.autograd.grad(ref, (xf, yf, sf)))
        worst = max(against_reference.errors(got, want))
        return f"{worst:.1e} {'ok' if worst <= TOL_AUTOTUNED_VS_FP32 else 'FAIL'}"
    except Exception as exc:
        return f"FAIL {_short(exc)}"
    finally:
        _free()


# ---------------------------------------------------------------- stage 4: one million
def million(rec, device, b, d, latest_start, tuned):
    """One forward + backward at a huge batch: finite results and the peak memory, or why not.

    Tuning at this size would take minutes, so unless the capped autotune key (B = 65536,
    same D) was already tuned by stage 3, the first config that fits is used.
    """
    rec.line(f"## B = {b:,}, D = {d}: one forward + backward with backend='triton' (bf16, no teacher)")
    rec.line()
    if time.monotonic() > latest_start:
        rec.line("skipped: time budget spent")
        return None
    if not tuned:
        os.environ["PSD_TRITON_AUTOTUNE"] = "0"
    try:
        x = _unit(b, d, torch.bfloat16, device).requires_grad_()
        y = _unit(b, d, torch.bfloat16, device).requires_grad_()
        s = torch.tensor(STUDENT_SCALE, device=device, requires_grad=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() if device.type == "cuda" else 0
        t0 = time.perf_counter()
        loss = psd_kernels.psd_clip_loss(x, y, s, backend="triton")
        grads = torch.autograd.grad(loss, (x, y, s))
        if device.type == "cuda":
            torch.cuda.synchronize()
        secs = time.perf_counter() - t0
        finite = bool(torch.isfinite(loss)) and all(bool(torch.isfinite(g).all()) for g in grads)
        peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if device.type == "cuda" else float("nan")
        inputs = 2 * b * d * 2 / 2**30
        rec.line(f"fits: loss {loss.item():.4f} (log B = {math.log(b):.4f}), finite={finite}, "
                 f"{secs:.1f} s, peak extra memory {peak:.2f} GiB (nan: not measured on CPU) beyond the "
                 f"{inputs:.2f} GiB of inputs "
                 f"({6.0 * b * b * d / secs / 1e12:.0f} TFLOP/s counted; autotuned: {tuned})")
        config = dict(Case(b, d, "none", "bfloat16").config(), reps=1, warmup=0, finite=finite,
                      autotuned=tuned)
        rec.row("psd_clip_loss", "psd-triton", "full", "time", "ms", "B", b, 1e3 * secs, 1e3 * secs, 1e3 * secs,
                config)
        rec.row("psd_clip_loss", "psd-triton", "full", "memory", "MiB", "B", b, 1024 * peak, 1024 * peak,
                1024 * peak, config)
        rec.line()
        return finite
    except Exception as exc:
        rec.line(f"does not fit or fails: {_short(exc)}")
        rec.line()
        return False
    finally:
        os.environ["PSD_TRITON_AUTOTUNE"] = "1"
        x = y = None
        _free()


def tuned_configs(rec):
    """What the autotuner picked, per key (swept length bucket, D, D', teacher, ..., dtypes)."""
    from triton.runtime.autotuner import Autotuner

    from psd_kernels.backends.triton import kernels as triton_kernels
    rec.line("## Autotuned configs")
    rec.line()
    picks = [(name, key, config) for name, kernel in vars(triton_kernels).items() if isinstance(kernel, Autotuner)
             for key, config in kernel.cache.items()]
    for name, key, config in picks:
        rec.line(f"- {name} {key}: {config}")
    if not picks:
        rec.line("none (a single config each, as under the interpreter)")
    rec.line()


def targets(rec, results, rates, fits, b, d, big):
    rec.line("## Targets (default psd-triton variant)")
    rec.line()
    tri = results.get((b, d, "none", "psd-triton"))
    mm = rates.get(("xyT", b, d))
    if tri and mm:
        rec.line(f"- >= 50% of the bf16 matmul rate at B={b}, D={d}: {100 * tri['tflops'] / mm:.0f}% "
                 f"({tri['tflops']:.0f} of {mm:.0f} TFLOP/s) -> {'met' if tri['tflops'] >= 0.5 * mm else 'NOT met'}")
    else:
        rec.line(f"- matmul-rate target at B={b}, D={d}: not measured")
    if tri and tri.get("speedup"):
        rec.line(f"- >= 3x faster than open_clip's ClipLoss at B={b}, D={d}: {tri['speedup']:.2f}x -> "
                 f"{'met' if tri['speedup'] >= 3 else 'NOT met'}")
    else:
        rec.line(f"- speed-up target at B={b}, D={d}: not measured")
    rec.line(f"- B = {big[0]:,}, D = {big[1]} fits on one GPU: "
             f"{'not run' if fits is None else ('met' if fits else 'NOT met')}")
    rec.line()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or str(Path(__file__).parent / "data"))
    parser.add_argument("--budget-s", type=float, default=400.0,
                        help="start no new case after this many seconds (correctness gets the first "
                             "45%%); the one-million case may start up to 30 s later")
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU tensors under TRITON_INTERPRET=1 at tiny sizes: checks the logic only")
    parser.add_argument("--open-clip-loss", default=None, help="path to a copy of open_clip/loss.py if "
                        f"open_clip itself cannot be imported (sets {OPEN_CLIP_LOSS_ENV})")
    args = parser.parse_args(argv)
    if args.open_clip_loss:
        os.environ[OPEN_CLIP_LOSS_ENV] = args.open_clip_loss
    start = time.monotonic()
    end = start + args.budget_s
    if args.dry_run:
        device = torch.device("cpu")
        device_name = "cpu (TRITON_INTERPRET=1 dry run)"
        cases, batches, dims, big, target_b = DRY_CASES, (32,), (16,), (64, 16), 32
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: run with --dry-run on a CPU")
            return 2
        device = torch.device("cuda")
        device_name = torch.cuda.get_device_name()
        cases, batches, dims = GPU_CASES, (4096, 16384, 32768, 65536), (512, 768)
        big, target_b = (1 << 20, 512), 32768
    import triton
    version = f"torch {torch.__version__}; triton {triton.__version__}"
    rec = Recorder(device_name, version)
    rec.line(f"# psd device check: {device_name}; {version}; {rec.stamp}")
    rec.line()
    rec.line("backends (bf16): " + ", ".join(f"{k}: {v or 'usable'}"
                                            for k, v in available_backends(device, torch.bfloat16).items()))
    rec.line()
    torch.manual_seed(0)
    failures = check_correctness(rec, device, cases, start + 0.45 * args.budget_s)
    rates = matmul_rates(rec, device, [(b, d) for d in dims for b in batches], args.dry_run)
    results = benchmark(rec, device, batches, dims, rates, args.dry_run, end)
    fits = million(rec, device, *big, end + 30, tuned=(batches[-1], big[1], "none", "psd-triton") in results)
    tuned_configs(rec)
    targets(rec, results, rates, fits, target_b, dims[0], big)
    rec.line(f"total {time.monotonic() - start:.0f} s; correctness failures: {failures}")
    path = rec.write(Path(args.out))
    print(f"appended rows to {path}; wrote {path.parent / 'device_check.md'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
