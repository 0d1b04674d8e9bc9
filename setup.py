"""Installs psd_kernels and psd_train, and builds the extension psd_kernels._C.

    pip install --no-build-isolation --use-pep517 -e .             # psd_kernels' needs only: torch, numpy
    pip install --no-build-isolation --use-pep517 -e ".[train]"    # + what psd_train and its demo need (open_clip_torch, ...)

Supported: torch 2.8 to 2.14, each with the Triton it ships with (3.4 to 3.8), and Python >= 3.10
(psd_kernels/tools/info.py: TORCH_FLOOR, TORCH_NEWEST); the tested stacks: docs/compatibility.md.

The CPU part of psd_kernels._C is always built; only a failing CPU build stops the install.
The CUDA part is added when torch was built with CUDA and a toolkit of torch's CUDA major
version is found. When it cannot be (no toolkit, another major version, nvcc failing to run
or to compile), the CPU part is built alone and one line says why and how to get the CUDA
part; python -m psd_kernels.tools.info shows the same reason. Environment flags:

    PSD_SKIP_CUDA_BUILD=1   build the CPU part only
    PSD_CUDA_ARCHS="9.0"    CUDA architectures, e.g. "8.0;9.0;10.0" or "9.0;10.0+PTX" (default:
                            TORCH_CUDA_ARCH_LIST; else the visible GPUs' archs; else, with no
                            GPU visible, those of 8.0, 9.0 and 10.0 that nvcc supports)
    MAX_JOBS=2              parallel compile jobs (read by torch's ninja build)
    CUDA_HOME=/path         the toolkit (default: found from nvcc on PATH, else /usr/local/cuda*)

What was built, and why a part is missing: python -m psd_kernels.tools.info
"""
import glob
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def log(msg):
    print(f"[psd setup] {msg}", file=sys.stderr)


def _is_cuda_home(path):
    return bool(path) and os.path.isfile(os.path.join(path, "bin", "nvcc")) and \
        os.path.isfile(os.path.join(path, "include", "cuda_runtime.h"))


