"""The CSV files a run writes beside open_clip_train's out.log, and the helpers that write them.

    psd_steps.csv            one row per optimizer step (STEP_FIELDS)
    psd_metrics.csv          one row per evaluation: epoch, step and the metrics of the --psd-eval-data plugin
    psd_final_metrics.json   the last evaluation

Rows are appended at the end of every epoch; a resumed run first drops the rows of the
part it repeats (truncate_csv), so each file reads as one uninterrupted run.
"""
from __future__ import annotations

import csv
import os

import pandas as pd

STEPS_CSV = "psd_steps.csv"
METRICS_CSV = "psd_metrics.csv"
FINAL_METRICS = "psd_final_metrics.json"
STEP_FIELDS = ("epoch", "step", "loss", "alpha", "soft_fraction", "lr", "logit_scale")


def append_csv_rows(path: str, fields, rows) -> None:
    """Append dict rows to a CSV file, writing the header when the file is new. When the file's
    header lacks some of `fields` (a file written by an older version), the file is rewritten
    with its columns followed by the new ones, its rows left empty there."""
    if not rows:
        return
    fields = list(fields)
    header = None
    if os.path.isfile(path):
        with open(path, newline="") as f:
            header = next(csv.reader(f), None)
    if header is not None and not set(fields) <= set(header):
        with open(path, newline="") as f:
            old_rows = list(csv.DictReader(f))
        merged = header + [name for name in fields if name not in header]
        with open(path + ".tmp", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=merged)
            writer.writeheader()
            writer.writerows(old_rows)
        os.replace(path + ".tmp", path)
        header = merged
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header or fields)
        if header is None:
            writer.writeheader()
        writer.writerows(rows)


def truncate_csv(path: str, key: str, keep_upto: int) -> None:
    """Drop rows with `key` > keep_upto (left over from the part of a run that a resume repeats)."""
    if not os.path.isfile(path):
        return
    frame = pd.read_csv(path)
    frame[frame[key] <= keep_upto].to_csv(path, index=False)
