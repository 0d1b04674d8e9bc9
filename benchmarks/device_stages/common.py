"""What the device-check stages share: unit-norm inputs, the timer, peak memory, failure text."""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F


def unit(n, d, dtype, device):
    """n x d rows of unit norm (as CLIP produces them), rounded to `dtype`."""
    return F.normalize(torch.randn(n, d, device=device, dtype=torch.float32), dim=1).to(dtype)


def short(exc: BaseException) -> str:
    """One table cell for a failure: "OOM", or the exception's type and first line."""
    if isinstance(exc, torch.OutOfMemoryError):
        return "OOM"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:90] if str(exc) else ''}"


def free():
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def bench(fn, dry):
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


def peak_gib(fn, device) -> float | str:
    """Peak extra CUDA memory of one call of fn, GiB ("" on CPU: not measured)."""
    if device.type != "cuda":
        return ""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**30
