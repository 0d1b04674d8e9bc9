"""The stages of benchmarks/device_check.py, one module each, run in this order:

    correctness.py   every GPU backend against the float64 reference (fails the check on an error)
    peak.py          the bf16 matmul rate, the peak the losses are measured against
    timing.py        forward + backward of the symmetric loss per provider, and the autotuned configs
    fit.py           B = 1,048,576: does one forward + backward fit?

Each stage's run(rec, device, ...) writes markdown lines and CSV rows through one
rows.Recorder (benchmarks/rows.py: the benchmarks' schema and row writer); common.py holds
what several stages share (inputs, the timer, memory, failure text).
"""
