"""Alias for one release of psd_kernels.tools.info: `import psd_kernels.info` gives that module and
`python -m psd_kernels.info` runs it (use `python -m psd_kernels.tools.info`)."""
import importlib
import runpy
import sys

if __name__ == "__main__":
    runpy.run_module("psd_kernels.tools.info", run_name="__main__", alter_sys=True)
elif __name__ != "psd_kernels.info":
    # loaded by file path without the package (setup.py's _arch_policy: the package would load a
    # stale or missing psd_kernels._C): run the new module's file in this namespace
    import os

    _path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tools", "info.py")
    with open(_path) as _file:
        exec(compile(_file.read(), _path, "exec"))
else:
    sys.modules[__name__] = importlib.import_module("psd_kernels.tools.info")
