"""Alias for one release of psd_kernels.backends.cpp: `import psd_kernels.cpp` gives that module."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module("psd_kernels.backends.cpp")
