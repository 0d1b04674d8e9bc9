"""Alias for one release of psd_kernels.backends.triton.grid: `import psd_kernels.grid` gives that module."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module("psd_kernels.backends.triton.grid")
