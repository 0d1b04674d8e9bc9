"""Command-line errors: one line on stderr and exit status 2, no traceback.

    python -m psd_train --train-data missing.csv ...
    python -m psd_train: error: --train-data missing.csv: file not found      (exit status 2)

    PSD_DEBUG=1 python -m psd_train ...     prints the traceback before that line

Errors a user fixes on the command line or on disk (a flag, a data file, a checkpoint,
an unsupported combination, an unsupported open_clip version) are UsageError subclasses
whose message names the flag or file (and the row). Any other exception is a bug and
keeps its traceback.
"""
from __future__ import annotations

import os
import sys
import traceback


class UsageError(Exception):
    """A problem with the command line, a data file, a checkpoint or the installed open_clip."""


class FlagError(UsageError):
    """A flag value, or a combination of flags, that psd_train does not accept."""


def run_command(prog: str, main, argv: list[str] | None = None) -> int:
    """Run main(argv); the exit status: 0, or 2 after one line on stderr for a UsageError."""
    try:
        main(argv)
    except UsageError as exc:
        if os.environ.get("PSD_DEBUG") == "1":
            traceback.print_exc()
        message = " ".join(str(exc).split())  # one line, whatever the message holds
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    return 0
