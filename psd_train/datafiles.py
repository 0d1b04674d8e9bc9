"""Checks of the data files a run will read, before open_clip_train starts.

A missing CSV, a CSV without the named columns, an empty caption, or an image that is
missing or does not decode raises DataFileError naming the flag, the file and the row,
instead of a DataLoader traceback in the middle of training.
"""
from __future__ import annotations

import os

import pandas as pd
from PIL import Image
from tqdm import tqdm

from psd_train.errors import UsageError


class DataFileError(UsageError):
    """A training or evaluation data file is missing, unreadable or malformed."""


def check_data_files(args, psd) -> None:
    """Check the CSV data open_clip_train will read and the --psd-eval-data folder."""
    for flag, path in (("--train-data", args.train_data), ("--val-data", args.val_data)):
        if path is not None and _is_csv(args, path):
            _check_csv(flag, path, args, progress=psd.psd_progress)
    if psd.psd_eval_data is not None:
        for name in ("meta.json", "test.csv", "train.csv"):
            if not os.path.isfile(os.path.join(psd.psd_eval_data, name)):
                raise DataFileError(f"--psd-eval-data {psd.psd_eval_data}: {name} is missing "
                                    "(build it with python -m psd_train.demo.data)")


def _is_csv(args, path: str) -> bool:
    return args.dataset_type == "csv" or (args.dataset_type == "auto" and path.rsplit(".", 1)[-1] in ("csv", "tsv"))


def _check_csv(flag: str, path: str, args, progress: bool) -> None:
    if not os.path.isfile(path):
        raise DataFileError(f"{flag} {path}: file not found")
    try:
        frame = pd.read_csv(path, sep=args.csv_separator)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataFileError(f"{flag} {path}: not a readable CSV with separator {args.csv_separator!r} ({exc})") from exc
    for column in (args.csv_img_key, args.csv_caption_key):
        if column not in frame.columns:
            raise DataFileError(f"{flag} {path}: no column {column!r} (columns: {list(frame.columns)}); "
                                "check --csv-img-key, --csv-caption-key and --csv-separator")
    if len(frame) == 0:
        raise DataFileError(f"{flag} {path}: no rows")
    if frame[args.csv_caption_key].isna().any():
        row = int(frame[args.csv_caption_key].isna().to_numpy().nonzero()[0][0])
        raise DataFileError(f"{flag} {path}: row {row} has an empty caption")
    images = frame[args.csv_img_key].astype(str).tolist()
    for row, image in enumerate(tqdm(images, desc=f"checking {os.path.basename(path)}", unit="img",
                                     disable=not progress, leave=False)):
        try:
            with Image.open(image) as im:
                im.load()
        except FileNotFoundError as exc:
            raise DataFileError(f"{flag} {path}: row {row}: image {image} not found") from exc
        except OSError as exc:
            raise DataFileError(f"{flag} {path}: row {row}: image {image} is corrupt ({exc})") from exc
