"""The one prepared GPU check: every GPU backend against the reference, then speed and memory.

    python benchmarks/device_check.py [--out DIR] [--budget-s 450]          # on a CUDA machine
    python benchmarks/device_check.py --dry-run --out /tmp/dc              # CPU, TRITON_INTERPRET=1

Builds nothing (build the C++ extension first if it should be checked). Stages, each
case failing soft (an exception or OOM is recorded and the next case runs):

1. correctness: psd_loss / psd_clip_loss with backend="triton" and, when the C++
   extension has CUDA, backend="cpp", against the float64 reference on the same
   rounded inputs: fp32, bf16, fp16; every teacher case; odd sizes; per-row alpha,
   labels, reduction "none" with random per-row upstream gradients. Autotuning is
   off here (PSD_TRITON_AUTOTUNE=0: the first config that fits) to save compiles.
2. the bf16 matmul rate: an 8192^3 product and x @ y^T at each benchmark shape.
3. forward + backward of the symmetric loss, bf16, B = 4096 .. 65536, D = 512, 768,
   timed with triton.testing.do_bench (median, p20, p80), peak memory, side by side
   with open_clip's ClipLoss (plain CLIP, alpha = 0) and ClipLoss + DistillClipLoss
   (a separate teacher of width D, alpha = 0.5). Achieved TFLOP/s counts
   6 B^2 D for the student + 2 B^2 D' for a separate teacher, recomputation not
   counted. The autotuned Triton results are checked against an fp32 reference
   up to B = 16384.
   The Triton variants are timed side by side at D = 512 without a teacher (the
   design's "measure and choose"): the default (one forward sweep with per-group
   column partials, a backward kernel per side), [column sweep] (a second forward
   sweep for the column statistics) and [atomic bwd] (one backward kernel, the
   column side's gradient added atomically).
4. B = 1,048,576, D = 512, one forward + backward with Triton: does it fit?

When open_clip cannot be imported (the GPU machine may lack it), its loss.py (which
needs only torch) is loaded from --open-clip-loss PATH or from a carried copy at
.venv/lib/python3*/site-packages/open_clip/loss.py; failing both, the same math
written here is timed (logits s x y^T and its transpose, two cross-entropies, plus
the teacher-softmax cross-entropies for the distillation case), marked so.
Writes device_check.csv (schema of benchmarks/data) and device_check.md to --out
(default: $OUT, else benchmarks/data) and prints the tables. Exit status 1 when a
correctness case fails.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import importlib.util
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
from psd_kernels.backends import available_backends  # noqa: E402

SCHEMA = ("op", "provider", "mode", "metric", "unit", "x_name", "x_value", "p50", "p20", "p80",
          "config", "device", "timestamp", "version")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Max error / max |reference|, as in tests/test_triton.py: fp32 accumulation; fp16/bf16
# gradient products take G rounded to the input dtype.
TOL = {"fp32": 2e-5, "fp16": 4e-3, "bf16": 3e-2}
TOL_AUTOTUNED_VS_FP32 = 3e-2  # bf16 inputs, fp32 reference on the same rounded inputs
STUDENT_SCALE = 1.0 / 0.07
TEACHER_SCALE = 20.0

# (op, sizes, teacher): one direction takes (M, N, D), the symmetric loss (B, D).
GPU_CASES = [("psd_loss", (1, 7, 3), "self_scaled"), ("psd_loss", (97, 1000, 100), "self"),
             ("psd_loss", (1025, 777, 768), "separate"), ("psd_clip_loss", (7, 100), "self"),
             ("psd_clip_loss", (1025, 512), "self_scaled"), ("psd_clip_loss", (4096, 768), "separate")]
DRY_CASES = [("psd_loss", (3, 70, 20), "separate"), ("psd_clip_loss", (19, 24), "self_scaled")]


class Recorder:
    """Rows in the fixed CSV schema plus markdown lines, printed as they come."""

    def __init__(self, device_name: str, version: str):
        self.rows, self.md = [], []
        self.device, self.version = device_name, version
        self.stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

    def row(self, op, provider, mode, metric, unit, x_name, x_value, p50, p20="", p80="", config=""):
        self.rows.append(dict(op=op, provider=provider, mode=mode, metric=metric, unit=unit, x_name=x_name,
                              x_value=x_value, p50=p50, p20=p20, p80=p80, config=config, device=self.device,
                              timestamp=self.stamp, version=self.version))

    def line(self, text=""):
        print(text, flush=True)
        self.md.append(text)

    def write(self, out: Path):
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "device_check.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=SCHEMA)
            writer.writeheader()
            writer.writerows(self.rows)
        (out / "device_check.md").write_text("\n".join(self.md) + "\n")


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
                   "teacher_scale": TEACHER_SCALE})
    x, y = _unit(m, d, dtype, device), _unit(n, d, dtype, device)
    return x, y, kw, upstream


def _loss_and_grads(op, backend, x, y, kw, upstream, to64=False):
    if to64:
        x, y = x.double(), y.double()
        kw = {k: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in kw.items()}
    x, y = x.detach().requires_grad_(), y.detach().requires_grad_()
    s = torch.tensor(STUDENT_SCALE, device=x.device, dtype=torch.float64 if to64 else torch.float32,
                     requires_grad=True)
    loss = getattr(psd_kernels, op)(x, y, s, reduction="none", backend=backend, **kw)
    grads = torch.autograd.grad((loss * upstream.to(loss.dtype)).sum(), (x, y, s))
    return (loss.detach(),) + tuple(g.detach() for g in grads)


def _rel_errors(got, want):
    errs = []
    for a, e in zip(got, want):
        a, e = a.double(), e.double()
        errs.append(((a - e).abs().max() / max(e.abs().max().item(), 0.05)).item())
    return errs


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
                    dtypes_ok = got[1].dtype == dtype and got[2].dtype == dtype and got[0].dtype == torch.float32
                    errs = _rel_errors(got, want)
                    ok = dtypes_ok and all(e <= TOL[dname] for e in errs)
                    status = "ok" if ok else ("FAIL" if dtypes_ok else "FAIL (dtype)")
                    cells = " | ".join(f"{e:.1e}" for e in errs)
                except Exception as exc:  # fail soft: record and go on
                    ok, status, cells = False, f"FAIL {_short(exc)}", " | | | "
                failures += not ok
                rec.line(f"| {backend} | {op} | {label} | {dname} | {teacher} | {cells} | {TOL[dname]:.0e} "
                         f"| {status} |")
                rec.row("psd_correctness", f"psd-{backend}", "full", "max_rel_error", "ratio", "case",
                        f"{op}:{label}", max(errs) if errs else "", "", "",
                        f"dtype={dname};teacher={teacher};status={status}")
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
            rec.row("matmul_bf16", "torch", "forward", "tflops", "TFLOP/s", "shape", name, tf,
                    flops / (p80 * 1e-3) / 1e12, flops / (p20 * 1e-3) / 1e12)
        except Exception as exc:
            rec.line(f"| {kind} {b}x{d} | {_short(exc)} | |")
        finally:
            a = c = None
            _free()
    rec.line()
    return rates


# ---------------------------------------------------------------- stage 3: providers
def _load_open_clip(path: str | None):
    """(ClipLoss, DistillClipLoss, provenance) from open_clip, a given loss.py, or None."""
    try:
        from open_clip.loss import ClipLoss, DistillClipLoss
        return ClipLoss, DistillClipLoss, "open_clip"
    except Exception as exc:  # open_clip missing or its optional imports fail
        reason = _short(exc)
    if not path:  # a copy of the file carried along in the project's virtual environment
        found = sorted(Path(__file__).resolve().parents[1].glob(".venv/lib/python3*/site-packages/open_clip/loss.py"))
        path = str(found[0]) if found else None
    if path:
        spec = importlib.util.spec_from_file_location("open_clip_loss_file", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod.ClipLoss, mod.DistillClipLoss, f"open_clip loss.py at {path}"
    print(f"open_clip not importable ({reason}); timing the ClipLoss math written here instead")
    return None, None, "materialised here (open_clip not importable)"


def _materialised_clip(x, y, s):
    """open_clip ClipLoss's math: logits both ways, mean of two cross-entropies."""
    labels = torch.arange(x.shape[0], device=x.device)
    return 0.5 * (F.cross_entropy(s * x @ y.T, labels) + F.cross_entropy(s * y @ x.T, labels))


