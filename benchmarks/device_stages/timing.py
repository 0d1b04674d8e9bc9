"""Stage 3 of benchmarks/device_check.py: forward + backward of the symmetric loss per provider.

bf16, B = 4096 .. 65536, D = 512, 768, timed with triton.testing.do_bench (median, p20, p80),
peak memory. The providers are the CPU benchmark's (benchmarks/providers.py, one list):
psd-triton (and, at D = 512 without a teacher, its variant [second pass]), psd-cpp,
openclip-clip (no_teacher) and openclip-distill (ClipLoss + DistillClipLoss, a separate
teacher of width D), inf-cl (no_teacher, D a multiple of 256). Achieved TFLOP/s counts
6 B^2 D + 2 B^2 D' (FLOP_FORMULA), recomputation not counted. The autotuned psd results are
checked against an fp32 reference up to B = 16384. Then tuned_configs: what the autotuner
picked. Rows: op psd_clip_loss, x_name B, metrics time / throughput / memory (oom / error on a
failure), as the CPU benchmark's.
"""
from __future__ import annotations

import time

import torch

import psd_kernels
from device_stages.common import bench, free, peak_gib, short
from providers import Case, all_providers, make_inputs
from psd_kernels.tools import against_reference
from psd_kernels.tools.roofline import FLOP_FORMULA
from psd_kernels.vocabulary import NO_TEACHER

# The timed providers of each op, from the shared list (benchmarks/providers.py): the GPU backends and
# their peers.
GPU_PROVIDERS = {"psd_clip_loss": ("psd-triton", "psd-cpp", "openclip-clip", "openclip-distill", "inf-cl"),
                 "psd_siglip_loss": ("psd-siglip-triton", "psd-siglip-cpp", "openclip-siglip")}
TITLES = {"psd_clip_loss": "the symmetric loss", "psd_siglip_loss": "the sigmoid (SigLIP) loss"}
TEACHERS = (NO_TEACHER, "separate")
# bfloat16 inputs against an fp32 reference on the same rounded inputs: the tensor-core tolerance
TOL_AUTOTUNED_VS_FP32 = against_reference.tolerance(torch.bfloat16, "tensor_cores")


def gpu_providers(device, variants, op="psd_clip_loss"):
    """The timed providers of `op` (GPU_PROVIDERS, the psd-triton variants when `variants`) from
    the shared list, and {name: why it cannot run here} for the others of GPU_PROVIDERS[op]."""
    providers, skipped = all_providers(device, torch.bfloat16, variants=variants)
    chosen = [p for p in providers if p.op == op and p.name.split(" ")[0] in GPU_PROVIDERS[op]]
    return chosen, {name: why for name, why in skipped.items() if name in GPU_PROVIDERS[op]}


def run(rec, device, batches, dims, rates, dry, budget_end, op="psd_clip_loss") -> dict:
    """Time every provider of `op` at every (B, D, teacher); {(B, D, teacher, provider): cells}."""
    rec.line(f"## Forward + backward of {TITLES[op]}, bf16")
    rec.line()
    rec.line(f"FLOPs counted: {FLOP_FORMULA}. % matmul: of the bf16 x @ y^T rate at that shape. Baseline of "
             "the speed-up: open_clip (ClipLoss, or ClipLoss + DistillClipLoss with the teacher; SigLipLoss).")
    rec.line()
    _, skipped = gpu_providers(device, False, op)
    for name, why in skipped.items():
        rec.line(f"- {name} not run: {why}")
    rec.line()
    told = set()  # (provider, reason) already printed
    rec.line("| B | D | teacher | provider | p50 ms | p20 ms | p80 ms | TFLOP/s | % matmul | peak GiB | "
             "x faster than open_clip | check vs fp32 ref |")
    rec.line("|---|---|---|---|---|---|---|---|---|---|---|---|")
    results = {}
    last = {}  # (provider, D, teacher) -> (B, p50 ms) of its previous point, to foresee the next
    for d in dims:
        for b in batches:
            for teacher in TEACHERS:
                case = Case(b, d, teacher, "bfloat16")
                inputs = None  # made once per point, on first use: the same inputs for every provider
                times = {}
                providers, _ = gpu_providers(device, teacher == NO_TEACHER and d == dims[0], op)
                for provider in providers:
                    name = provider.name
                    why = provider.unavailable(case, device)
                    if why is not None:
                        if (name, why) not in told:
                            told.add((name, why))
                            rec.line(f"| {b} | {d} | {teacher} | {name} | not run: {why} | | | | | | | |")
                        continue
                    prev = last.get((name, d, teacher))
                    # do_bench runs >= ~10 calls; the cost grows as B^2
                    foreseen = 10e-3 * prev[1] * (b / prev[0]) ** 2 if prev else 0.0
                    if time.monotonic() + foreseen > budget_end:
                        rec.line(f"| {b} | {d} | {teacher} | {name} | skipped (time budget) | | | | | | | |")
                        continue
                    if inputs is None:
                        inputs = make_inputs(case, device)
                    cells = _bench_one(rec, device, case, inputs, provider, rates, dry)
                    times[name] = cells
                    if cells:
                        last[(name, d, teacher)] = (b, cells["p50"])
                    free()
                base = next((v["p50"] for k, v in times.items() if k.startswith("openclip") and v), None)
                for name, cells in times.items():
                    if not cells:
                        continue
                    speed = f"{base / cells['p50']:.2f}" if base and not name.startswith("openclip") else ""
                    rec.line(f"| {b} | {d} | {teacher} | {name} | {cells['p50']:.3f} | {cells['p20']:.3f} | "
                             f"{cells['p80']:.3f} | {cells['tflops']:.0f} | {cells['pct']} | {cells['peak']} | "
                             f"{speed} | {cells['check']} |")
                    results[(b, d, teacher, name)] = dict(cells, speedup=base / cells["p50"] if base else None)
    rec.line()
    return results


