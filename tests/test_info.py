"""The CUDA architecture policy and report (psd_kernels.tools.info, csrc/psd_epilogue_cuda.cu).

    .venv/bin/python -m pytest tests/test_info.py -q

On CPU: parsing nvcc's arch listing, the default arch list with and without a visible
GPU, the sm_XY formatting, the error text for an unbuilt arch (from a capability given
as an argument) and that the extension reports the archs it was compiled for.
The launch check itself needs a GPU whose arch was not built, and is skipped otherwise.
"""
import importlib.util
import os

import pytest
import torch

from psd_kernels.tools import info

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NVCC_13 = "\n".join(f"compute_{c}" for c in (75, 80, 86, 87, 88, 89, 90, 100, 110, 103, 120, 121)) + "\n"
NVCC_11_8 = "\n".join(f"compute_{c}" for c in (35, 37, 50, 52, 53, 60, 61, 62, 70, 72, 75, 80, 86, 87, 89, 90))


def test_nvcc_listing_is_parsed():
    assert info.nvcc_arch_codes(NVCC_13) == [75, 80, 86, 87, 88, 89, 90, 100, 103, 110, 120, 121]
    assert info.nvcc_arch_codes("compute_90a\ncompute_100\nsm_80\n") == [90, 100]


def test_default_archs_without_a_gpu_are_the_training_archs_nvcc_supports():
    assert info.default_cuda_archs(NVCC_13, []) == "8.0;9.0;10.0"
    assert info.default_cuda_archs(NVCC_11_8, []) == "8.0;9.0"       # no sm_100 before CUDA 12.8


def test_default_archs_with_a_gpu_are_its_own():
    assert info.default_cuda_archs(NVCC_13, [(9, 0)]) == "9.0"
    assert info.default_cuda_archs("", [(9, 0), (8, 6), (9, 0)]) == "8.6;9.0"


def test_default_archs_errors_name_the_flag():
    with pytest.raises(ValueError, match="listed no compute_XY.*PSD_CUDA_ARCHS"):
        info.default_cuda_archs("nvcc fatal: unknown option", [])
    with pytest.raises(ValueError, match="none of the default archs 8.0, 9.0, 10.0.*compute_75.*PSD_CUDA_ARCHS"):
        info.default_cuda_archs("compute_70\ncompute_75\n", [])


def test_archs_are_formatted_as_sm():
    assert info.format_archs([80, 90, 100]) == "sm_80, sm_90, sm_100"
    assert info.format_archs([]) == "none"


def test_setup_loads_the_policy_by_path():
    """setup.py loads psd_kernels/tools/info.py by path, without the package (its _C may be stale)."""
    spec = importlib.util.spec_from_file_location("_psd_build_info",
                                                  os.path.join(ROOT, "psd_kernels", "tools", "info.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.default_cuda_archs(NVCC_13, []) == "8.0;9.0;10.0"


def _cuda_extension():
    built = info.build_info()
    if not built["cuda_built"]:
        pytest.skip(f"CUDA part not built: {built['cuda_reason']}")
    from psd_kernels import _C
    return _C, built


def test_extension_reports_its_compiled_archs():
    _C, built = _cuda_extension()
    codes = _C.cuda_archs()
    assert codes and all(isinstance(c, int) and c >= 50 for c in codes)
    assert built["cuda_archs"] == info.format_archs(codes)
    if built["cuda_arch_source"].startswith("default"):   # the policy's list is what nvcc compiled
        assert [int(a.replace(".", "")) for a in built["cuda_arch_list"].split(";")] == codes


def test_unbuilt_arch_error_names_the_arch_the_build_and_the_flag():
    _C, built = _cuda_extension()
    text = _C.cuda_arch_error(7, 5)
    assert "sm_75" in text and f"built for {built['cuda_archs']}" in text
    assert "PSD_CUDA_ARCHS=7.5 pip install --no-build-isolation -e ." in text
    assert "PSD_CUDA_ARCHS=12.0 " in _C.cuda_arch_error(12, 0) and "sm_120" in _C.cuda_arch_error(12, 0)


def test_info_command_lists_the_archs(capsys):
    _, built = _cuda_extension()
    assert info.main([]) == 0
    out = capsys.readouterr().out
    assert f"cuda_archs: {built['cuda_archs']}" in out and "cuda_arch_source:" in out


def test_launch_on_an_unbuilt_arch_raises_before_running():
    _C, _ = _cuda_extension()
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine")
    major, minor = torch.cuda.get_device_capability()
    covered = any(code // 10 == major and code % 10 <= minor for code in _C.cuda_archs())
    if covered:
        pytest.skip(f"this GPU's arch sm_{major}{minor} is covered by the build ({info.format_archs(_C.cuda_archs())})")
    x = torch.randn(4, 8, device="cuda")
    with pytest.raises(RuntimeError, match=f"cuda:0 .*sm_{major}{minor}.*PSD_CUDA_ARCHS={major}.{minor}"):
        torch.ops.psd.forward(x, x, torch.tensor(2.0, device="cuda"), torch.zeros(4, device="cuda"),
                              torch.arange(4, device="cuda"), None, None, None, None)
