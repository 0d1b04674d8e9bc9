"""Alias for one release of psd_kernels.tools.compile_check: `import psd_kernels.compile_check` gives that module and
`python -m psd_kernels.compile_check` runs it (use `python -m psd_kernels.tools.compile_check`)."""
import importlib
import runpy
import sys

if __name__ == "__main__":
    runpy.run_module("psd_kernels.tools.compile_check", run_name="__main__", alter_sys=True)
else:
    sys.modules[__name__] = importlib.import_module("psd_kernels.tools.compile_check")
