"""Alias for one release of psd_kernels.backends.triton.launcher: `import psd_kernels.triton_psd` gives that module."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module("psd_kernels.backends.triton.launcher")
