"""The one CSV schema and row writer of benchmarks/, and the version every row records.

    append_csv(rows, "benchmarks/data")                 # rows: dicts with the keys of CSV_FIELDS
    version_string()  # "psd 0.1.0 git 5b81a1f+dirty; torch 2.14.1+cu130"

Every script that writes benchmark rows (benchmark_psd_loss.py, device_check.py,
benchmark_teacher_cost.py) stamps them with version_string(): the commit the code was at and
whether the tree had changes ("+dirty": tracked or untracked files other than benchmarks/data,
which the benchmarks append to, differ from the commit), so a figure can be traced to the code
that made it. No git (a copy of the tree without .git): no commit named. torch only, no numpy
(device_check.py runs where numpy may be missing).
"""
from __future__ import annotations

import csv
import datetime
import importlib.metadata
import json
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSV_FIELDS = ("op", "provider", "mode", "metric", "unit", "x_name", "x_value", "p50", "p20", "p80",
              "config", "device", "timestamp", "version")


def _git(root: str, *args) -> str:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=root, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def commit(root: str = ROOT) -> str:
    """The short commit of the tree at `root`, "+dirty" appended when it has changes (benchmarks/data
    aside); "" without git."""
    rev = _git(root, "rev-parse", "--short", "HEAD")
    if not rev:
        return ""
    changed = _git(root, "status", "--porcelain", "--", ".", ":(exclude)benchmarks/data")
    return rev + ("+dirty" if changed else "")


def version_string(*extra: str) -> str:
    """psd's version, the commit (commit()), torch's version and any `extra` ("triton 3.8.0")."""
    import torch
    try:
        psd = importlib.metadata.version("psd")
    except importlib.metadata.PackageNotFoundError:
        psd = "not installed"
    rev = commit()
    return "; ".join([f"psd {psd}{' git ' + rev if rev else ''}", f"torch {torch.__version__}", *extra])


def timestamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def append_csv(rows, directory: str, name: str) -> str:
    """Append rows (dicts with the keys of CSV_FIELDS) to directory/name, the header first in a new file."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow(row)
    return path


class Recorder:
    """Rows in CSV_FIELDS (config as JSON) and markdown lines, printed as they come; one device,
    one timestamp and one version for the run."""

    def __init__(self, device_name: str, version: str):
        self.rows, self.md = [], []
        self.device, self.version = device_name, version
        self.stamp = timestamp()

    def row(self, op, provider, mode, metric, unit, x_name, x_value, p50, p20="", p80="", config=None):
        self.rows.append(dict(op=op, provider=provider, mode=mode, metric=metric, unit=unit, x_name=x_name,
                              x_value=x_value, p50=p50, p20=p20, p80=p80,
                              config=json.dumps(config or {}, sort_keys=True), device=self.device,
                              timestamp=self.stamp, version=self.version))

    def line(self, text=""):
        print(text, flush=True)
        self.md.append(text)

    def write(self, out: str, name: str) -> str:
        """Append the rows to out/<name>.csv and write the lines to out/<name>.md; the CSV's path."""
        path = append_csv(self.rows, out, f"{name}.csv")
        with open(os.path.join(out, f"{name}.md"), "w") as fh:
            fh.write("\n".join(self.md) + "\n")
        return path
