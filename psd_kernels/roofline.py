"""Alias for one release of psd_kernels.tools.roofline: `import psd_kernels.roofline` gives that module and
`python -m psd_kernels.roofline` runs it (use `python -m psd_kernels.tools.roofline`)."""
import importlib
import runpy
import sys

if __name__ == "__main__":
    runpy.run_module("psd_kernels.tools.roofline", run_name="__main__", alter_sys=True)
else:
    sys.modules[__name__] = importlib.import_module("psd_kernels.tools.roofline")
