"""The interpreted Triton tests' child process, and whether this Triton's interpreter can run psd's
kernels at all.

run_child(args) runs python with TRITON_INTERPRET=1 in the checkout (the interpreter must be on
before triton is first imported, so the test files re-run themselves in a child);
assert_file_passes_interpreted(path) is the launcher test of such a file.


Triton 3.4 and 3.5's interpreter turns a loop bound computed from program ids (range(a, b) with
a = pid * per, b = tl.minimum(...)) into int() of a one-element numpy array, which numpy 2.4
made an error ("only 0-dimensional arrays can be converted to Python scalars"); newer Triton
interpreters hold such values as 0-d arrays. The compiled kernels never see numpy. fault() runs
that pattern in a child with TRITON_INTERPRET=1 and returns None when it runs, else the reason
an interpreted case that hits it is skipped.
"""
from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FAULT_TEXT = "only 0-dimensional arrays can be converted to Python scalars"

_PROBE = """
import numpy, torch, triton, triton.language as tl

@triton.jit
def count(out, n, GROUPS: tl.constexpr):
    per = tl.cdiv(n, GROUPS)
    start = tl.program_id(0) * per
    acc = 0
    for i in range(start, tl.minimum(start + per, n)):
        acc += 1
    tl.store(out + tl.program_id(0), acc)

out = torch.zeros(2, dtype=torch.int32)
try:
    count[(2,)](out, 5, 2)
    assert out.tolist() == [3, 2], out.tolist()
except Exception as exc:
    print(f"triton {triton.__version__} with numpy {numpy.__version__}: {exc!r}")
"""


@functools.lru_cache(maxsize=None)
def fault() -> str | None:
    """None when the interpreter runs a program-id loop bound, else why interpreted cases are skipped."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"the interpreter probe itself failed: {proc.stderr[-2000:]}")
    found = proc.stdout.strip()
    if not found:
        return None
    if FAULT_TEXT not in found:
        raise AssertionError(f"the interpreter fails the probe in an unknown way: {found}")
    return (f"Triton's interpreter fault, not psd's: {found} (int() of a one-element numpy array in its "
            "loop bounds); the compiled kernels are checked by the compile check")


def run_child(args, timeout: float) -> subprocess.CompletedProcess:
    """python *args in the checkout with TRITON_INTERPRET=1."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def assert_file_passes_interpreted(path) -> None:
    """Re-run the test file `path` in an interpreted child and assert it passed (skipped with the
    reason where this Triton's interpreter cannot run the kernels)."""
    pytest.importorskip("triton")
    if fault():
        pytest.skip(fault())
    proc = run_child(["-m", "pytest", "-q", "-p", "no:cacheprovider", str(path)], timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout, proc.stdout[-2000:]
