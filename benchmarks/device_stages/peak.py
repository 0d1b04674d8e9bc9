"""Stage 2 of benchmarks/device_check.py: the bf16 matmul rate, the peak the losses are measured against.

An 8192^3 torch.mm and x @ y^T at each benchmark shape (B, D), timed as stage 3 times the
losses. Rows: op matmul_bf16, metric throughput (TFLOP/s), x_name shape.
"""
from __future__ import annotations

import torch

from device_stages.common import bench, free, short


def run(rec, device, shapes, dry) -> dict:
    """bf16 TFLOP/s of a square product and of x @ y^T at each (B, D): {(kind, B, D): TFLOP/s}."""
    rec.line("## bf16 matmul rate (torch.matmul)")
    rec.line()
    rec.line("| product | p50 ms | TFLOP/s |")
    rec.line("|---|---|---|")
    rates = {}
    square = 256 if dry else 8192
    todo = [("square", square, square)] + [("xyT", b, d) for b, d in shapes]
    for kind, b, d in todo:
        try:
            if kind == "square":
                a = torch.randn(b, b, device=device, dtype=torch.bfloat16)
                c = torch.randn(b, b, device=device, dtype=torch.bfloat16)
                flops = 2.0 * b ** 3
                name = f"{b}^3"
                fn = lambda: a @ c  # noqa: E731
            else:
                a = torch.randn(b, d, device=device, dtype=torch.bfloat16)
                flops = 2.0 * b * b * d
                name = f"({b}x{d}) @ ({d}x{b})"
                fn = lambda: a @ a.T  # noqa: E731
            p50, p20, p80 = bench(fn, dry)
            tf = flops / (p50 * 1e-3) / 1e12
            rates[(kind, b, d)] = tf
            rec.line(f"| {name} | {p50:.3f} | {tf:.0f} |")
            rec.row("matmul_bf16", "torch", "forward", "throughput", "TFLOP/s", "shape", name, tf,
                    flops / (p80 * 1e-3) / 1e12, flops / (p20 * 1e-3) / 1e12, dict(dtype="bfloat16"))
        except Exception as exc:
            rec.line(f"| {kind} {b}x{d} | {short(exc)} | |")
        finally:
            a = c = None
            free()
    rec.line()
    return rates
