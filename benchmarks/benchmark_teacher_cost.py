"""What each teacher source costs in a training step: step time and peak memory relative to plain CLIP.

    .venv/bin/python benchmarks/benchmark_teacher_cost.py                       # psd-tiny and ViT-B-32, CPU
    .venv/bin/python benchmarks/benchmark_teacher_cost.py --models psd-tiny --repeats 3

Each (model, source) pair trains in its own process with `python -m psd_train` on
open_clip_train's synthetic data (one image and caption, --dataset-type synthetic), fp32,
--workers 0, --psd-threads from --threads (default 1), for 2 epochs of --steps optimizer
steps (per model: psd-tiny batch 32, ViT-B-32 batch 8, small enough for a 2-core CPU). Measured in epoch 1,
when every teacher exists (prev_epoch has no teacher in epoch 0):

    step time    median interval between consecutive optimizer steps of epoch 1 (its first
                 step is left out: it follows epoch 0's checkpoint), as CPU time of the
                 process (time.process_time: with one thread, the compute, little disturbed
                 by other processes on the machine) and as wall time
    peak memory  the process's peak resident set size (VmHWM) over epoch 1's steps, reset
                 through /proc/self/clear_refs after epoch 1's first step; glibc returns every
                 buffer above 1 MiB to the OS when it is freed (psd_kernels/tools/peak_memory.py)

Sources (--sources): where the trainer's teacher comes from (psd_train's --psd-teacher choices),
and no_teacher (psd_kernels.vocabulary.NO_TEACHER: --psd-alpha-max 0, PSDLoss is CLIP's loss)
as the baseline: self (alpha 0.5: no extra model), ema and prev_epoch (a copy of the student,
run forward without gradient), distill (a frozen model of the same shape from a local
checkpoint, run forward without gradient). Printed: a table per model with each source's step
time and peak RSS, and both relative to no_teacher (ratio and difference); rows also go to
--out as CSV if given, each with the version (benchmarks/rows.py: the commit and whether the
tree was clean).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

from rows import version_string

from psd_kernels.vocabulary import NO_TEACHER

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {"psd-tiny": {"batch": 32}, "ViT-B-32": {"batch": 8}}
# The trainer flags of each teacher source (psd_train's --psd-teacher) and of the no-teacher baseline.
SOURCE_FLAGS = {
    NO_TEACHER: ["--psd-alpha-max", "0"],
    "self": ["--psd-alpha-max", "0.5", "--psd-schedule", "constant"],
    "ema": ["--psd-alpha-max", "0.5", "--psd-schedule", "constant", "--psd-teacher", "ema"],
    "prev_epoch": ["--psd-alpha-max", "0.5", "--psd-schedule", "constant", "--psd-teacher", "prev_epoch"],
    "distill": ["--psd-alpha-max", "0.5", "--psd-schedule", "constant"],  # + --distill-model/-pretrained
}

CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[1] + "/benchmarks")
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from psd_kernels.tools.peak_memory import _status_kib, release_freed_memory_to_os
from psd_train.main import main

release_freed_memory_to_os()
steps = int(sys.argv[2])
times, cpu, peaks = [], [], []

def after_step(optimizer, args, kwargs):
    times.append(time.perf_counter())
    cpu.append(time.process_time())
    if len(times) == steps + 1:  # epoch 1's first step done: measure from here
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    elif len(times) > steps + 1:
        peaks.append(_status_kib("VmHWM") * 1024)

register_optimizer_step_post_hook(after_step)
main(sys.argv[3:])
def intervals(stamps):
    return [b - a for a, b in zip(stamps[steps:], stamps[steps + 1:])]

print("RESULT " + json.dumps({"step_s": intervals(times), "cpu_s": intervals(cpu), "peak_bytes": max(peaks)}))
"""


def frozen_teacher(model: str, folder: str) -> list[str]:
    """--distill-model/--distill-pretrained flags for a randomly initialised `model` saved to `folder`."""
    import open_clip
    import torch

    from psd_train.demo.model import register_demo_models

    register_demo_models()
    path = os.path.join(folder, f"{model}-teacher.pt")
    torch.save({"state_dict": open_clip.create_model(model).state_dict()}, path)
    return ["--distill-model", model, "--distill-pretrained", path]


