"""The one prepared GPU check: every GPU backend against the reference, then speed and memory.

    python benchmarks/device_check.py [--out DIR] [--budget-s 400]          # on a CUDA machine
    python benchmarks/device_check.py --dry-run --out /tmp/dc              # CPU, TRITON_INTERPRET=1

Builds nothing (build the C++ extension first if it should be checked: `make device-check`
does). Needs only torch and triton: open_clip and inf_cl are used where importable, and
skipped with the reason otherwise. The stages, one module each in benchmarks/device_stages/
(each case failing soft: an exception or OOM is recorded and the next case runs); about 8
minutes in all with the default budget:

1. correctness.py: every GPU backend against the float64 reference (float32, bfloat16,
   float16; every teacher case; awkward sizes), within the first 45% of the budget.
2. peak.py: the bf16 matmul rate, the peak the losses are measured against in the same run.
3. timing.py: forward + backward of the symmetric loss, bf16, B = 4096 .. 65536, D = 512,
   768, per provider of benchmarks/providers.py; then the configs the autotuner picked.
4. fit.py: B = 1,048,576, D = 512, one forward + backward with Triton: does it fit?

Then the targets (this file): the matmul-rate share and the speed-up over open_clip at
B = 32768, D = 512, and the fit.

open_clip on a machine without it: a copy of its loss.py (it needs only torch) is used
from --open-clip-loss PATH (sets PSD_OPEN_CLIP_LOSS) or from .venv/lib/python3*/site-
packages/open_clip/loss.py when the repository's .venv came along.
Rows go to device_check.csv in --out (default: $OUT, else benchmarks/data) through the
benchmarks' one schema and row writer (benchmarks/rows.py: CSV_FIELDS, append_csv; the
version names the commit and whether the tree was clean), the tables to device_check.md.
Exit status 1 when a correctness case fails.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

DRY = "--dry-run" in sys.argv
if DRY:  # must precede the first import of triton
    os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from device_stages import correctness, fit, peak, timing  # noqa: E402
from providers import OPEN_CLIP_LOSS_ENV  # noqa: E402
from psd_kernels.backends import available_backends  # noqa: E402
from psd_kernels.vocabulary import NO_TEACHER  # noqa: E402
from rows import Recorder, version_string  # noqa: E402


def targets(rec, results, rates, fits, b, d, big):
    rec.line("## Targets (default psd-triton variant)")
    rec.line()
    tri = results.get((b, d, NO_TEACHER, "psd-triton"))
    mm = rates.get(("xyT", b, d))
    if tri and mm:
        rec.line(f"- >= 50% of the bf16 matmul rate at B={b}, D={d}: {100 * tri['tflops'] / mm:.0f}% "
                 f"({tri['tflops']:.0f} of {mm:.0f} TFLOP/s) -> {'met' if tri['tflops'] >= 0.5 * mm else 'NOT met'}")
    else:
        rec.line(f"- matmul-rate target at B={b}, D={d}: not measured")
    if tri and tri.get("speedup"):
        rec.line(f"- >= 3x faster than open_clip's ClipLoss at B={b}, D={d}: {tri['speedup']:.2f}x -> "
                 f"{'met' if tri['speedup'] >= 3 else 'NOT met'}")
    else:
        rec.line(f"- speed-up target at B={b}, D={d}: not measured")
    rec.line(f"- B = {big[0]:,}, D = {big[1]} fits on one GPU: "
             f"{'not run' if fits is None else ('met' if fits else 'NOT met')}")
    rec.line()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or str(Path(__file__).parent / "data"))
    parser.add_argument("--budget-s", type=float, default=400.0,
                        help="start no new case after this many seconds (correctness gets the first "
                             "45%%); the one-million case may start up to 30 s later")
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU tensors under TRITON_INTERPRET=1 at tiny sizes: checks the logic only")
    parser.add_argument("--open-clip-loss", default=None, help="path to a copy of open_clip/loss.py if "
                        f"open_clip itself cannot be imported (sets {OPEN_CLIP_LOSS_ENV})")
    args = parser.parse_args(argv)
    if args.open_clip_loss:
        os.environ[OPEN_CLIP_LOSS_ENV] = args.open_clip_loss
    start = time.monotonic()
    end = start + args.budget_s
    if args.dry_run:
        device = torch.device("cpu")
        device_name = "cpu (TRITON_INTERPRET=1 dry run)"
        cases, batches, dims, big, target_b = correctness.DRY_CASES, (32,), (16,), (64, 16), 32
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: run with --dry-run on a CPU")
            return 2
        device = torch.device("cuda")
        device_name = torch.cuda.get_device_name()
        cases, batches, dims = correctness.GPU_CASES, (4096, 16384, 32768, 65536), (512, 768)
        big, target_b = (1 << 20, 512), 32768
    import triton
    rec = Recorder(device_name, version_string(f"triton {triton.__version__}"))
    rec.line(f"# psd device check: {device_name}; {rec.version}; {rec.stamp}")
    rec.line()
    rec.line("backends (bf16): " + ", ".join(f"{k}: {v or 'usable'}"
                                            for k, v in available_backends(device, torch.bfloat16).items()))
    rec.line()
    torch.manual_seed(0)
    failures = correctness.run(rec, device, cases, start + 0.45 * args.budget_s)
    rates = peak.run(rec, device, [(b, d) for d in dims for b in batches], args.dry_run)
    # the symmetric loss's timings until 80% of the budget, then the sigmoid loss's at the first D
    results = timing.run(rec, device, batches, dims, rates, args.dry_run, end - 0.2 * args.budget_s)
    timing.run(rec, device, batches, dims[:1], rates, args.dry_run, end, op="psd_siglip_loss")
    tuned = (batches[-1], big[1], NO_TEACHER, "psd-triton") in results
    fits = fit.run(rec, device, *big, end + 30, tuned=tuned)
    timing.tuned_configs(rec)
    targets(rec, results, rates, fits, target_b, dims[0], big)
    rec.line(f"total {time.monotonic() - start:.0f} s; correctness failures: {failures}")
    path = rec.write(args.out, "device_check")
    print(f"appended rows to {path}; wrote {os.path.join(args.out, 'device_check.md')}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
