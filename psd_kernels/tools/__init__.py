"""Developer tools: nothing in the runtime path (the public API, the assembly, the backends)
imports this package (tests/test_layout.py checks).

    python -m psd_kernels.tools.compile_check   every Triton launch compiled for sm_80/90/100
    python -m psd_kernels.tools.roofline        FLOPs, HBM bytes and predicted time on Hopper
    python -m psd_kernels.tools.info            what the C++ extension was built with
    launches.py                                 the launches of the public API, recorded on meta tensors
"""
