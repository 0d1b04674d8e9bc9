"""Measure one (provider, case): time of forward / backward / full and peak extra memory.

Each repetition runs forward then backward on fresh gradient buffers and times
both phases, so forward, backward and full (= forward + backward) come from
the same calls. CPU timer: time.perf_counter; CUDA timer: CUDA events around each
phase (synchronised after the call). Warm-up calls are not timed; the number of
timed repetitions fills a time budget between min_reps and max_reps.

On CPU the benchmark measures in a child process per provider (this file is its
entry point, `--serve`: one JSON request per stdin line) watched by the parent,
which kills it when its resident memory passes a limit, so an oversized case is
recorded as "oom" instead of exhausting the machine. Run by
benchmarks/benchmark_psd_loss.py; by hand:

    echo '{"provider": "torch-chunked", "case": {"batch": 1024, "dim": 512}, "device": "cpu", "settings": {}}' \\
        | .venv/bin/python benchmarks/runner.py --serve
"""
from __future__ import annotations

import gc
import json
import os
import select
import subprocess
import sys
import tempfile
import time

import torch

from psd_kernels.tools.peak_memory import PeakMemory, release_freed_memory_to_os, rss_bytes
from providers import Case, all_providers, make_inputs
from psd_kernels.vocabulary import DTYPES

RESULT_PREFIX = "RESULT "


class _Timer:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def ms(self, start, stop) -> float:
        if self.cuda:
            stop.synchronize()
            return start.elapsed_time(stop)
        return (stop - start) * 1e3


def find_provider(name: str, case: Case, device: torch.device):
    providers, skipped = all_providers(device, DTYPES[case.dtype])
    for provider in providers:
        if provider.name == name:
            return provider
    raise ValueError(f"provider {name!r} is not available here: {skipped.get(name, 'unknown name')}")


def measure(provider, case: Case, device: torch.device, *, warmup: int = 1, min_reps: int = 3,
            max_reps: int = 10, budget_s: float = 2.0, seed: int = 0) -> dict:
    """Time and memory of `provider` on `case`; returns lists of ms per mode and peak bytes."""
    device = torch.device(device)
    fn = provider.build(case)
    inputs = make_inputs(case, device, seed)
    leaves = (inputs["image"], inputs["text"], inputs["scale"], inputs["bias"])
    memory, timer = PeakMemory(device), _Timer(device)

    def once():
        for leaf in leaves:
            leaf.grad = None
        memory.start()
        t0 = timer.mark()
        loss = fn(inputs)
        t1 = timer.mark()
        forward_peak = memory.peak()
        t2 = timer.mark()
        loss.backward()
        t3 = timer.mark()
        full_peak = memory.peak()
        fwd, bwd = timer.ms(t0, t1), timer.ms(t2, t3)
        return {"forward": fwd, "backward": bwd, "full": fwd + bwd,
                "mem_forward": forward_peak, "mem_full": full_peak, "loss": float(loss.detach())}

    first = None
    for _ in range(warmup):
        first = once()
    per_call_s = (first or {"full": 0.0})["full"] / 1e3
    reps = max_reps if per_call_s <= 0 else int(budget_s / per_call_s)
    reps = max(min_reps, min(max_reps, reps))
    samples = [once() for _ in range(reps)]
    return {"status": "ok", "reps": reps, "warmup": warmup,
            "forward": [s["forward"] for s in samples],
            "backward": [s["backward"] for s in samples],
            "full": [s["full"] for s in samples],
            "mem_forward": max(s["mem_forward"] for s in samples),
            "mem_full": max(s["mem_full"] for s in samples),
            "loss": samples[0]["loss"]}


def _is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate memory" in text


def measure_safely(provider, case, device, **settings) -> dict:
    """measure(), with an out-of-memory failure recorded as status "oom" (CUDA, in-process)."""
    try:
        return measure(provider, case, device, **settings)
    except (RuntimeError, MemoryError) as exc:
        if not _is_oom(exc):
            raise
        return {"status": "oom", "message": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
    finally:
        if torch.device(device).type == "cuda":
            gc.collect()                 # the failed call's tensors, then the cached blocks
            torch.cuda.empty_cache()


class IsolatedWorker:
    """A child process that measures cases sent to it, watched for memory by this process.

    One worker serves one provider (the sweep closes it before starting the next), so
    no provider's allocations linger into another's measurements. When the child's
    RSS passes rss_limit_bytes it is killed and the case is recorded as "oom"; the
    next request starts a fresh child.
    """

    def __init__(self, rss_limit_bytes: int, timeout_s: float = 3600.0, poll_s: float = 0.02):
        self.rss_limit_bytes, self.timeout_s, self.poll_s = rss_limit_bytes, timeout_s, poll_s
        self.child, self.stderr = None, None

    def _start(self):
        self.stderr = tempfile.TemporaryFile("w+")
        self.child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr)

    def close(self):
        if self.child is not None:
            if self.child.poll() is None:
                self.child.kill()
            self.child.wait()
            self.stderr.close()
        self.child = self.stderr = None

    def _stderr_tail(self) -> str:
        self.stderr.seek(0)
        return (self.stderr.read().strip().splitlines() or ["no output"])[-1]

    def run(self, provider_name: str, case: Case, device: str, settings: dict) -> dict:
        if self.child is None:
            self._start()
        request = json.dumps({"provider": provider_name, "case": case.__dict__, "device": device,
                              "settings": settings})
        self.child.stdin.write((request + "\n").encode())
        self.child.stdin.flush()
        fd, buffer = self.child.stdout.fileno(), b""
        start, peak_rss, killed = time.monotonic(), 0, None
        while True:
            ready, _, _ = select.select([fd], [], [], self.poll_s)
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:                                      # the child died
                    code = self.child.wait()
                    message = f"worker exited {code}: {self._stderr_tail()}"
                    self.close()
                    status = "oom" if code in (-9, 137) or "memory" in message.lower() else "error"
                    return {"status": status, "message": message}
                buffer += chunk
                for line in buffer.decode(errors="replace").splitlines():
                    if line.startswith(RESULT_PREFIX):
                        return json.loads(line[len(RESULT_PREFIX):])
            try:
                peak_rss = max(peak_rss, rss_bytes(self.child.pid))
            except (FileNotFoundError, ProcessLookupError, RuntimeError):
                pass
            if peak_rss > self.rss_limit_bytes:
                killed = (f"killed at {peak_rss / 2**30:.1f} GiB RSS "
                          f"(limit {self.rss_limit_bytes / 2**30:.1f} GiB)")
            elif time.monotonic() - start > self.timeout_s:
                killed = f"killed after {self.timeout_s:.0f} s"
            if killed:
                self.close()
                return {"status": "oom" if "RSS" in killed else "error", "message": killed,
                        "observed_bytes": peak_rss}


def serve() -> int:
    """Child entry point: one JSON request per stdin line, one RESULT line per request."""
    release_freed_memory_to_os()
    for line in sys.stdin:
        request = json.loads(line)
        case, device = Case(**request["case"]), torch.device(request["device"])
        try:
            provider = find_provider(request["provider"], case, device)
            result = measure_safely(provider, case, device, **request["settings"])
        except Exception as exc:  # reported to the parent, which records the case as an error
            result = {"status": "error", "message": f"{type(exc).__name__}: {exc}"}
        print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["--serve"]:
        sys.exit(f"usage: {sys.argv[0]} --serve   (started by benchmark_psd_loss.py)")
    sys.exit(serve())
