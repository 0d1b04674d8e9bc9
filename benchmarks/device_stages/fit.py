"""Stage 4 of benchmarks/device_check.py: B = 1,048,576, D = 512, one forward + backward with Triton.

Does it fit: finite loss and gradients, the time and the peak extra memory, or why not. Rows:
op psd_clip_loss, provider psd-triton, metrics time and memory at x = B.
"""
from __future__ import annotations

import math
import os
import time

import torch

import psd_kernels
from device_stages.common import free, short, unit
from providers import STUDENT_SCALE, Case
from psd_kernels.vocabulary import NO_TEACHER


def run(rec, device, b, d, latest_start, tuned):
    """One forward + backward at a huge batch: True / False (fits, finite), None when not run.

    Tuning at this size would take minutes, so unless the capped autotune key (B = 65536,
    same D) was already tuned by the timing stage, the first config that fits is used.
    """
    rec.line(f"## B = {b:,}, D = {d}: one forward + backward with backend='triton' (bf16, no teacher)")
    rec.line()
    if time.monotonic() > latest_start:
        rec.line("skipped: time budget spent")
        return None
    if not tuned:
        os.environ["PSD_TRITON_AUTOTUNE"] = "0"
    try:
        x = unit(b, d, torch.bfloat16, device).requires_grad_()
        y = unit(b, d, torch.bfloat16, device).requires_grad_()
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
        config = dict(Case(b, d, NO_TEACHER, "bfloat16").config(), reps=1, warmup=0, finite=finite,
                      autotuned=tuned)
        rec.row("psd_clip_loss", "psd-triton", "full", "time", "ms", "B", b, 1e3 * secs, 1e3 * secs, 1e3 * secs,
                config)
        rec.row("psd_clip_loss", "psd-triton", "full", "memory", "MiB", "B", b, 1024 * peak, 1024 * peak,
                1024 * peak, config)
        rec.line()
        return finite
    except Exception as exc:
        rec.line(f"does not fit or fails: {short(exc)}")
        rec.line()
        return False
    finally:
        os.environ["PSD_TRITON_AUTOTUNE"] = "1"
        x = y = None
        free()
