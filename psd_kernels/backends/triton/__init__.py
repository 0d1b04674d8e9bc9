"""The Triton backend: launcher (host code, autograd, the backend contract), kernels, grid.

    launcher.py   registered as backend "triton" (psd_kernels.backends)
    kernels.py    the @triton.jit kernels, their configs and prune functions
    grid.py       the one-sweep grid (row groups x column splits); pure arithmetic

Nothing is imported here, so psd_kernels.backends.triton.grid (used by psd_kernels.tools.roofline)
loads without Triton or torch. Inside this package `import triton` is the Triton package (absolute
imports).
"""
