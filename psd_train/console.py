"""Framework messages whose cause psd_train knows, kept off the console of a run.

Each one says nothing the user can act on, and each process would print it again (every
rank under torchrun, every run of a sweep):

    torch        "'pin_memory' argument is set as true but no accelerator is found, ..."
                 open_clip_train's DataLoaders always ask for pinned memory; on a machine
                 without an accelerator there is nothing to pin, and torch loads as usual.
    open_clip    "No pretrained weights loaded for model '...'. Model initialized randomly."
                 left out only when --pretrained is not given: a random start is what the run
                 asked for (pretraining from scratch).

open_clip_train's other warning of a CPU run, "Device cuda was not available, falling back to
CPU", is avoided at its cause: without CUDA psd_train passes --device cpu unless --device is
given (psd_train.main).
"""
from __future__ import annotations

import logging
import re
import warnings
from contextlib import contextmanager

import torch

PIN_MEMORY = "'pin_memory' argument is set as true but no accelerator is found"
RANDOM_INIT = "No pretrained weights loaded for model "


class _DropRandomInit(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.WARNING and record.getMessage().startswith(RANDOM_INIT))


@contextmanager
def known_messages_left_out(from_scratch: bool):
    """The messages above left out for the length of the block; warning filters and the root
    logger's filters are restored afterwards."""
    random_init = _DropRandomInit() if from_scratch else None
    with warnings.catch_warnings():
        if not torch.accelerator.is_available():
            warnings.filterwarnings("ignore", message=re.escape(PIN_MEMORY), category=UserWarning)
        if random_init is not None:
            logging.root.addFilter(random_init)
        try:
            yield
        finally:
            if random_init is not None:
                logging.root.removeFilter(random_init)
