"""Command-line errors: one line on stderr and exit status 2, no traceback.

    python -m psd_train --train-data missing.csv ...
    python -m psd_train: error: --train-data missing.csv: file not found      (exit status 2)

    PSD_DEBUG=1 python -m psd_train ...     prints the traceback before that line

Errors a user fixes on the command line, on disk or in the environment (a flag, a data
file, a checkpoint, an unsupported combination, an unsupported open_clip version, a
missing training extra) are UsageError subclasses whose message names the flag or file
(and the row). Any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import importlib
import os
import sys
import traceback

# import name -> the distribution that provides it; all of them come with `pip install ".[train]"`
# (setup.py's TRAIN_EXTRAS lists those distributions' requirements)
EXTRA_DISTRIBUTIONS = {"open_clip": "open_clip_torch", "open_clip_train": "open_clip_torch", "pandas": "pandas",
                "sklearn": "scikit-learn", "scipy": "scipy", "mlxtend": "mlxtend", "matplotlib": "matplotlib",
                "tensorboard": "tensorboard", "tqdm": "tqdm", "PIL": "pillow", "webdataset": "webdataset",
                "braceexpand": "braceexpand"}


class UsageError(Exception):
    """A problem with the command line, a data file, a checkpoint or the installed packages."""


class FlagError(UsageError):
    """A flag value, or a combination of flags, that psd_train does not accept."""


def run_command(prog: str, target: str, argv: list[str] | None = None) -> int:
    """Import target ("module:function") and call it with argv; the exit status for sys.exit.

    0 on success; 2 after one line on stderr for a UsageError, including a training extra
    that is not installed (psd_kernels alone needs only torch and numpy).
    """
    try:
        module, function = target.split(":")
        try:
            getattr(importlib.import_module(module), function)(argv)
        except ModuleNotFoundError as exc:
            package = EXTRA_DISTRIBUTIONS.get((exc.name or "").split(".")[0])
            if package is None:
                raise
            raise UsageError(f"{package} is not installed; {prog} needs the training extras: "
                             f"pip install \".[train]\" in the psd repository (or make install)") from exc
    except UsageError as exc:
        if os.environ.get("PSD_DEBUG") == "1":
            traceback.print_exc()
        message = " ".join(str(exc).split())  # one line, whatever the message holds
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    return 0
