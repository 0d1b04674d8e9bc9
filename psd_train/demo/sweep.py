"""The paired-seed comparison: CLIP vs each PSD teacher at several caption-noise levels.

    python -m psd_train.sweep --out runs/sweep                 # run (resumable), then summarise
    python -m psd_train.sweep --out runs/sweep --summarize     # only the tables, from results.csv

Every (seed, noise) pair gets its own demo data (the seed fixes the split, placement,
templates and which captions are swapped) and every method trains on it from the same
initialisation in the same batch order (psd_train seeds the model from --seed and each
epoch from (--seed, epoch)), so methods are compared on paired seeds and the spread
between seeds does not hide the difference between methods. Runs are ordered seed by
seed and noise by noise, so an interrupted sweep leaves complete pairs; finished runs
are rows of <out>/results.csv and are skipped when the sweep is started again.
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import time

from psd_train.demo.data import build_demo_data
from psd_train.demo.model import TRAIN_FLAGS
from psd_train.demo.report import summarize
from psd_train.errors import run_command
from psd_train.main import main as train_main
from psd_train.runlog import append_csv_rows

# method -> its PSD flags. alpha ramps linearly from 0 to ALPHA over the run.
ALPHA = "0.3"
METHODS = {
    "clip": ["--psd-alpha-max", "0"],
    "self": ["--psd-alpha-max", ALPHA],
    "self_scale7": ["--psd-alpha-max", ALPHA, "--psd-teacher-scale", "7"],
    "ema": ["--psd-alpha-max", ALPHA, "--psd-teacher", "ema", "--psd-ema-momentum", "0.95"],
    "prev_epoch": ["--psd-alpha-max", ALPHA, "--psd-teacher", "prev_epoch"],
    "within_modality": ["--psd-alpha-max", ALPHA, "--psd-teacher-mode", "within_modality"],
}
RESULTS = "results.csv"


def train_flags(data: dict, *, batch_size: int, epochs: int, lr: float, warmup: int, seed: int,
                threads: int | None) -> list[str]:
    """The open_clip_train + psd flags shared by every method (the demo uses them too)."""
    flags = [*TRAIN_FLAGS, "--train-data", data["train_csv"], "--dataset-type", "csv", "--csv-separator", "\t",
             "--csv-img-key", "filepath", "--csv-caption-key", "title", "--batch-size", str(batch_size),
             "--epochs", str(epochs), "--lr", str(lr), "--warmup", str(warmup), "--workers", "0",
             "--seed", str(seed), "--save-frequency", "0", "--report-to", "tensorboard",
             "--psd-eval-data", data["root"]]
    if threads is not None:
        flags += ["--psd-threads", str(threads)]
    return flags


def done_runs(path: str) -> set:
    if not os.path.isfile(path):
        return set()
    with open(path) as f:
        return {(r["method"], float(r["noise"]), int(r["seed"])) for r in csv.DictReader(f)}


def run_sweep(a) -> None:
    results = os.path.join(a.out, RESULTS)
    done = done_runs(results)
    methods = a.methods or list(METHODS)
    total = len(a.seeds) * len(a.noise) * len(methods)
    count = 0
    for seed in a.seeds:
        for noise in a.noise:
            data = build_demo_data(os.path.join(a.out, "data", f"noise{noise}_seed{seed}"), noise=noise, seed=seed,
                                   n_train=a.n_train, n_val=a.n_val, n_test=a.n_test, progress=False)
            for method in methods:
                count += 1
                if (method, noise, seed) in done:
                    continue
                name = f"{method}-noise{noise}-seed{seed}"
                shutil.rmtree(os.path.join(a.out, "logs", name), ignore_errors=True)  # a run cut off earlier
                start = time.time()
                print(f"[{count}/{total}] {name}", flush=True)
                result = train_main([*train_flags(data, batch_size=a.batch_size, epochs=a.epochs, lr=a.lr,
                                                  warmup=a.warmup, seed=seed, threads=a.threads),
                                     *METHODS[method], "--logs", os.path.join(a.out, "logs"), "--name", name,
                                     "--psd-quiet"])
                row = {"method": method, "noise": noise, "seed": seed, "epochs": a.epochs, "n_train": a.n_train,
                       "wall_s": round(time.time() - start, 1), **result["metrics"]}
                append_csv_rows(results, tuple(row), [row])
                print(f"    {row['wall_s']} s  zero-shot {row.get('zeroshot_top1', float('nan')):.3f}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m psd_train.sweep", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/sweep")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.3, 0.5])
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=None)
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-val", type=int, default=100)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (1 suits a shared machine)")
    p.add_argument("--summarize", action="store_true", help="only print the tables from results.csv")
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    if not a.summarize:
        run_sweep(a)
    print(summarize(os.path.join(a.out, RESULTS)))
    return 0


if __name__ == "__main__":
    sys.exit(run_command("python -m psd_train.sweep", "psd_train.demo.sweep:main"))
