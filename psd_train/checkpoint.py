"""Atomic checkpoints that carry PSD's state next to open_clip_train's.

    python -m psd_train ... --resume latest

After every epoch psd_train writes <logs>/<name>/checkpoints/psd_latest.pt: open_clip_train's
checkpoint format (epoch, name, state_dict, optimizer, scaler) plus a "psd" entry holding
the PSDLoss state (its step counter) and the teacher state (EMA weights). The data order
needs no saved state: psd_train.main seeds every epoch from (--seed, epoch).
It is written to a temporary file in the same folder and moved into place with
os.replace, so a crash leaves either the previous checkpoint or the new one, never a
torn file. The temporary name does not end in .pt, so open_clip_train's
`--resume latest` (the last *.pt in natural order) never picks it, and psd_latest.pt
sorts after open_clip_train's own epoch_<n>.pt and epoch_latest.pt.
"""
from __future__ import annotations

import os
import pickle
import zipfile

import torch

from psd_train.errors import UsageError

PSD_CHECKPOINT_NAME = "psd_latest.pt"
FORMAT_VERSION = 1


class CheckpointError(UsageError):
    """A checkpoint that is missing, corrupt, or does not belong to this run."""


def atomic_save(obj, path: str) -> None:
    """torch.save to `path` through a temporary file and os.replace (atomic on POSIX)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path: str) -> dict:
    """torch.load a checkpoint, turning a missing or corrupt file into one clear error."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}: {exc}); "
                           "resume from an earlier checkpoint") from exc


def check_resume_file(resume: str | None) -> None:
    """A --resume path that is missing or corrupt fails before training, with the path in the message."""
    if resume is not None and resume != "latest":
        load_checkpoint(resume)


def model_state(model) -> dict:
    """The model's state_dict as open_clip_train saves it, so that its --resume loads it: under
    torchrun the DistributedDataParallel wrapper's (keys "module.*"; a run in one process strips
    that prefix when it resumes), never torch.compile's "_orig_mod.*"."""
    return getattr(model, "_orig_mod", model).state_dict()


def psd_state(loss, teacher) -> dict:
    return {"version": FORMAT_VERSION, "loss": loss.state_dict(), "teacher": teacher.state_dict()}


def find_psd_state(resume_path: str) -> dict | None:
    """The PSD state that belongs to the checkpoint being resumed, or None.

    Either the checkpoint itself carries it (psd_latest.pt), or it was open_clip_train's own
    checkpoint (e.g. epoch_latest.pt with --save-most-recent) and psd_latest.pt beside it
    holds the state of the same epoch.
    """
    checkpoint = load_checkpoint(resume_path)
    if "psd" in checkpoint:
        return checkpoint["psd"]
    sibling = os.path.join(os.path.dirname(resume_path), PSD_CHECKPOINT_NAME)
    if os.path.isfile(sibling):
        other = load_checkpoint(sibling)
        if other.get("epoch") == checkpoint.get("epoch") and "psd" in other:
            return other["psd"]
    return None
