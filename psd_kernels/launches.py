"""Alias for one release of psd_kernels.tools.launches: `import psd_kernels.launches` gives that module."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module("psd_kernels.tools.launches")