def run_one(model: str, source: str, batch: int, steps: int, threads: int, folder: str, distill: list[str]) -> dict:
    from psd_train.demo.model import TRAIN_FLAGS

    model_flags = list(TRAIN_FLAGS) if model == "psd-tiny" else ["--model", model]
    name = f"{model}-{source}"
    argv = [*model_flags, "--dataset-type", "synthetic", "--train-num-samples", str(batch * steps),
            "--batch-size", str(batch), "--epochs", "2", "--workers", "0", "--precision", "fp32",
            "--save-frequency", "0", "--logs", os.path.join(folder, "logs"), "--name", name, "--psd-quiet",
            "--psd-threads", str(threads),
            *SOURCE_FLAGS[source], *(distill if source == "distill" else [])]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = subprocess.run([sys.executable, "-c", CHILD, ROOT, str(steps), *argv], capture_output=True, text=True,
                         env=env, cwd=ROOT)
    shutil.rmtree(os.path.join(folder, "logs", name), ignore_errors=True)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    if run.returncode != 0 or not lines:
        raise SystemExit(f"{name} failed (exit {run.returncode}):\n{run.stderr[-3000:]}")
    result = json.loads(lines[0][len("RESULT "):])
    return {"model": model, "source": source, "batch": batch, "step_s": statistics.median(result["step_s"]),
            "cpu_s": statistics.median(result["cpu_s"]), "peak_mib": result["peak_bytes"] / 2**20}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=tuple(MODELS), default=list(MODELS))
    parser.add_argument("--sources", nargs="+", choices=tuple(SOURCE_FLAGS), default=list(SOURCE_FLAGS),
                        help="teacher sources, and no_teacher (the baseline)")
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per epoch (2 epochs)")
    parser.add_argument("--repeats", type=int, default=1, help="processes per (model, source); medians")
    parser.add_argument("--threads", type=int, default=1, help="--psd-threads of every run (torch CPU threads)")
    parser.add_argument("--out", default=None, help="CSV file for the rows")
    args = parser.parse_args(argv)
    rows, version = [], version_string()
    with tempfile.TemporaryDirectory(prefix="psd_teacher_cost_") as folder:
        for model in args.models:
            batch = MODELS[model]["batch"]
            distill = frozen_teacher(model, folder) if "distill" in args.sources else []
            runs = {source: [] for source in args.sources}
            for repeat in range(args.repeats):
                for source in args.sources:  # interleaved, so machine load hits every source alike
                    runs[source].append(run_one(model, source, batch, args.steps, args.threads, folder, distill))
                    last = runs[source][-1]
                    print(f"{model} {source:10s} repeat {repeat}: {last['step_s']:.3f} s/step, "
                          f"{last['cpu_s']:.3f} CPU s/step, peak {last['peak_mib']:.0f} MiB", flush=True)
            for source, results in runs.items():
                rows.append({"model": model, "source": source, "batch": batch,
                             "step_s": statistics.median(r["step_s"] for r in results),
                             "cpu_s": statistics.median(r["cpu_s"] for r in results),
                             "peak_mib": statistics.median(r["peak_mib"] for r in results), "version": version})
    print()
    for model in args.models:
        mine = [r for r in rows if r["model"] == model]
        base = next((r for r in mine if r["source"] == NO_TEACHER), None)
        print(f"{model}, batch {mine[0]['batch']}, fp32, CPU, {args.threads} thread(s), median of {args.repeats}; "
              f"{version}:")
        print(f"| teacher source | CPU time per step | vs {NO_TEACHER} | wall time per step | vs {NO_TEACHER} | "
              f"peak RSS | vs {NO_TEACHER} |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for r in mine:
            def rel(key):
                return f"{r[key] / base[key]:.2f}x" if base else "-"
            mem_rel = f"{r['peak_mib'] - base['peak_mib']:+.0f} MiB" if base else "-"
            print(f"| {r['source']} | {r['cpu_s'] * 1000:.0f} ms | {rel('cpu_s')} | {r['step_s'] * 1000:.0f} ms | "
                  f"{rel('step_s')} | {r['peak_mib']:.0f} MiB | {mem_rel} |")
        print()
    if args.out:
        with open(args.out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return rows


if __name__ == "__main__":
    main()
