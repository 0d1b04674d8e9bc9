"""What psd_train relies on in open_clip_train: checked before use, and the one place that patches it.

Supported: open_clip_torch 3.3.x (tested with 3.3.0). check_open_clip() runs first in every
psd_train.main.main() call and stops with one line naming the installed and the supported
version when a name or call signature below is missing or different.

Used as is:
    open_clip_train.main.main(args)          the whole trainer, run unchanged on the open_clip_train flags
    open_clip_train.params.parse_args(args)  parses the same flags once more, for psd_train's checks
    open_clip.create_model_and_transforms    builds the frozen --distill-model teacher (psd_train.teachers),
                                             loading its checkpoint with weights_only=True
    open_clip_train.main.get_latest_checkpoint, LATEST_CHECKPOINT_NAME
                                             the file `--resume latest` picks, checked before training

Replaced in the module open_clip_train.main for the length of one main() call, then restored:
    train_one_epoch(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args, tb_writer=None)
        open_clip_train has no per-epoch callback. The replacement seeds the epoch, calls the
        original with PSDLoss as `loss` and the student with its teacher as `model`, then
        evaluates and writes the PSD checkpoint.
    setup_logging(log_file, level, include_host=False)      only under --psd-quiet
        the console handler it creates is the only handle on the console that leaves out.log
        complete; the replacement raises that handler's level to WARNING.

Replaced in torch for the length of one main() call, then restored:
    torch.nn.parallel.DistributedDataParallel               the name open_clip_train.main calls
        open_clip_train wraps the model as DistributedDataParallel(model, device_ids=[device])
        whenever it runs distributed, and torch refuses device_ids for a module on the CPU
        (its rule: CPU modules take device_ids=None). CpuAwareDDP, a subclass, leaves them
        out when they name CPU devices and passes everything else through, so torchrun with
        gloo trains on CPUs; on GPUs nothing changes.

Replaced in the module open_clip_train.data for the length of one main() call, then restored:
    CsvDataset(input_filename, transforms, img_key, caption_key, sep, tokenizer)
        get_csv_dataset builds it by this name. The replacement is a subclass
        (psd_train.csvimages) whose __getitem__ reads the attributes images, captions,
        transforms and tokenize that CsvDataset.__init__ sets, and skips an image that is
        missing or does not decode instead of raising.

Used to read the environment as open_clip_train does:
    open_clip_train.distributed.world_info_from_env()  the global rank, before torch.distributed starts

Not replaced (open_clip_train's and torch's own extension points):
    the loss     train_one_epoch's `loss` argument receives PSDLoss; open_clip's create_loss(args)
                 still builds a ClipLoss, which is never called
    the teacher  train_one_epoch's `model` argument is the student wrapped so that its outputs
                 carry the teacher's features (psd_train.feed): open_clip_train's loop hands every
                 model output to the loss by name, with and without --accum-freq
    per step     torch's Optimizer.register_step_post_hook: EMA update, schedule step, step log
"""
from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import logging
import warnings
from contextlib import contextmanager

import torch
from torch.nn.parallel import DistributedDataParallel

from psd_train.errors import UsageError

SUPPORTED = "3.3"  # open_clip_torch major.minor
TESTED = "3.3.0"

# (module, name) -> (the leading positional parameters, in order; keyword parameters used by name)
SIGNATURES = {
    ("open_clip_train.main", "main"): (("args",), ()),
    ("open_clip_train.main", "train_one_epoch"): (
        ("model", "data", "loss", "epoch", "optimizer", "scaler", "scheduler", "dist_model", "args"), ("tb_writer",)),
    ("open_clip_train.main", "setup_logging"): (("log_file", "level", "include_host"), ()),
    ("open_clip_train.params", "parse_args"): (("args",), ()),
    ("open_clip_train.data", "CsvDataset"): (
        ("input_filename", "transforms", "img_key", "caption_key", "sep", "tokenizer"), ()),
    ("open_clip_train.data", "get_csv_dataset"): (("args", "preprocess_fn", "is_train"), ()),
    ("open_clip_train.distributed", "world_info_from_env"): ((), ()),
    ("open_clip", "create_model_and_transforms"): (
        ("model_name", "pretrained"), ("device", "precision", "output_dict", "cache_dir", "weights_only")),
    ("open_clip_train.main", "get_latest_checkpoint"): (("path", "remote"), ()),
}


class OpenClipVersionError(UsageError):
    """The installed open_clip_train lacks a name or call signature psd_train relies on."""


def installed_version() -> str:
    try:
        return importlib.metadata.version("open_clip_torch")
    except importlib.metadata.PackageNotFoundError:
        import open_clip
        return getattr(open_clip, "__version__", "unknown")


