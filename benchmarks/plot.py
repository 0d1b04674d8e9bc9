"""PNG plots from benchmark CSV rows: time and peak memory vs batch size, one line per provider.

    .venv/bin/python benchmarks/plot.py                       # benchmarks/data/*.csv -> benchmarks/plots/
    .venv/bin/python benchmarks/plot.py --data benchmarks/data/psd_clip_loss.csv --out /tmp/plots

One PNG per (op, device, D, teacher, dtype) with four log-log panels: forward, backward
and full time (median, p20-p80 band) and peak extra memory of the full call. When a
case was measured several times the latest row wins. A provider that ran out of memory
is labelled with the first batch size it did not fit. Only rows against the batch size
(x_name B) are plotted: the CPU benchmark's and benchmarks/device_check.py's (same schema).
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)
from matplotlib.ticker import NullLocator  # noqa: E402

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
PLOT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plots")
PANELS = (("time", "forward", "forward time (ms)"), ("time", "backward", "backward time (ms)"),
          ("time", "full", "forward + backward time (ms)"), ("memory", "full", "peak extra memory (MiB)"))
CASE_KEYS = ("dim", "teacher", "teacher_dim", "dtype")


def load_rows(paths) -> list[dict]:
    rows = []
    for path in paths:
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                if row["x_name"] != "B":  # e.g. device_check.py's correctness and matmul rows
                    continue
                config = json.loads(row["config"])
                row["case"] = tuple(config.get(key) for key in CASE_KEYS)
                row["x_value"] = int(float(row["x_value"]))
                for field in ("p50", "p20", "p80"):
                    row[field] = float(row[field]) if row[field] not in ("", None) else float("nan")
                rows.append(row)
    return rows


def latest(rows: list[dict]) -> list[dict]:
    """The newest row of every (op, device, case, provider, mode, metric, B)."""
    newest = {}
    for row in rows:
        key = (row["op"], row["device"], row["case"], row["provider"], row["mode"], row["metric"],
               row["x_value"])
        if key not in newest or row["timestamp"] >= newest[key]["timestamp"]:
            newest[key] = row
    return list(newest.values())


def _slug(text) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", str(text)).strip("-")[:60]


def plot(rows: list[dict], out_dir: str) -> list[str]:
    """Write one PNG per (op, device, case); return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    rows = latest(rows)
    groups = sorted({(r["op"], r["device"], r["case"]) for r in rows}, key=str)
    written = []
    for op, device, case in groups:
        mine = [r for r in rows if (r["op"], r["device"], r["case"]) == (op, device, case)]
        providers = sorted({r["provider"] for r in mine})
        fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 4.2))
        for ax, (metric, mode, title) in zip(axes, PANELS):
            for provider in providers:
                points = sorted((r for r in mine if r["provider"] == provider and r["metric"] == metric
                                 and r["mode"] == mode and r["p50"] > 0), key=lambda r: r["x_value"])
                failed = sorted(r["x_value"] for r in mine if r["provider"] == provider
                                and r["metric"] in ("oom", "error"))
                if not points:
                    continue
                label = provider + (f" (out of memory at B={failed[0]})" if failed else "")
                xs = [r["x_value"] for r in points]
                line, = ax.plot(xs, [r["p50"] for r in points], marker="o", label=label)
                ax.fill_between(xs, [r["p20"] for r in points], [r["p80"] for r in points],
                                color=line.get_color(), alpha=0.2)
            ax.set_xscale("log", base=2)
            ticks = sorted({r["x_value"] for r in mine})
            ax.set_xticks(ticks, [str(b) for b in ticks], rotation=45 if len(ticks) > 4 else 0)
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_yscale("log")
            ax.set_xlabel("batch size B")
            ax.set_title(title)
            ax.grid(True, which="both", alpha=0.3)
        handles, labels = axes[-1].get_legend_handles_labels()
        if handles:
            axes[-1].legend(handles, labels, fontsize=8)
        dim, teacher, teacher_dim, dtype = case
        teacher_text = teacher + (f" (D'={teacher_dim})" if teacher == "separate" else "")
        fig.suptitle(f"{op}: D={dim}, teacher={teacher_text}, {dtype} | {device}")
        fig.tight_layout()
        path = os.path.join(out_dir, f"{op}_{_slug(device)}_D{dim}_{teacher}_{dtype}.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="+", help="CSV files (default: benchmarks/data/*.csv)")
    parser.add_argument("--out", default=PLOT_DIR, help="directory for the PNGs")
    parser.add_argument("--device", help="only rows whose device contains this text")
    args = parser.parse_args(argv)
    paths = args.data or sorted(glob.glob(os.path.join(DATA_DIR, "*.csv")))
    if not paths:
        print(f"no CSV files in {DATA_DIR}; run benchmarks/benchmark_psd_loss.py first", file=sys.stderr)
        return 1
    rows = load_rows(paths)
    if args.device:
        rows = [r for r in rows if args.device in r["device"]]
    for path in plot(rows, args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
