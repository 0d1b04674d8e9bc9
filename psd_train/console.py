"""Framework messages whose cause psd_train knows, kept off the console of a run.

Each one says nothing the user can act on, and each process prints it again (every rank
under torchrun, every run of a sweep):

    torch        "'pin_memory' argument is set as true but no accelerator is found, ..."
                 open_clip_train's DataLoaders always ask for pinned memory; on a machine
                 without an accelerator there is nothing to pin, and loading works as usual.
    torch        "Reducer buckets have been rebuilt in this iteration." (DistributedDataParallel)
                 an INFO note of DDP's own bookkeeping, which reaches the console only because
                 open_clip_train's setup_logging sets every logger, torch's included, to INFO.
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
from contextlib import ExitStack, contextmanager

import torch

PIN_MEMORY = "'pin_memory' argument is set as true but no accelerator is found"
# (logger name, level, message start)
DDP_BUCKETS = ("torch.nn.parallel.distributed", logging.INFO, "Reducer buckets have been rebuilt")
RANDOM_INIT = ("", logging.WARNING, "No pretrained weights loaded for model ")  # open_clip logs on the root logger


class _Drop(logging.Filter):
    """Drops the records of one level whose message starts with a given text."""

    def __init__(self, level: int, start: str):
        super().__init__()
        self.level, self.start = level, start

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == self.level and record.getMessage().startswith(self.start))


@contextmanager
def _dropped(logger_name: str, level: int, start: str):
    logger, drop = logging.getLogger(logger_name), _Drop(level, start)
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


@contextmanager
def known_messages_left_out(from_scratch: bool):
    """The messages above left out for the length of the block; the warning filters and the
    loggers' filters are restored afterwards."""
    with warnings.catch_warnings(), ExitStack() as stack:
        if not torch.accelerator.is_available():
            warnings.filterwarnings("ignore", message=re.escape(PIN_MEMORY), category=UserWarning)
        stack.enter_context(_dropped(*DDP_BUCKETS))
        if from_scratch:
            stack.enter_context(_dropped(*RANDOM_INIT))
        yield