def mismatches() -> list[str]:
    """What differs from SIGNATURES in the installed open_clip_train ([] when nothing does)."""
    found = []
    for (module_name, name), (positional, keywords) in SIGNATURES.items():
        function = getattr(importlib.import_module(module_name), name, None)
        if not callable(function):
            found.append(f"{module_name}.{name} is missing")
            continue
        params = list(inspect.signature(function).parameters)
        if tuple(params[:len(positional)]) != positional or not set(keywords) <= set(params):
            found.append(f"{module_name}.{name}{inspect.signature(function)} differs from the expected "
                         f"({', '.join(positional + keywords)})")
    return found


class TorchVersionError(UsageError):
    """The installed torch is older than the floor psd supports."""


def check_torch(version: str = torch.__version__) -> None:
    """Stop with one line on a torch older than the supported range (psd_kernels.tools.info); warn on a
    newer, untested one."""
    from psd_kernels.tools import info

    release = info.torch_release(version)
    if release < info.TORCH_FLOOR:
        raise TorchVersionError(f"torch {version} is installed; psd supports {info.SUPPORTED_TORCH} "
                                "(tested stacks: docs/compatibility.md)")
    if release > info.TORCH_NEWEST:
        warnings.warn(f"torch {version} is newer than the releases psd is tested on ({info.SUPPORTED_TORCH})",
                      stacklevel=2)


def check_open_clip() -> None:
    """Stop with one line if torch or open_clip_train is not what psd_train patches; warn on an untested
    version."""
    check_torch()
    version = installed_version()
    found = mismatches()
    if found:
        raise OpenClipVersionError(f"open_clip_torch {version} is installed, psd_train supports open_clip_torch "
                                   f"{SUPPORTED}.x (tested with {TESTED}): {'; '.join(found)}")
    if not version.startswith(SUPPORTED + "."):
        warnings.warn(f"open_clip_torch {version} is untested with psd_train (supported: {SUPPORTED}.x); "
                      "its names and signatures match, so psd_train runs", stacklevel=2)


class CpuAwareDDP(DistributedDataParallel):
    """DistributedDataParallel that leaves out device_ids and output_device when they name CPU
    devices (torch accepts them only for GPU modules); otherwise DistributedDataParallel itself."""

    def __init__(self, module, device_ids=None, output_device=None, *args, **kwargs):
        if device_ids and all(isinstance(d, (str, torch.device)) and torch.device(d).type == "cpu"
                              for d in device_ids):
            device_ids = output_device = None
        super().__init__(module, device_ids, output_device, *args, **kwargs)


@contextmanager
def patched(oc_main, train_one_epoch, quiet: bool, csv_dataset: type):
    """open_clip_train.main with `train_one_epoch` (and, if quiet, a quieter setup_logging) in place,
    open_clip_train.data with `csv_dataset` as its CsvDataset, and torch's DistributedDataParallel
    as CpuAwareDDP.

    Restores every name, removes the logging handlers open_clip_train added and resets the
    logger levels it set, so open_clip_train stays usable in the same process.
    """
    import open_clip_train.data as oc_data

    saved = {name: getattr(oc_main, name) for name in ("train_one_epoch", "setup_logging")}
    parallel = torch.nn.parallel
    saved_ddp = parallel.DistributedDataParallel
    saved_dataset = oc_data.CsvDataset
    before = list(logging.root.handlers)
    # setup_logging sets every logger to INFO (torch._dynamo's too); restore them afterwards
    levels = {name: logger.level for name, logger in logging.root.manager.loggerDict.items()
              if isinstance(logger, logging.Logger)}
    root_level = logging.root.level

    def quiet_setup_logging(log_file, level, include_host=False):
        saved["setup_logging"](log_file, level, include_host)
        for handler in logging.root.handlers:
            if type(handler) is logging.StreamHandler:
                handler.setLevel(logging.WARNING)

    oc_main.train_one_epoch = train_one_epoch
    if quiet:
        oc_main.setup_logging = quiet_setup_logging
    parallel.DistributedDataParallel = CpuAwareDDP
    oc_data.CsvDataset = csv_dataset
    try:
        yield
    finally:
        parallel.DistributedDataParallel = saved_ddp
        for name, value in saved.items():
            setattr(oc_main, name, value)
        oc_data.CsvDataset = saved_dataset
        for handler in [h for h in logging.root.handlers if h not in before]:
            logging.root.removeHandler(handler)
            handler.close()
        logging.root.setLevel(root_level)
        for name, logger in logging.root.manager.loggerDict.items():
            if isinstance(logger, logging.Logger):
                logger.setLevel(levels.get(name, logging.NOTSET))
