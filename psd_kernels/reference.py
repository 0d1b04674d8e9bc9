"""Alias for one release of psd_kernels.backends.reference: `import psd_kernels.reference` gives that module."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module("psd_kernels.backends.reference")
