"""Images of a CSV run that are missing or do not decode: skipped, counted, warned about, bounded.

    python -m psd_train --train-data train.csv --dataset-type csv ... --psd-max-skipped-share 0.01

open_clip_train's CsvDataset opens each image when the DataLoader asks for its row; one
missing or broken file ends the run with a worker traceback. psd_train puts a subclass in
its place for the length of a run (psd_train.compat.patched): a row whose image does not
load is skipped, and the next row that loads (i + 1, i + 2, ... wrapping around) takes its
place with its own caption, so every batch keeps its size (DistributedDataParallel and the
loss's gathers need equal batches on every rank) and the data order stays a function of
the seed. Like open_clip's webdataset handlers, each skip is logged as a warning naming the
file (at most one warning every WARN_EVERY_S seconds per process; the counts are exact).

The counts are shared by the DataLoader's worker processes. The run stops with one line
naming the flag and the CSV when

    skipped > --psd-max-skipped-share * max(read, min(MIN_READ, rows))

where `read` counts every image opened so far (skipped ones included). Before MIN_READ
images have been read the share is taken of MIN_READ, so a few bad files early in an epoch
do not stop a run, while a CSV that is mostly broken stops within its first batches. 0
stops at the first skipped image; 1 never stops (a CSV none of whose images load still does).
"""
from __future__ import annotations

import logging
import multiprocessing
import time

from PIL import Image

from psd_train.datafiles import IMAGE_ERRORS, DataFileError

MIN_READ = 1000
WARN_EVERY_S = 10.0


class TooManySkippedImages(DataFileError):
    """More of a CSV's images were missing or did not decode than --psd-max-skipped-share allows."""


class SkippedImages:
    """Counts of one CSV's images read and skipped, shared by the DataLoader workers (fork)."""

    def __init__(self, label: str, rows: int, max_share: float):
        self.label = label
        self.rows = rows
        self.max_share = max_share
        self.floor = min(MIN_READ, rows)
        self._read = multiprocessing.Value("q", 0)
        self._skipped = multiprocessing.Value("q", 0)
        self._last_warning = float("-inf")  # per process
        self._unwarned = 0

    @property
    def read(self) -> int:
        return self._read.value

    @property
    def skipped(self) -> int:
        return self._skipped.value

    def exceeded(self) -> bool:
        return self.skipped > self.max_share * max(self.read, self.floor)

    def error(self) -> TooManySkippedImages:
        return TooManySkippedImages(
            f"{self.label}: {self.skipped} of {self.read} images read so far were missing or did not decode, more "
            f"than --psd-max-skipped-share {self.max_share} allows (the warnings in the log name them); fix the "
            "CSV or raise --psd-max-skipped-share")

    def load(self, path: str) -> Image.Image | None:
        """The decoded image at `path`, or None after counting and (rate-limited) warning; raises once
        the skipped share passes --psd-max-skipped-share."""
        try:
            with Image.open(path) as image:
                image.load()
        except IMAGE_ERRORS as exc:
            with self._read.get_lock():
                self._read.value += 1
            with self._skipped.get_lock():
                self._skipped.value += 1
            self._warn(path, exc)
            if self.exceeded():
                raise self.error() from None
            return None
        with self._read.get_lock():
            self._read.value += 1
        return image

    def _warn(self, path: str, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_warning < WARN_EVERY_S:
            self._unwarned += 1
            return
        more = f"; {self._unwarned} more skipped by this process since its last warning" if self._unwarned else ""
        logging.warning(f"{self.label}: skipped image {path} ({type(exc).__name__}: {exc}); {self.skipped} of "
                        f"{self.read} images read so far skipped{more}")
        self._last_warning, self._unwarned = now, 0


def skipping_csv_dataset(base: type, labels: dict, max_share: float, counters: list) -> type:
    """A subclass of open_clip_train's CsvDataset `base` that skips images that do not load (module docstring).

    labels: CSV path -> the flag that names it ("--train-data", "--val-data"); every dataset built
    appends its SkippedImages to `counters`, for the caller to report and check.
    """

    class SkippingCsvDataset(base):
        def __init__(self, input_filename, *args, **kwargs):
            super().__init__(input_filename, *args, **kwargs)
            label = f"{labels.get(input_filename, 'CSV')} {input_filename}"
            self.skips = SkippedImages(label, len(self.images), max_share)
            counters.append(self.skips)

        def __getitem__(self, idx):
            # CsvDataset.__getitem__, with row idx's image replaced by the next one that loads
            for offset in range(len(self.images)):
                row = (idx + offset) % len(self.images)
                image = self.skips.load(str(self.images[row]))
                if image is not None:
                    return self.transforms(image), self.tokenize([str(self.captions[row])])[0]
            raise DataFileError(f"{self.skips.label}: none of its {len(self.images)} images loads")

    return SkippingCsvDataset
