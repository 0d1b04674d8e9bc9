"""`make demo`: build the noisy demo data, train CLIP and PSD on it on CPU, compare them.

    .venv/bin/python -m psd_train.demo                    # 3.7 minutes measured on a shared 2-core machine
    .venv/bin/python -m psd_train.demo --epochs 2 --n-train 1000   # a quick look

Steps (each with a progress bar): build the captioned-MNIST demo data with 50% of the
training captions swapped between images (psd_train.demo.data), train psd-tiny with the
plain CLIP loss (alpha = 0), train it again from the same initialisation, in the same batch
order, with PSD, evaluate both (zero-shot, retrieval, linear probe, distribution shift;
psd_train.demo.evaluate), print the table and save a plot of the loss and accuracy curves and
the alpha schedule. Everything lands under --out (default runs/demo): the data, each run's
open_clip_train log, TensorBoard events, psd_steps.csv / psd_metrics.csv and checkpoints.
One seed is one draw: runs/ of `python -m psd_train.sweep` holds the paired-seed comparison.
"""
from __future__ import annotations

import argparse
import os
import shutil
import time

from psd_train.demo.data import build_demo_data
from psd_train.demo.report import plot_runs, results_table
from psd_train.demo.sweep import METHODS, train_flags
from psd_train.main import main as train_main

TABLE_METRICS = ("zeroshot_top1", "i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5", "linear_probe_top1", "shift_mean_top1")


def _threads(requested: int | None) -> int | None:
    """One torch thread when the machine is already busy (OpenMP threads that wait on each
    other under oversubscription can make a step several times slower); else torch's default."""
    if requested is not None:
        return requested
    return 1 if os.getloadavg()[0] > 1.0 else None


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m psd_train.demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--noise", type=float, default=0.5, help="fraction of training captions swapped")
    p.add_argument("--method", choices=[m for m in METHODS if m != "clip"], default="within_modality",
                   help="the PSD teacher to compare with CLIP (psd_train.demo.sweep.METHODS)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--eval-every", type=int, default=2, help="epochs between evaluations (curves)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: 1 on a busy machine)")
    a = p.parse_args(argv)

    start = time.time()
    threads = _threads(a.threads)
    print(f"[1/4] demo data: {a.n_train} captioned MNIST digits, {a.noise:.0%} of the captions swapped "
          f"-> {a.out}/data", flush=True)
    data = build_demo_data(os.path.join(a.out, "data"), noise=a.noise, seed=a.seed, n_train=a.n_train,
                           n_val=100, n_test=a.n_test, progress=True)
    runs = {"CLIP": "clip", f"PSD ({a.method})": a.method}
    logs = os.path.join(a.out, "logs")
    metrics, log_dirs = {}, {}
    for i, (label, method) in enumerate(runs.items(), start=2):
        print(f"[{i}/4] training {label}: psd-tiny, {a.epochs} epochs, batch {a.batch_size}, "
              f"flags {' '.join(METHODS[method])}" + (f", {threads} thread" if threads else ""), flush=True)
        shutil.rmtree(os.path.join(logs, method), ignore_errors=True)  # the demo starts afresh each time
        result = train_main([*train_flags(data, batch_size=a.batch_size, epochs=a.epochs, lr=a.lr,
                                          warmup=a.warmup, seed=a.seed, threads=threads),
                             *METHODS[method], "--logs", logs, "--name", method, "--psd-quiet",
                             "--psd-progress", "--psd-eval-every", str(a.eval_every)])
        metrics[label], log_dirs[label] = result["metrics"], result["log_dir"]

    plot = plot_runs(log_dirs, os.path.join(a.out, "demo.png"))
    print(f"\n[4/4] results on {a.n_test} held-out digits (percent; one seed, caption noise {a.noise:.0%}):\n")
    print(results_table(metrics, TABLE_METRICS))
    shifts = sorted(k for k in next(iter(metrics.values())) if k.startswith("shift_") and k != "shift_mean_top1")
    print("\nzero-shot under each distribution shift (percent):\n")
    print(results_table(metrics, shifts))
    print(f"\nplot: {plot}\nlogs: {logs}/<run>/ (out.log, psd_steps.csv, psd_metrics.csv, tensorboard/, "
          f"checkpoints/)\nTensorBoard: .venv/bin/tensorboard --logdir {logs}\n"
          f"total time {time.time() - start:.0f} s")
    return {"metrics": metrics, "plot": plot, "log_dirs": log_dirs}

