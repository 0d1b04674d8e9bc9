"""Peak extra memory of one measured call, on CPU and on CUDA.

CPU method (stated in every run's output): the process's peak resident set size.
Before the measured call we write "5" to /proc/self/clear_refs, which resets the
kernel's high-water mark VmHWM to the current RSS; the extra memory of the call
is VmHWM after it minus VmRSS before it. glibc keeps small freed blocks mapped,
which would hide re-used memory, so `release_freed_memory_to_os()` sets
M_MMAP_THRESHOLD to 1 MiB: every larger buffer is its own mmap and goes back to
the kernel when PyTorch frees it. Measure in a fresh process per provider (the
benchmark does) so that other providers leave nothing behind. Linux only.

CUDA method: torch.cuda.max_memory_allocated() minus memory_allocated() before the
call, after reset_peak_memory_stats() (the caching allocator's live tensors, not
its reserved pool).

    .venv/bin/python -m pytest tests/test_benchmarks.py -q -k memory     (psd_kernels.tools: benchmarks/ and the demo measure with it)
"""
from __future__ import annotations

import ctypes
import gc
import re

import torch

CPU_METHOD = ("peak RSS: VmHWM after the call minus VmRSS before it, VmHWM reset via "
              "/proc/self/clear_refs, glibc M_MMAP_THRESHOLD=1 MiB, a fresh process per provider")
CPU_METHOD_IN_PROCESS = ("peak RSS: VmHWM after the call minus VmRSS before it, VmHWM reset via "
                         "/proc/self/clear_refs, glibc M_MMAP_THRESHOLD=1 MiB, shared process")
CUDA_METHOD = "torch.cuda.max_memory_allocated() minus memory_allocated() before the call"

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def release_freed_memory_to_os(threshold_bytes: int = 1 << 20) -> bool:
    """Make glibc mmap every block above threshold_bytes (returned to the OS when freed)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    ok = libc.mallopt(_M_MMAP_THRESHOLD, threshold_bytes) == 1
    return ok and libc.mallopt(_M_TRIM_THRESHOLD, threshold_bytes) == 1


def _status_kib(field: str, pid: str = "self") -> int:
    with open(f"/proc/{pid}/status") as fh:
        match = re.search(rf"^{field}:\s+(\d+) kB", fh.read(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/{pid}/status has no {field} line")
    return int(match.group(1))


def rss_bytes(pid: int | str = "self") -> int:
    """Current resident set size of process `pid`."""
    return _status_kib("VmRSS", str(pid)) * 1024


def available_bytes() -> int:
    """MemAvailable of the machine (what can still be allocated without swapping)."""
    with open("/proc/meminfo") as fh:
        match = re.search(r"^MemAvailable:\s+(\d+) kB", fh.read(), re.MULTILINE)
    return int(match.group(1)) * 1024


class PeakMemory:
    """start() before a call, peak() after it (or midway): extra bytes at the high-water mark."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.baseline = 0

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
        else:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self.baseline = rss_bytes()

    def peak(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self.baseline
        return _status_kib("VmHWM") * 1024 - self.baseline