def _materialised_distill(x, y, s, tx, ty):
    """open_clip ClipLoss + DistillClipLoss's math: the contrastive loss plus, both ways,
    the cross-entropy of the student's log-softmax under the teacher's softmax."""
    def soft_ce(teacher_logits, student_logits):
        return -(teacher_logits.softmax(dim=1) * student_logits.log_softmax(dim=1)).sum(dim=1).mean()

    img, txt = s * x @ y.T, s * y @ x.T
    t_img, t_txt = TEACHER_SCALE * tx @ ty.T, TEACHER_SCALE * ty @ tx.T
    labels = torch.arange(x.shape[0], device=x.device)
    contrastive = 0.5 * (F.cross_entropy(img, labels) + F.cross_entropy(txt, labels))
    return contrastive + 0.5 * (soft_ce(t_img, img) + soft_ce(t_txt, txt))


# Triton variants measured side by side (the "measure and choose" of the design):
# the default is one forward sweep with column partials and a backward kernel per side.
TRITON_VARIANTS = {"psd-triton": {},
                   "psd-triton [column sweep]": {"PSD_TRITON_COLUMN_STATS": "sweep"},
                   "psd-triton [atomic bwd]": {"PSD_TRITON_BACKWARD": "atomic"}}


def _psd(backend, teacher):
    if teacher == "none":
        return lambda x, y, s, tx, ty: psd_kernels.psd_clip_loss(x, y, s, backend=backend)
    return lambda x, y, s, tx, ty: psd_kernels.psd_clip_loss(
        x, y, s, teacher_image=tx, teacher_text=ty, teacher_scale=TEACHER_SCALE, alpha_image=0.5,
        backend=backend)


