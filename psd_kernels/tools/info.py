"""What psd_kernels._C was built with, and why a part is missing.

    .venv/bin/python -m psd_kernels.tools.info

`build_info()` returns a dict: extension (importable), extension_error (why not),
cpu_built, cuda_built, cuda_reason (why the CUDA part is missing: recorded by
setup.py at build time, e.g. no toolkit or PSD_SKIP_CUDA_BUILD=1), cuda_archs (the
GPU architectures whose kernels are compiled into the extension, read from the
extension itself), cuda_arch_list and cuda_arch_source (the list setup.py asked nvcc
for, and where it came from), cuda_home, cxx_flags, built_with_torch, running_torch,
cuda_available (a GPU is visible now) and ops (the torch.ops.psd ops and the dispatch
keys they run on).

The supported torch range and the architecture policy live here too, so the build, this
report and psd_train's guard share them: setup.py loads this file by path, declares
torch_requirement() and calls default_cuda_archs() when neither
PSD_CUDA_ARCHS nor TORCH_CUDA_ARCH_LIST is set. A CUDA call on a GPU whose
architecture was not built fails before any launch with an error naming the GPU's
sm_XY, the built archs and the flag to rebuild with (csrc/psd_epilogue_cuda.cu:
check_arch; the same text as psd_kernels._C.cuda_arch_error(major, minor)).
"""
from __future__ import annotations

import json
import re
import sys

import torch

_OPS = ("forward", "backward", "forward_backward")

# The torch releases psd is built and tested on (docs/compatibility.md), each with the Triton it
# ships with: 2.8 (Triton 3.4) to 2.14 (Triton 3.8).
TORCH_FLOOR, TORCH_NEWEST = (2, 8), (2, 14)
SUPPORTED_TORCH = f"torch {TORCH_FLOOR[0]}.{TORCH_FLOOR[1]} to {TORCH_NEWEST[0]}.{TORCH_NEWEST[1]}"


def torch_requirement() -> str:
    """setup.py's install_requires entry for torch: the supported range."""
    return f"torch>={TORCH_FLOOR[0]}.{TORCH_FLOOR[1]},<{TORCH_NEWEST[0]}.{TORCH_NEWEST[1] + 1}"


def torch_release(version: str) -> tuple[int, int]:
    """(major, minor) of a torch version string such as 2.9.1+cu128 or 2.15.0.dev20261201."""
    found = re.match(r"(\d+)\.(\d+)", version)
    if found is None:
        raise ValueError(f"cannot read a torch release from {version!r}")
    return int(found.group(1)), int(found.group(2))

# The GPUs people train on: A100 (8.0; its cubin also runs on 8.6 and 8.9 cards),
# H100/H200 (9.0) and B200/GB200 (10.0; its cubin also runs on 10.3).
TRAINING_ARCHS = ("8.0", "9.0", "10.0")


def nvcc_arch_codes(listing: str) -> list[int]:
    """Compute capabilities x 10 from `nvcc --list-gpu-arch` output (lines like compute_90)."""
    return sorted({int(code) for code in re.findall(r"\bcompute_(\d+)[a-z]?\b", listing)})


def default_cuda_archs(nvcc_listing: str, visible: list[tuple[int, int]]) -> str:
    """The arch list to build when neither PSD_CUDA_ARCHS nor TORCH_CUDA_ARCH_LIST is set.

    visible: the (major, minor) of the GPUs visible at build time. With a GPU visible,
    its own archs (the build is for this machine); without, those of TRAINING_ARCHS
    that nvcc lists. Returns a TORCH_CUDA_ARCH_LIST value such as "8.0;9.0;10.0".
    """
    if visible:
        return ";".join(f"{major}.{minor}" for major, minor in sorted(set(visible)))
    known = nvcc_arch_codes(nvcc_listing)
    if not known:
        raise ValueError("`nvcc --list-gpu-arch` listed no compute_XY architecture; set the archs to build, "
                         "e.g. PSD_CUDA_ARCHS=\"8.0;9.0\"")
    archs = [a for a in TRAINING_ARCHS if int(a.replace(".", "")) in known]
    if not archs:
        raise ValueError(f"nvcc supports none of the default archs {', '.join(TRAINING_ARCHS)} (it lists "
                         f"{', '.join(f'compute_{c}' for c in known)}); set PSD_CUDA_ARCHS to the archs to build")
    return ";".join(archs)


def format_archs(codes) -> str:
    """[80, 90, 100] (compute capability x 10) -> "sm_80, sm_90, sm_100"; "none" for an empty list."""
    return ", ".join(f"sm_{code}" for code in codes) or "none"


def build_info() -> dict:
    """Describe the built extension; never raises when it is missing."""
    info = {"extension": False, "extension_error": None, "cpu_built": False, "cuda_built": False,
            "cuda_reason": None, "cuda_archs": None, "cuda_arch_list": None, "cuda_arch_source": None,
            "cuda_home": None, "cxx_flags": None, "built_with_torch": None, "running_torch": torch.__version__,
            "cuda_available": torch.cuda.is_available(), "ops": {}}
    try:
        from psd_kernels import _C
    except ImportError as exc:
        info["extension_error"] = (f"{exc}; build it with: pip install --no-build-isolation --use-pep517 -e . "
                                   "(run in the repository root)")
        info["cuda_reason"] = "the extension is not built"
        return info
    record = json.loads(bytes.fromhex(_C.build_record_hex()[1:]).decode())
    cuda_built = bool(_C.cuda_built())
    info.update(extension=True, cpu_built=True, cuda_built=cuda_built,
                cuda_reason=record.get("cuda_reason"),
                cuda_archs=format_archs(_C.cuda_archs()) if cuda_built else None,
                cuda_arch_list=record.get("cuda_archs"), cuda_arch_source=record.get("cuda_arch_source"),
                cuda_home=record.get("cuda_home"), cxx_flags=record.get("cxx_flags"),
                built_with_torch=record.get("torch"))
    for op in _OPS:
        info["ops"][f"psd::{op}"] = [key for key in ("CPU", "CUDA")
                                     if torch._C._dispatch_has_kernel_for_dispatch_key(f"psd::{op}", key)]
    return info


def main(argv=None) -> int:
    """Print build_info() as `key: value` lines; exit status 0 when the extension loads."""
    del argv
    info = build_info()
    for key, value in info.items():
        print(f"{key}: {value}")
    if info["extension"] and not info["cuda_built"]:
        print(f"CUDA part missing because: {info['cuda_reason']}")
    return 0 if info["extension"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
