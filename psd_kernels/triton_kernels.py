"""Alias for one release of psd_kernels.backends.triton.kernels: `import psd_kernels.triton_kernels` gives that module."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module("psd_kernels.backends.triton.kernels")