def providers(clip_cls, distill_cls, teacher, variants):
    """name -> (f(x, y, s, tx, ty) returning the loss to differentiate, environment to set)."""
    out = {name: (_psd("triton", teacher), env) for name, env in TRITON_VARIANTS.items()
           if variants or not env}
    out["psd-cpp"] = (_psd("cpp", teacher), {})
    if teacher == "none":
        if clip_cls is not None:
            clip = clip_cls()
            out["open_clip ClipLoss"] = (lambda x, y, s, tx, ty: clip(x, y, s), {})
        else:
            out["ClipLoss math (materialised)"] = (lambda x, y, s, tx, ty: _materialised_clip(x, y, s), {})
    elif clip_cls is not None:
        distill = distill_cls()
        t_scale = torch.tensor(TEACHER_SCALE)

        def open_clip_distill(x, y, s, tx, ty):
            c, d = distill(x, y, s, tx, ty, t_scale.to(x.device))
            return c + d
        out["open_clip ClipLoss+DistillClipLoss"] = (open_clip_distill, {})
    else:
        out["ClipLoss+DistillClipLoss math (materialised)"] = (_materialised_distill, {})
    return out


def benchmark(rec, device, batches, dims, rates, clip_cls, distill_cls, provenance, dry, budget_end):
    rec.line("## Forward + backward of the symmetric loss, bf16")
    rec.line()
    rec.line(f"Baseline: {provenance}. FLOPs counted: 6 B^2 D (student) + 2 B^2 D' (separate teacher, D' = D); "
             "recomputation not counted. % matmul: of the bf16 x @ y^T rate at that shape.")
    rec.line()
    rec.line("| B | D | teacher | provider | p50 ms | p20 ms | p80 ms | TFLOP/s | % matmul | peak GiB | "
             "x faster than open_clip | check vs fp32 ref |")
    rec.line("|---|---|---|---|---|---|---|---|---|---|---|---|")
    usable = {b for b in ("triton", "cpp") if available_backends(device, torch.bfloat16)[b] is None}
    results = {}
    last = {}  # (provider, D, teacher) -> (B, p50 ms) of its previous point, to foresee the next
    for d in dims:
        for b in batches:
            for teacher in ("none", "separate"):
                times = {}
                variants = teacher == "none" and d == dims[0]
                for name, (fn, env) in providers(clip_cls, distill_cls, teacher, variants).items():
                    if name.startswith("psd-") and name[4:].split(" ")[0] not in usable:
                        continue
                    prev = last.get((name, d, teacher))
                    # do_bench runs >= ~10 calls; the cost grows as B^2
                    foreseen = 10e-3 * prev[1] * (b / prev[0]) ** 2 if prev else 0.0
                    if time.monotonic() + foreseen > budget_end:
                        rec.line(f"| {b} | {d} | {teacher} | {name} | skipped (time budget) | | | | | | | |")
                        continue
                    cells = _bench_one(rec, device, b, d, teacher, name, fn, env, rates, dry)
                    times[name] = cells
                    if cells:
                        last[(name, d, teacher)] = (b, cells["p50"])
                    _free()
                base = next((v["p50"] for k, v in times.items() if k.startswith(("open_clip", "ClipLoss"))
                             and v), None)
                for name, cells in times.items():
                    if not cells:
                        continue
                    speed = f"{base / cells['p50']:.2f}" if base and name.startswith("psd-") else ""
                    rec.line(f"| {b} | {d} | {teacher} | {name} | {cells['p50']:.3f} | {cells['p20']:.3f} | "
                             f"{cells['p80']:.3f} | {cells['tflops']:.0f} | {cells['pct']} | {cells['peak']} | "
                             f"{speed} | {cells['check']} |")
                    results[(b, d, teacher, name)] = dict(cells, speedup=base / cells["p50"] if base else None)
    rec.line()
    return results


