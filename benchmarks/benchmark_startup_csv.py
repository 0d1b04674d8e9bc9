"""Start-up on a large CSV: open_clip_train and psd_train side by side, on the same file.

    .venv/bin/python benchmarks/benchmark_startup_csv.py                 # 1,000,000 rows, 3 repetitions
    .venv/bin/python benchmarks/benchmark_startup_csv.py --rows 100000 --repeats 5

Start-up is the wall time from launching the process to the moment open_clip_train's
train_one_epoch is entered for epoch 0: the interpreter and imports, the flags, the model,
optimizer and data loader built (open_clip_train reads the whole CSV), and for psd_train
also its data checks, the PSD loss and the teacher. No batch has been loaded yet (the
DataLoader's workers start with the first batch); the child process then exits.

The CSV (in a temporary folder, deleted afterwards) has --rows rows pointing at 8 small real
PNG files, reused. Three commands run in turn, --repeats times each, interleaved so machine
load hits all alike: open_clip_train (`open_clip_train.main.main`), psd_train with its
default pre-flight check (--psd-check-images 100) and psd_train with --psd-check-images 0,
all on psd-tiny with --workers 0 and an EMA teacher for psd_train. Printed first:
psd_train's pre-flight check of the CSV alone (datafiles.check_data_files, in this
process). Then each start-up in seconds (wall, and the CPU time the process used by then,
which machine load disturbs less), the medians, and the median over repeats of psd_train
minus open_clip_train.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = {
    "open_clip_train": [],
    "psd_train": ["--psd-alpha-max", "0.3", "--psd-teacher", "ema"],
    "psd_train --psd-check-images 0": ["--psd-alpha-max", "0.3", "--psd-teacher", "ema", "--psd-check-images", "0"],
}

CHILD = """
import sys, time
import open_clip_train.main as oc_main

def entered(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args, tb_writer=None):
    import resource
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"ENTERED {time.time():.6f} {usage.ru_utime + usage.ru_stime:.6f}", flush=True)
    import os
    os._exit(0)

oc_main.train_one_epoch = entered  # psd_train wraps it: its own start-up runs before this
argv = sys.argv[2:]
if sys.argv[1] == "open_clip_train":
    from psd_train.demo.model import register_demo_models
    register_demo_models()
    oc_main.main(argv)
else:
    from psd_train.main import main
    main(argv)
raise SystemExit("train_one_epoch was never entered")
"""


def write_data(folder: str, rows: int) -> str:
    """8 small PNGs and a tab-separated CSV of `rows` rows that cycles through them."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    images = []
    for i in range(8):
        path = os.path.join(folder, f"image_{i}.png")
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
        images.append(path)
    csv = os.path.join(folder, "train.csv")
    with open(csv, "w") as f:
        f.write("filepath\ttitle\n")
        for start in range(0, rows, 100_000):
            f.writelines(f"{images[i % 8]}\ta photo of the digit {i % 10}\n"
                         for i in range(start, min(rows, start + 100_000)))
    return csv


def preflight_seconds(csv: str, check_images: int) -> float:
    """Wall seconds of psd_train's pre-flight check of `csv` alone, in this process (rank 0)."""
    from types import SimpleNamespace

    from psd_train.datafiles import check_data_files

    args = SimpleNamespace(train_data=csv, val_data=None, dataset_type="csv", csv_separator="\t",
                           csv_img_key="filepath", csv_caption_key="title", seed=0)
    began = time.perf_counter()
    check_data_files(args, SimpleNamespace(psd_check_images=check_images, psd_eval_data=None), rank=0)
    return time.perf_counter() - began


def start_up(kind: str, csv: str, logs: str, name: str) -> tuple[float, float]:
    """(wall seconds from launch to train_one_epoch, CPU seconds the process used by then)."""
    from psd_train.demo.model import TRAIN_FLAGS

    argv = [*TRAIN_FLAGS, "--train-data", csv, "--dataset-type", "csv", "--csv-separator", "\t",
            "--csv-img-key", "filepath", "--csv-caption-key", "title", "--batch-size", "64", "--epochs", "1",
            "--workers", "0", "--precision", "fp32", "--logs", logs, "--name", name, *COMMANDS[kind]]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    began = time.time()
    run = subprocess.run([sys.executable, "-c", CHILD, "open_clip_train" if kind == "open_clip_train" else "psd_train",
                          *argv], capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [line for line in run.stdout.splitlines() if line.startswith("ENTERED ")]
    if run.returncode != 0 or not lines:
        raise SystemExit(f"{kind} failed (exit {run.returncode}):\n{run.stderr[-3000:]}")
    _, entered, cpu = lines[0].split()
    return float(entered) - began, float(cpu)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    times = {kind: [] for kind in COMMANDS}
    cpu = {kind: [] for kind in COMMANDS}
    with tempfile.TemporaryDirectory(prefix="psd_startup_") as folder:
        began = time.time()
        csv = write_data(folder, args.rows)
        print(f"{args.rows} rows written to {csv} in {time.time() - began:.1f} s "
              f"({os.path.getsize(csv) / 2**20:.0f} MiB)")
        for check_images in (100, 0):
            seconds = statistics.median(preflight_seconds(csv, check_images) for _ in range(3))
            print(f"psd_train's pre-flight check alone, --psd-check-images {check_images}: {seconds:.3f} s "
                  "(median of 3, in this process)")
        for repeat in range(args.repeats):
            for kind in COMMANDS:
                name = f"{kind.split()[0]}-{len(times[kind])}" + ("-nocheck" if "check" in kind else "")
                seconds, cpu_seconds = start_up(kind, csv, os.path.join(folder, "logs"), name)
                times[kind].append(seconds)
                cpu[kind].append(cpu_seconds)
                print(f"repeat {repeat}: {kind:32s} {seconds:6.2f} s wall, {cpu_seconds:6.2f} s CPU", flush=True)
    print(f"\nstart-up to the first train_one_epoch call, {args.rows} rows, median of {args.repeats} "
          "(difference: median over repeats of psd_train minus open_clip_train in the same repeat):")
    medians = {}
    for kind in COMMANDS:
        medians[kind] = {"wall_s": statistics.median(times[kind]), "cpu_s": statistics.median(cpu[kind])}
        line = f"  {kind:32s} {medians[kind]['wall_s']:6.2f} s wall, {medians[kind]['cpu_s']:6.2f} s CPU"
        if kind != "open_clip_train":
            wall = statistics.median(a - b for a, b in zip(times[kind], times["open_clip_train"]))
            cpu_extra = statistics.median(a - b for a, b in zip(cpu[kind], cpu["open_clip_train"]))
            line += f"   difference {wall:+.2f} s wall, {cpu_extra:+.2f} s CPU"
        print(line)
    return medians


if __name__ == "__main__":
    main()
