"""setup.py degrades to the CPU part when the CUDA part cannot be built, and says why in one line.

    .venv/bin/python -m pytest tests/test_setup_cuda_fallback.py -q

A fake toolkit (CUDA_HOME with bin/nvcc, a shell script, and include/cuda_runtime.h) stands in
for the cases users meet: a toolkit of another CUDA major version than torch's, an nvcc that
does not run, and an nvcc that runs but fails to compile. `setup.py --name` runs setup.py's
decision without building; one real build (into a temporary folder, the checkout's own
extension untouched) goes through the failing compile and must end with the CPU part built
and its record naming the reason, as python -m psd_kernels.tools.info reports it.
"""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TORCH_CUDA = torch.version.cuda
needs_cuda_torch = pytest.mark.skipif(TORCH_CUDA is None, reason="torch was built without CUDA: setup.py "
                                      "skips the CUDA part before looking at any toolkit")


def fake_toolkit(home: Path, version_line: str, compiles: bool) -> Path:
    """CUDA_HOME whose nvcc prints `version_line` for --version, lists sm_80 / sm_90, and compiles
    nothing (exit 1) unless `compiles`."""
    (home / "bin").mkdir(parents=True)
    (home / "include").mkdir()
    (home / "include" / "cuda_runtime.h").write_text("")
    nvcc = home / "bin" / "nvcc"
    nvcc.write_text(f"""#!/bin/sh
case "$1" in
  --version) echo '{version_line}' ;;
  --list-gpu-arch) printf 'compute_80\\ncompute_90\\n' ;;
  *) echo 'nvcc fake: cannot compile' >&2; exit {0 if compiles else 1} ;;
esac
""")
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IEXEC)
    return home


def setup_env(cuda_home: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PSD_SKIP_CUDA_BUILD", "PSD_CUDA_ARCHS", "TORCH_CUDA_ARCH_LIST", "CUDA_PATH")}
    return dict(env, CUDA_HOME=str(cuda_home), MAX_JOBS="2")


def run_setup(args, cuda_home: Path, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "setup.py", *args], cwd=cwd, env=setup_env(cuda_home),
                          capture_output=True, text=True, timeout=900)


def cpu_only_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "CPU only; the CUDA part is skipped" in line]


@needs_cuda_torch
def test_another_major_version_skips_the_cuda_part_with_one_line(tmp_path):
    other = int(TORCH_CUDA.split(".")[0]) + 1
    home = fake_toolkit(tmp_path / "cuda", f"Cuda compilation tools, release {other}.0, V{other}.0.1", True)
    out = run_setup(["--name"], home)
    assert out.returncode == 0, out.stderr
    lines = cpu_only_lines(out.stderr)
    assert len(lines) == 1, out.stderr
    assert f"is {other}.0 but torch {torch.__version__} was built with CUDA {TORCH_CUDA}" in lines[0]
    assert f"point CUDA_HOME at a CUDA {TORCH_CUDA.split('.')[0]}.x toolkit" in lines[0]


@needs_cuda_torch
def test_an_nvcc_that_does_not_run_skips_the_cuda_part(tmp_path):
    home = fake_toolkit(tmp_path / "cuda", "", True)
    (home / "bin" / "nvcc").write_text("#!/bin/sh\nexit 3\n")
    out = run_setup(["--name"], home)
    assert out.returncode == 0, out.stderr
    lines = cpu_only_lines(out.stderr)
    assert len(lines) == 1 and "nvcc --version` failed" in lines[0], out.stderr


@needs_cuda_torch
def test_a_failing_cuda_compile_still_builds_the_cpu_part(tmp_path):
    """The real build: the CUDA attempt fails inside torch's build, the CPU part is built, its record
    carries the reason, and the built extension runs the CPU op."""
    major, minor = TORCH_CUDA.split(".")[:2]
    home = fake_toolkit(tmp_path / "cuda", f"Cuda compilation tools, release {major}.{minor}, V{major}.{minor}.0",
                        compiles=False)
    lib, temp = tmp_path / "lib", tmp_path / "temp"
    out = run_setup(["build_ext", "--build-lib", str(lib), "--build-temp", str(temp)], home)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "CPU + CUDA" in out.stderr  # the CUDA part was attempted
    lines = cpu_only_lines(out.stderr)
    assert len(lines) == 1 and "the CUDA build failed" in lines[0], out.stderr[-3000:]
    built = sorted((lib / "psd_kernels").glob("_C*.so"))
    assert built, f"no extension under {lib}"
    probe = f"""
import importlib.util, json, torch
spec = importlib.util.spec_from_file_location("psd_kernels._C", {str(built[0])!r})
C = importlib.util.module_from_spec(spec); spec.loader.exec_module(C)
record = json.loads(bytes.fromhex(C.build_record_hex()[1:]).decode())
print(C.cuda_built(), record["cuda"], record["cuda_reason"])
"""
    checked = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith("False False the CUDA build failed"), checked.stdout
