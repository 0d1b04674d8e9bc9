"""Stage 1 of benchmarks/device_check.py: every GPU backend against the float64 reference.

psd_loss / psd_clip_loss / psd_siglip_loss with backend="triton" and, when the C++ extension has CUDA,
backend="cpp", against the float64 reference on the same rounded inputs: float32, bfloat16,
float16; every teacher case; awkward sizes (1, 7, 97, 1025 rows, widths that are not powers
of two); per-row alpha, labels, reduction "none" with random per-row upstream gradients.
Autotuning is off here (PSD_TRITON_AUTOTUNE=0: the first config that fits) to save compiles.
Rows: op psd_correctness, metric max_rel_error, x_name case.
"""
from __future__ import annotations

import os
import time

import torch

from device_stages.common import free, short, unit
from providers import SEPARATE_TEACHER_SCALE, STUDENT_SCALE
from psd_kernels.backends import available_backends
from psd_kernels.tools import against_reference
from psd_kernels.vocabulary import DTYPES

# The input dtypes checked (psd_kernels.vocabulary names), and their tolerance: max error /
# max(|reference|, 0.05), the harness's tensor-core column (psd_kernels.tools.against_reference,
# shared with tests/test_triton.py and tests/test_cpp.py): fp32 accumulation; float16/bfloat16
# gradient products take G rounded to the input dtype.
CHECKED_DTYPES = ("bfloat16", "float16", "float32")
TOL = {name: against_reference.tolerance(DTYPES[name], "tensor_cores") for name in CHECKED_DTYPES}

# (op, sizes, teacher case): one direction takes (M, N, D), the symmetric loss (B, D). Awkward
# sizes: 1, 7, 97 and 1025 rows, widths that are not powers of two.
GPU_CASES = [("psd_loss", (1, 7, 3), "self_scaled"), ("psd_loss", (7, 97, 100), "self"),
             ("psd_loss", (97, 1000, 100), "separate"), ("psd_loss", (1025, 777, 768), "separate"),
             ("psd_clip_loss", (1, 37), "self"), ("psd_clip_loss", (7, 100), "self"),
             ("psd_clip_loss", (97, 300), "separate"), ("psd_clip_loss", (1025, 520), "self_scaled"),
             ("psd_clip_loss", (4096, 768), "separate"),
             ("psd_siglip_loss", (1, 37), "self"), ("psd_siglip_loss", (97, 300), "separate"),
             ("psd_siglip_loss", (1025, 520), "self_scaled"), ("psd_siglip_loss", (4096, 768), "separate")]
DRY_CASES = [("psd_loss", (3, 70, 20), "separate"), ("psd_clip_loss", (19, 24), "self_scaled"),
             ("psd_siglip_loss", (19, 24), "separate")]
SIGLIP_BIAS, SIGLIP_TEACHER_BIAS = -5.0, -2.0


def case_inputs(op, sizes, teacher, dtype, device):
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
        if op == "psd_siglip_loss":  # (B,) per-image-row sums; a bias, and the teacher's own
            upstream = upstream[0]
            kw["logit_bias"] = SIGLIP_BIAS
            if teacher != "self":
                kw["teacher_bias"] = SIGLIP_TEACHER_BIAS
    if teacher == "self_scaled":
        kw["teacher_scale"] = 0.5 * STUDENT_SCALE
    elif teacher == "separate":
        kw.update({names[0]: unit(m, 48, dtype, device), names[1]: unit(n, 48, dtype, device),
                   "teacher_scale": SEPARATE_TEACHER_SCALE})
    x, y = unit(m, d, dtype, device), unit(n, d, dtype, device)
    return x, y, kw, upstream


def _loss_and_grads(op, backend, x, y, kw, upstream, to64=False):
    s = torch.tensor(STUDENT_SCALE, device=x.device)
    return against_reference.loss_and_grads(op, backend, x, y, s, kw, upstream, "none", float64=to64)


def run(rec, device, cases, budget_end) -> int:
    """Check every case on every usable GPU backend; the number of failures."""
    rec.line("## Correctness against the float64 reference (max error / max |reference|)")
    rec.line()
    rec.line("| backend | op | sizes | dtype | teacher | loss | dx | dy | dscale | tol | status |")
    rec.line("|---|---|---|---|---|---|---|---|---|---|---|")
    failures = 0
    os.environ["PSD_TRITON_AUTOTUNE"] = "0"
    for dname in CHECKED_DTYPES:
        dtype = DTYPES[dname]
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
                    x, y, kw, up = case_inputs(op, sizes, teacher, dtype, device)
                    got = _loss_and_grads(op, backend, x, y, kw, up)
                    want = _loss_and_grads(op, "reference", x, y, kw, up, to64=True)
                    dtypes_ok = against_reference.dtypes_ok(got, dtype)
                    errs = against_reference.errors(got, want)
                    ok = dtypes_ok and all(e <= TOL[dname] for e in errs)
                    status = "ok" if ok else ("FAIL" if dtypes_ok else "FAIL (dtype)")
                    cells = " | ".join(f"{e:.1e}" for e in errs)
                except Exception as exc:  # fail soft: record and go on
                    ok, status, cells = False, f"FAIL {short(exc)}", " | | | "
                failures += not ok
                rec.line(f"| {backend} | {op} | {label} | {dname} | {teacher} | {cells} | {TOL[dname]:.0e} "
                         f"| {status} |")
                rec.row("psd_correctness", f"psd-{backend}", "full", "max_rel_error", "ratio", "case",
                        f"{op}:{label}", max(errs) if errs else "",
                        config=dict(dtype=dname, teacher=teacher, status=status))
                free()
    os.environ["PSD_TRITON_AUTOTUNE"] = "1"
    rec.line()
    return failures
