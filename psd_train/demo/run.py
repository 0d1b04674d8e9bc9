"""`make demo`: CLIP on clean and on noisy captions, and a PSD teacher on the noisy ones, on CPU.

    .venv/bin/python -m psd_train.demo                    # 4 min 49 s measured on a shared 2-core machine
    .venv/bin/python -m psd_train.demo --epochs 2 --n-train 500   # a quick look

Steps: first, what the fused losses buy: psd's softmax loss with a separate teacher beside
open_clip's ClipLoss + DistillClipLoss and psd's sigmoid loss beside open_clip's SigLipLoss, at
B = 4096, D = 512, time and peak extra memory measured on the spot in a few seconds
(psd_train.demo.losses_side_by_side; --loss-batch 0 skips it). Then build the captioned-MNIST
demo data twice from one seed, once with clean captions and
once with 50% of the training captions swapped between images (psd_train.demo.data; same
images, same clean captions); train psd-tiny with the plain CLIP loss on both (two processes
side by side when the machine has two cores); then train it on the noisy captions with
a PSD teacher (default born_again: the noisy CLIP run's final checkpoint as a frozen
teacher), from the same initialisation in the same batch order. Each run is evaluated
(zero-shot, retrieval, linear probe, distribution shift, memorisation of the swapped training
pairs; psd_train.demo.evaluate); the demo prints the table and saves a plot of the loss and
accuracy curves (clean-caption CLIP as the reference line) and the alpha schedule. Everything
lands under --out (default runs/demo): the data, each run's open_clip_train log, TensorBoard
events, psd_steps.csv / psd_metrics.csv and checkpoints.
One seed is one draw: `python -m psd_train.demo.sweep` gives the paired-seed comparison (docs/demo.md).
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor

from psd_train.demo import losses_side_by_side
from psd_train.demo.data import build_demo_data
from psd_train.demo.plugin import PLUGIN
from psd_train.demo.report import plot_runs, results_table
from psd_train.demo.sweep import METHODS, method_flags, train_flags
from psd_train.main import main as train_main

TABLE_METRICS = ("zeroshot_top1", "i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5", "linear_probe_top1", "shift_mean_top1",
                 "memorised_r1")
DEFAULT_METHOD = "born_again"


def _threads(requested: int | None) -> int | None:
    """One torch thread when the machine is already busy (OpenMP threads that wait on each
    other under oversubscription can make a step several times slower); else torch's default."""
    if requested is not None:
        return requested
    return 1 if os.getloadavg()[0] > 1.0 else None


def _parallel(requested: bool | None) -> bool:
    """Train the two CLIP runs side by side (one thread each): when asked, or by default on a
    machine with two cores or more (two one-thread runs use two cores better than one run on
    two threads, busy machine or not)."""
    if requested is not None:
        return requested
    return (os.cpu_count() or 1) >= 2


