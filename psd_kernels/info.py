"""What psd_kernels._C was built with, and why a part is missing.

    .venv/bin/python -m psd_kernels.info

`build_info()` returns a dict: extension (importable), extension_error (why not),
cpu_built, cuda_built, cuda_reason (why the CUDA part is missing: recorded by
setup.py at build time, e.g. no toolkit or PSD_SKIP_CUDA_BUILD=1), cuda_archs,
cuda_home, cxx_flags, built_with_torch, running_torch, cuda_available (a GPU is
visible now) and ops (the torch.ops.psd ops and the dispatch keys they run on).
"""
from __future__ import annotations

import json
import sys

import torch

_OPS = ("forward", "backward", "forward_backward")


def build_info() -> dict:
    """Describe the built extension; never raises when it is missing."""
    info = {"extension": False, "extension_error": None, "cpu_built": False, "cuda_built": False,
            "cuda_reason": None, "cuda_archs": None, "cuda_home": None, "cxx_flags": None,
            "built_with_torch": None, "running_torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
            "ops": {}}
    try:
        from psd_kernels import _C
    except ImportError as exc:
        info["extension_error"] = (f"{exc}; build it with: pip install --no-build-isolation -e . "
                                   "(run in the repository root)")
        info["cuda_reason"] = "the extension is not built"
        return info
    record = json.loads(bytes.fromhex(_C.build_record_hex()[1:]).decode())
    info.update(extension=True, cpu_built=True, cuda_built=bool(_C.cuda_built()),
                cuda_reason=record.get("cuda_reason"), cuda_archs=record.get("cuda_archs"),
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