def _nvcc_targets(nvcc):
    """The real nvcc behind `nvcc`: itself, its symlink target, or the path a wrapper script execs."""
    real = os.path.realpath(nvcc)
    yield real
    try:
        with open(real, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return
    if head.startswith(b"#!"):
        for match in re.finditer(rb"(/[^\s\"']*/bin/nvcc)\b", head):
            yield os.path.realpath(match.group(1).decode())


def find_cuda_home():
    """(path, None) for a usable CUDA toolkit, else (None, the reason)."""
    env = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if env:
        return (env, None) if _is_cuda_home(env) else (None, f"CUDA_HOME={env} has no bin/nvcc or include/cuda_runtime.h")
    nvcc = shutil.which("nvcc")
    if nvcc:
        for target in _nvcc_targets(nvcc):
            home = os.path.dirname(os.path.dirname(target))
            if _is_cuda_home(home):
                return home, None
    for home in sorted(glob.glob("/usr/local/cuda*"), reverse=True):
        if _is_cuda_home(home):
            return home, None
    return None, "no CUDA toolkit: nvcc is not on PATH, CUDA_HOME is unset and /usr/local/cuda* has none"


def _build_policy():
    """psd_kernels/tools/info.py, loaded by path: the torch range and the arch policy that
    python -m psd_kernels.tools.info reports (importing the package itself would load a stale or
    missing psd_kernels._C)."""
    path = os.path.join(ROOT, "psd_kernels", "tools", "info.py")
    spec = importlib.util.spec_from_file_location("_psd_build_info", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class CudaSkipped(Exception):
    """The CUDA part cannot be built here; the message says why and how to get it."""


def cuda_archs(cuda_home, torch):
    """(TORCH_CUDA_ARCH_LIST value, where it came from) for the CUDA part."""
    for flag in ("PSD_CUDA_ARCHS", "TORCH_CUDA_ARCH_LIST"):
        if os.environ.get(flag):
            return os.environ[flag], flag
    policy = _build_policy()
    visible = [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]
    if visible:
        return policy.default_cuda_archs("", visible), "the GPUs visible at build time"
    listing = _nvcc(cuda_home, "--list-gpu-arch")
    try:
        archs = policy.default_cuda_archs(listing, [])
    except ValueError as exc:
        raise CudaSkipped(str(exc)) from exc
    return archs, f"default for no visible GPU: {', '.join(policy.TRAINING_ARCHS)} where nvcc supports them"


def _nvcc(cuda_home, flag):
    """`nvcc <flag>`'s output; CudaSkipped when nvcc does not run."""
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    try:
        return subprocess.run([nvcc, flag], capture_output=True, text=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise CudaSkipped(f"`{nvcc} {flag}` failed ({exc})") from exc


def check_toolkit(cuda_home, torch):
    """CudaSkipped unless the toolkit's major CUDA version is the one torch was built with (torch's
    cpp_extension aborts the whole build on a major mismatch; a minor one only warns)."""
    found = re.search(r"release (\d+)\.(\d+)", _nvcc(cuda_home, "--version"))
    if found is None:
        raise CudaSkipped(f"`{cuda_home}/bin/nvcc --version` printed no CUDA release")
    toolkit, wanted = f"{found.group(1)}.{found.group(2)}", torch.version.cuda
    if found.group(1) != wanted.split(".")[0]:
        raise CudaSkipped(f"the CUDA toolkit at {cuda_home} is {toolkit} but torch {torch.__version__} was built "
                          f"with CUDA {wanted}; the major versions must match")


def cpu_flags():
    flags = ["-O3"]  # the C++ standard is torch's choice (C++20 for torch >= 2.12)
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = handle.read()
    except OSError:
        cpu = ""
    # Vector width for the epilogues: AVX2 + FMA when the build machine has them.
    if re.search(r"\bavx2\b", cpu) and re.search(r"\bfma\b", cpu):
        flags += ["-mavx2", "-mfma"]
    return flags


def build_record():
    """What the extension will contain (read back by psd_kernels.tools.info), CUDA part decided here."""
    record = {"cuda": False, "cuda_reason": None, "cuda_archs": None, "cuda_arch_source": None, "cuda_home": None}
    cuda_home, reason = None, None
    if os.environ.get("PSD_SKIP_CUDA_BUILD") == "1":
        reason = "PSD_SKIP_CUDA_BUILD=1 was set at build time"
    else:
        cuda_home, reason = find_cuda_home()
    if cuda_home:
        # torch.utils.cpp_extension reads CUDA_HOME once, when it is imported
        os.environ["CUDA_HOME"] = cuda_home
    import torch

    record["torch"], record["torch_cuda"] = torch.__version__, torch.version.cuda
    record["cxx_flags"] = " ".join(cpu_flags())
    if cuda_home and torch.version.cuda is None:
        cuda_home, reason = None, f"torch {torch.__version__} was built without CUDA"
    if cuda_home:
        try:
            check_toolkit(cuda_home, torch)
            archs, source = cuda_archs(cuda_home, torch)
        except CudaSkipped as exc:
            cuda_home, reason = None, str(exc)
    if cuda_home:
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        record.update(cuda=True, cuda_archs=archs, cuda_arch_source=source, cuda_home=cuda_home)
    else:
        record["cuda_reason"] = reason
    return record


def cpu_only_line(record):
    """The one line a CPU-only build prints: why the CUDA part is missing and how to get it."""
    line = f"building psd_kernels._C: CPU only; the CUDA part is skipped because {record['cuda_reason']}"
    if record["torch_cuda"] and os.environ.get("PSD_SKIP_CUDA_BUILD") != "1":
        line += (f". For it, point CUDA_HOME at a CUDA {record['torch_cuda'].split('.')[0]}.x toolkit "
                 f"(torch's CUDA is {record['torch_cuda']}) and reinstall")
    return line


def extension(record):
    """psd_kernels._C as the record describes it: the CPU sources, plus the CUDA part when record["cuda"]."""
    from torch.utils import cpp_extension

    sources = ["csrc/psd_loss.cpp", "csrc/psd_epilogue_cpu.cpp", "csrc/psd_siglip.cpp", "csrc/psd_siglip_cpu.cpp"]
    define_macros = []
    include_dirs = [os.path.join(ROOT, "csrc")]
    if record["cuda"]:
        sources += ["csrc/psd_epilogue_cuda.cu", "csrc/psd_siglip_cuda.cu"]
        define_macros.append(("PSD_WITH_CUDA", None))
        # the torch wheel ships the CUDA library headers (cuBLAS, ...) under nvidia/cu*/include
        site = sysconfig.get_paths()["purelib"]
        include_dirs += sorted(glob.glob(os.path.join(site, "nvidia", "cu*", "include")))
    hex_record = "x" + json.dumps(record, sort_keys=True).encode().hex()
    define_macros.append(("PSD_BUILD_RECORD_HEX", hex_record))
    kind = cpp_extension.CUDAExtension if record["cuda"] else cpp_extension.CppExtension
    if record["cuda"]:
        log(f"building psd_kernels._C: CPU + CUDA (CUDA_HOME={record['cuda_home']}, archs {record['cuda_archs']}: "
            f"{record['cuda_arch_source']})")
    else:
        log(cpu_only_line(record))
    log(f"C++ flags: {record['cxx_flags']}")
    return kind(name="psd_kernels._C", sources=sources, include_dirs=include_dirs, define_macros=define_macros,
                extra_compile_args={"cxx": record["cxx_flags"].split(), "nvcc": ["-O3"]})


def build_command(record):
    """torch's BuildExtension (ninja) that falls back to the CPU part when the CUDA build fails: only a
    failing CPU build stops the install."""
    from torch.utils import cpp_extension

    class BuildExtension(cpp_extension.BuildExtension.with_options(use_ninja=True)):
        def build_extensions(self):
            if not record["cuda"]:
                return super().build_extensions()
            try:
                return super().build_extensions()
            except Exception as exc:  # nvcc or the CUDA link failed: rebuild without the CUDA part
                first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
                cpu_only = dict(record, cuda=False, cuda_reason=f"the CUDA build failed: {first[:300]}",
                                cuda_archs=None, cuda_arch_source=None, cuda_home=None)
                for ext in self.extensions:  # in place: setuptools has finalised this object
                    vars(ext).update(vars(extension(cpu_only)))
                return super().build_extensions()

    return BuildExtension


# What psd_train and its demo import beyond psd_kernels' torch and numpy: pip install ".[train]".
# The ranges hold the versions requirements.txt pins and lie inside open_clip_torch's own "training"
# extra (tests/test_packaging.py checks both): open_clip_train 3.3's webdataset pipeline needs
# webdataset <= 0.2.86. torchvision comes with open_clip_torch, matched to the installed torch.
TRAIN_EXTRAS = ["open_clip_torch>=3.3.0,<3.4", "pandas", "scikit-learn", "scipy", "mlxtend", "matplotlib",
                "tensorboard", "tqdm", "pillow", "webdataset>=0.2.5,<=0.2.86", "braceexpand"]

_record = build_record()

setup(
    name="psd",
    version="0.1.0",
    description="Fused progressive self-distillation (PSD) contrastive loss for CLIP training",
    packages=find_packages(include=["psd_kernels", "psd_kernels.*", "psd_train", "psd_train.*"]),
    package_data={"psd_train.demo": ["model_configs/*.json"]},
    python_requires=">=3.10",
    install_requires=[_build_policy().torch_requirement(), "numpy"],  # psd_kernels
    extras_require={"train": TRAIN_EXTRAS},  # psd_train and psd_train.demo
    # psd_train finds models and --psd-eval-data evaluations through this group (psd_train/plugins.py);
    # the demo registers its psd-tiny model and evaluations there
    entry_points={"psd_train.plugins": ["demo = psd_train.demo.plugin:PLUGIN"]},
    ext_modules=[extension(_record)],
    cmdclass={"build_ext": build_command(_record)},
)