def _train(argv: list[str]) -> dict:
    """One trainer run with the demo's plugin (psd-tiny, the demo evaluations), in this process or
    in a pool's process: each process registers the model itself, inside train_main."""
    return train_main(argv, plugins=[PLUGIN])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m psd_train.demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--noise", type=float, default=0.5, help="fraction of training captions swapped")
    p.add_argument("--method", choices=[m for m in METHODS if m != "clip"], default=DEFAULT_METHOD,
                   help="the PSD teacher to compare with CLIP (psd_train.demo.sweep.METHODS)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--eval-every", type=int, default=5, help="epochs between evaluations (curves)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--loss-batch", type=int, default=4096,
                   help="batch of the first step, psd's losses beside open_clip's (0: skip it)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: 1 on a busy machine)")
    p.add_argument("--no-clean-reference", dest="clean_reference", action="store_false",
                   help="skip CLIP on clean captions (the reference line)")
    parallel = p.add_mutually_exclusive_group()
    parallel.add_argument("--parallel", dest="parallel", action="store_true", default=None,
                          help="train the two CLIP runs in two processes at once (default: with 2 cores or more)")
    parallel.add_argument("--sequential", dest="parallel", action="store_false")
    a = p.parse_args(argv)

    start = time.time()
    threads = _threads(a.threads)
    losses = None
    if a.loss_batch:
        print(f"[1/5] the fused losses beside open_clip's: B = {a.loss_batch}, D = 512, fp32, forward + backward "
              "on this CPU (time, peak extra memory)", flush=True)
        losses = losses_side_by_side.table(losses_side_by_side.measure(a.loss_batch, 512))
        print(losses, flush=True)
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "losses_side_by_side.md"), "w") as f:
            f.write(losses + "\n")
    print(f"[2/5] demo data (seed {a.seed}): {a.n_train} captioned MNIST digits, clean captions and "
          f"{a.noise:.0%} of the captions swapped -> {a.out}/data, {a.out}/data_clean", flush=True)
    data = build_demo_data(os.path.join(a.out, "data"), noise=a.noise, seed=a.seed, n_train=a.n_train,
                           n_val=100, n_test=a.n_test, progress=True)
    clean = build_demo_data(os.path.join(a.out, "data_clean"), noise=0.0, seed=a.seed, n_train=a.n_train,
                            n_val=100, n_test=a.n_test, progress=False) if a.clean_reference else None
    logs = os.path.join(a.out, "logs")
    common = dict(batch_size=a.batch_size, epochs=a.epochs, lr=a.lr, warmup=a.warmup, seed=a.seed)
    noisy_label, clean_label = f"CLIP ({a.noise:.0%} noisy captions)", "CLIP (clean captions)"
    method_label = f"PSD {a.method} ({a.noise:.0%} noisy captions)"

    def argv_of(run_data, name, flags, run_threads, progress):
        shutil.rmtree(os.path.join(logs, name), ignore_errors=True)  # the demo starts afresh each time
        return [*train_flags(run_data, threads=run_threads, **common), *flags, "--logs", logs, "--name", name,
                "--psd-quiet", "--psd-eval-every", str(a.eval_every), *(["--psd-progress"] if progress else [])]

    clip_runs = {noisy_label: (data, "clip")}
    if clean is not None:
        clip_runs[clean_label] = (clean, "clip_clean")
    side_by_side = len(clip_runs) > 1 and _parallel(a.parallel)
    print(f"[3/5] training CLIP: psd-tiny, {a.epochs} epochs of {a.n_train} images, batch {a.batch_size}, "
          f"lr {a.lr}; " + (" and ".join(clip_runs) + " in two processes side by side (1 thread each)"
                            if side_by_side else ", then ".join(clip_runs)), flush=True)
    results = {}
    if side_by_side:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
            futures = {label: pool.submit(_train, argv_of(d, name, method_flags("clip"), 1, False))
                       for label, (d, name) in clip_runs.items()}
            for label, future in futures.items():
                results[label] = future.result()
                print(f"      {label}: zero-shot {100 * results[label]['metrics']['zeroshot_top1']:.1f}% "
                      f"({time.time() - start:.0f} s)", flush=True)
    else:
        for label, (d, name) in clip_runs.items():
            results[label] = _train(argv_of(d, name, method_flags("clip"), threads, True))

    clip_checkpoint = results[noisy_label]["checkpoint"]
    print(f"[4/5] training {method_label}: flags {' '.join(method_flags(a.method, clip_checkpoint))}"
          + (f", {threads} thread" if threads else ""), flush=True)
    results[method_label] = _train(argv_of(data, a.method, method_flags(a.method, clip_checkpoint), threads, True))

    order = [noisy_label, method_label] + ([clean_label] if clean is not None else [])
    metrics = {label: results[label]["metrics"] for label in order}
    log_dirs = {label: results[label]["log_dir"] for label in (noisy_label, method_label)}
    reference = {clean_label: results[clean_label]["log_dir"]} if clean is not None else None
    plot = plot_runs(log_dirs, os.path.join(a.out, "demo.png"), reference=reference)
    print(f"\n[5/5] results on {a.n_test} held-out digits (percent). Seed {a.seed}: one seed is one draw of "
          f"data, initialisation and batch order; docs/demo.md and results/ give the paired results over seeds.\n")
    print(results_table(metrics, TABLE_METRICS))
    print(f"\n(memorised: of the {data['noise_rows']} swapped training pairs, the share whose image ranks its "
          f"wrong caption first among all {a.n_train} training captions)")
    shifts = sorted(k for k in metrics[noisy_label] if k.startswith("shift_") and k != "shift_mean_top1")
    print("\nzero-shot under each distribution shift (percent):\n")
    print(results_table(metrics, shifts))
    if losses is not None:
        print(f"\nthe losses themselves (step 1, {a.out}/losses_side_by_side.md):\n\n{losses}")
    print(f"\nplot: {plot}\nlogs: {logs}/<run>/ (out.log, psd_steps.csv, psd_metrics.csv, tensorboard/, "
          f"checkpoints/)\nTensorBoard: .venv/bin/tensorboard --logdir {logs}\n"
          f"total time {time.time() - start:.0f} s")
    return {"metrics": metrics, "plot": plot, "log_dirs": {**log_dirs, **(reference or {})}, "losses": losses}