def _bench_one(rec, device, case, inputs, provider, rates, dry):
    """Time one provider at one point; returns its cells, or {} after recording the failure."""
    b, d, name = case.batch, case.dim, provider.name
    config = dict(case.config(), timer="triton.testing.do_bench" if not dry else "perf_counter")
    try:
        fn = provider.build(case)
        leaves = (inputs["image"], inputs["text"], inputs["scale"])
        op = provider.op

        def step():
            return torch.autograd.grad(fn(inputs), leaves)

        check = _check_autotuned(case, inputs, fn, op) if not name.startswith("openclip") and b <= 16384 else ""
        p50, p20, p80 = bench(step, dry)
        peak = peak_gib(step, device)
        flops = case.flops("full")
        tflops = flops / (p50 * 1e-3) / 1e12
        mm = rates.get(("xyT", b, d))
        pct = f"{100 * tflops / mm:.0f}%" if mm else ""
        rec.row(op, name, "full", "time", "ms", "B", b, p50, p20, p80, config)
        rec.row(op, name, "full", "throughput", "TFLOP/s", "B", b, tflops,
                flops / (p80 * 1e-3) / 1e12, flops / (p20 * 1e-3) / 1e12, config)
        if peak != "":
            mib = peak * 1024
            rec.row(op, name, "full", "memory", "MiB", "B", b, mib, mib, mib,
                    dict(case.config(), method="torch.cuda.max_memory_allocated() minus memory_allocated() "
                                               "before the call"))
        return dict(p50=p50, p20=p20, p80=p80, tflops=tflops, pct=pct,
                    peak=f"{peak:.2f}" if peak != "" else "", check=check)
    except Exception as exc:  # OOM or a broken provider: record, go on
        rec.line(f"| {b} | {d} | {case.teacher} | {name} | {short(exc)} | | | | | | | |")
        gib = float("nan")
        rec.row(provider.op, name, "full", "oom" if isinstance(exc, torch.OutOfMemoryError) else "error",
                "GiB", "B", b, gib, gib, gib, dict(case.config(), message=short(exc)))
        return {}


def _check_autotuned(case, inputs, fn, op):
    """A psd provider (autotuned) or Inf-CL against the fp32 reference on the same bf16 inputs."""
    try:
        leaves = (inputs["image"], inputs["text"], inputs["scale"])
        loss = fn(inputs)
        got = [g.float() for g in (loss.detach(),) + torch.autograd.grad(loss, leaves)]
        xf = inputs["image"].detach().float().requires_grad_()
        yf = inputs["text"].detach().float().requires_grad_()
        sf = inputs["scale"].detach().clone().requires_grad_()
        kw = {}
        if case.teacher == "separate":
            kw = dict(teacher_image=inputs["teacher_image"].float(), teacher_text=inputs["teacher_text"].float(),
                      teacher_scale=inputs["teacher_scale"])
        if op == "psd_siglip_loss":
            ref = psd_kernels.psd_siglip_loss(xf, yf, sf, inputs["bias"].detach(), alpha_image=case.alpha,
                                              backend="reference", **kw)
        else:
            ref = psd_kernels.psd_clip_loss(xf, yf, sf, alpha_image=case.alpha, backend="reference", **kw)
        want = [ref.detach()] + list(torch.autograd.grad(ref, (xf, yf, sf)))
        worst = max(against_reference.errors(got, want))
        return f"{worst:.1e} {'ok' if worst <= TOL_AUTOTUNED_VS_FP32 else 'FAIL'}"
    except Exception as exc:
        return f"FAIL {short(exc)}"
    finally:
        free()


def tuned_configs(rec):
    """What the autotuner picked, per key (swept length bucket, D, D', teacher, ..., dtypes)."""
    from triton.runtime.autotuner import Autotuner

    from psd_kernels.backends.triton import kernels as triton_kernels
    rec.line("## Autotuned configs")
    rec.line()
    picks = [(name, key, config) for name, kernel in vars(triton_kernels).items() if isinstance(kernel, Autotuner)
             for key, config in kernel.cache.items()]
    for name, key, config in picks:
        rec.line(f"- {name} {key}: {config}")
    if not picks:
        rec.line("none (a single config each, as under the interpreter)")
    rec.line()
