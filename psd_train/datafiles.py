"""Checks of the data files a run will read, before open_clip_train starts; their cost does not grow with the data.

A CSV given to --train-data or --val-data: the file exists and its header has the
--csv-img-key and --csv-caption-key columns (every rank: it reads one line). On rank 0
only, it also reads those two columns (the same parse open_clip_train does once more
when it builds the dataset) to check there are rows and no empty caption, and opens and
decodes a random sample of --psd-check-images images (default 100, drawn from --seed;
0 turns the sample off). A problem raises DataFileError naming the flag, the file and the
row, instead of a DataLoader traceback in the middle of training.

Images outside the sample are checked as training reads them: one that is missing or does
not decode is skipped and counted (psd_train.csvimages).
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
from PIL import Image

from psd_train.errors import UsageError


# What PIL raises for a missing, unreadable, truncated or malformed image file.
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


class DataFileError(UsageError):
    """A training or evaluation data file is missing, unreadable or malformed."""


def csv_flags(args) -> dict:
    """{path: flag} of the CSV files open_clip_train will read (--train-data, --val-data)."""
    return {path: flag for flag, path in (("--train-data", args.train_data), ("--val-data", args.val_data))
            if path is not None and _is_csv(args, path)}


def check_data_files(args, psd, rank: int) -> None:
    """Check the CSV data open_clip_train will read (the image sample on rank 0 only). --psd-eval-data
    is checked by the plugin that evaluates it (psd_train.plugins: check_eval_data)."""
    for path, flag in csv_flags(args).items():
        _check_csv(flag, path, args, sample=psd.psd_check_images if rank == 0 else 0)


def _is_csv(args, path: str) -> bool:
    return args.dataset_type == "csv" or (args.dataset_type == "auto" and path.rsplit(".", 1)[-1] in ("csv", "tsv"))


def _read(flag: str, path: str, args, **options) -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep=args.csv_separator, **options)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataFileError(f"{flag} {path}: not a readable CSV with separator {args.csv_separator!r} ({exc})") from exc


def _check_csv(flag: str, path: str, args, sample: int) -> None:
    if not os.path.isfile(path):
        raise DataFileError(f"{flag} {path}: file not found")
    columns = list(_read(flag, path, args, nrows=0).columns)
    for column in (args.csv_img_key, args.csv_caption_key):
        if column not in columns:
            raise DataFileError(f"{flag} {path}: no column {column!r} (columns: {columns}); "
                                "check --csv-img-key, --csv-caption-key and --csv-separator")
    if sample == 0:
        return
    frame = _read(flag, path, args, usecols=[args.csv_img_key, args.csv_caption_key])
    if len(frame) == 0:
        raise DataFileError(f"{flag} {path}: no rows")
    empty = frame[args.csv_caption_key].isna().to_numpy()
    if empty.any():
        raise DataFileError(f"{flag} {path}: row {int(empty.nonzero()[0][0])} has an empty caption")
    rows = np.random.default_rng(args.seed).choice(len(frame), size=min(sample, len(frame)), replace=False)
    images = frame[args.csv_img_key]
    for row in np.sort(rows).tolist():
        image = str(images.iat[row])
        try:
            with Image.open(image) as im:
                im.load()
        except FileNotFoundError as exc:
            raise DataFileError(f"{flag} {path}: row {row}: image {image} not found") from exc
        except IMAGE_ERRORS as exc:
            raise DataFileError(f"{flag} {path}: row {row}: image {image} is corrupt ({exc})") from exc