def _bench_one(rec, device, b, d, teacher, name, fn, env, rates, dry):
    """Time one provider at one point; returns its cells, or {} after recording the failure."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        x, y = _unit(b, d, torch.bfloat16, device), _unit(b, d, torch.bfloat16, device)
        x.requires_grad_()
        y.requires_grad_()
        s = torch.tensor(STUDENT_SCALE, device=device, requires_grad=True)
        tx = ty = None
        if teacher == "separate":
            tx, ty = _unit(b, d, torch.bfloat16, device), _unit(b, d, torch.bfloat16, device)

        def step():
            return torch.autograd.grad(fn(x, y, s, tx, ty), (x, y, s))

        check = _check_autotuned(x, y, s, tx, ty, fn, teacher) if name.startswith("psd-") and b <= 16384 else ""
        p50, p20, p80 = _bench(step, dry)
        peak = _peak_gib(step, device)
        flops = 6.0 * b * b * d + (2.0 * b * b * d if teacher == "separate" else 0.0)
        tflops = flops / (p50 * 1e-3) / 1e12
        mm = rates.get(("xyT", b, d))
        pct = f"{100 * tflops / mm:.0f}%" if mm else ""
        config = f"D={d};teacher={teacher};dtype=bf16;flops=6B^2D+2B^2D'"
        rec.row("psd_clip_loss", name, "full", "time", "ms", "B", b, p50, p20, p80, config)
        rec.row("psd_clip_loss", name, "full", "tflops", "TFLOP/s", "B", b, tflops,
                flops / (p80 * 1e-3) / 1e12, flops / (p20 * 1e-3) / 1e12, config)
        if peak != "":
            rec.row("psd_clip_loss", name, "full", "peak_memory", "GiB", "B", b, peak, "", "", config)
        return dict(p50=p50, p20=p20, p80=p80, tflops=tflops, pct=pct,
                    peak=f"{peak:.2f}" if peak != "" else "", check=check)
    except Exception as exc:  # OOM or a broken backend: record, go on
        rec.line(f"| {b} | {d} | {teacher} | {name} | {_short(exc)} | | | | | | | |")
        rec.row("psd_clip_loss", name, "full", "time", "ms", "B", b, "", "", "",
                f"D={d};teacher={teacher};dtype=bf16;error={_short(exc)}")
        return {}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _check_autotuned(x, y, s, tx, ty, fn, teacher):
    """The tuned Triton path against the fp32 reference on the same bf16 inputs."""
    try:
        got = [g.float() for g in (fn(x, y, s, tx, ty).detach(),) + torch.autograd.grad(fn(x, y, s, tx, ty),
                                                                                          (x, y, s))]
        xf, yf = x.detach().float().requires_grad_(), y.detach().float().requires_grad_()
        sf = s.detach().clone().requires_grad_()
        kw = {}
        if teacher == "separate":
            kw = dict(teacher_image=tx.float(), teacher_text=ty.float(), teacher_scale=TEACHER_SCALE,
                      alpha_image=0.5)
        ref = psd_kernels.psd_clip_loss(xf, yf, sf, backend="reference", **kw)
        want = [ref.detach()] + list(torch.autograd.grad(ref, (xf, yf, sf)))
        worst = max(_rel_errors(got, want))
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
        rec.row("psd_clip_loss", "psd-triton", "full", "time_single", "s", "B", b, secs, "", "",
                f"D={d};teacher=none;dtype=bf16;finite={finite}")
        rec.row("psd_clip_loss", "psd-triton", "full", "peak_memory", "GiB", "B", b, peak, "", "",
                f"D={d};teacher=none;dtype=bf16")
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
    from psd_kernels import triton_kernels
    rec.line("## Autotuned configs")
    rec.line()
    picks = [(name, key, config) for name in ("_psd_fwd_kernel", "_psd_bwd_kernel")
             for key, config in getattr(triton_kernels, name).cache.items()]
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
    parser.add_argument("--open-clip-loss", default=None, help="path to open_clip/loss.py if open_clip "
                        "itself cannot be imported")
    args = parser.parse_args(argv)
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
    clip_cls, distill_cls, provenance = _load_open_clip(args.open_clip_loss)
    results = benchmark(rec, device, batches, dims, rates, clip_cls, distill_cls, provenance, args.dry_run,
                        end)
    fits = million(rec, device, *big, end + 30, tuned=(batches[-1], big[1], "none", "psd-triton") in results)
    tuned_configs(rec)
    targets(rec, results, rates, fits, target_b, dims[0], big)
    rec.line(f"total {time.monotonic() - start:.0f} s; correctness failures: {failures}")
    rec.write(Path(args.out))
    print(f"wrote {Path(args.out) / 'device_check.csv'} and device_check.md")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
