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

Nothing in a checkpoint can run code: psd_train saves only tensors and plain values (dicts,
lists, numbers, strings, None) and loads every checkpoint (--resume, the PSD state,
--distill-pretrained) with torch.load(weights_only=True), which refuses any other pickled
object instead of constructing it; the refusal is one line naming the file.
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
    """torch.load(weights_only=True) a checkpoint; a missing, corrupt or code-carrying file is one clear error."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if str(exc).startswith("Weights only load failed"):
            raise refused(f"checkpoint {path}", exc) from None
        raise _corrupt(path, exc) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise _corrupt(path, exc) from exc


def refused(label: str, exc: Exception) -> CheckpointError:
    """The error for a file (`label`: what it is and its path) that torch.load(weights_only=True) refused:
    it pickles more than tensors and plain values."""
    lines = str(exc).splitlines()
    reason = next((line.strip() for line in lines if "GLOBAL" in line or "Unsupported" in line), "")
    because = f" ({reason})" if reason else ""
    return CheckpointError(f"{label} holds objects other than tensors and plain values{because}; "
                           "psd_train loads checkpoints with weights_only=True and does not run code from one: "
                           "use a checkpoint that holds only tensors, numbers, strings, lists and dicts")


def model_state(model) -> dict:
    """The model's state_dict as open_clip_train saves it, so that its --resume loads it: under
    torchrun the DistributedDataParallel wrapper's (keys "module.*"; a run in one process strips
    that prefix when it resumes), never torch.compile's "_orig_mod.*"."""
    return getattr(model, "_orig_mod", model).state_dict()


def _corrupt(path: str, exc: Exception) -> CheckpointError:
    return CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}: {exc}); "
                           "resume from an earlier checkpoint")


def resume_path(args) -> str | None:
    """The file open_clip_train will resume from: --resume itself, or for `--resume latest` the file it
    picks (epoch_latest.pt with --save-most-recent, else the last *.pt in natural order); None if none."""
    if args.resume != "latest":
        return args.resume
    if args.remote_sync is not None:
        return None  # open_clip_train lists the remote; it loads that file with weights_only=True too
    if args.name is None:
        return None  # open_clip_train names the run by the time; there is nothing to resume from
    from open_clip_train.main import LATEST_CHECKPOINT_NAME, get_latest_checkpoint

    folder = os.path.join(args.logs, args.name, "checkpoints")
    if args.save_most_recent:
        path = os.path.join(folder, LATEST_CHECKPOINT_NAME)
        return path if os.path.isfile(path) else None
    return get_latest_checkpoint(folder, remote=False) if os.path.isdir(folder) else None


def check_resume_file(args) -> None:
    """The checkpoint a run resumes from fails before training if it is missing, corrupt or carries code."""
    path = resume_path(args)
    if path is not None:
        load_checkpoint(path)


def psd_state(loss, teacher, flags: dict) -> dict:
    """PSD's part of a checkpoint: the loss's state (step counter and resolved schedule), the teacher's,
    and the schedule flags the run was started with (psd_train.args.schedule_flags)."""
    return {"version": FORMAT_VERSION, "loss": loss.state_dict(), "teacher": teacher.state_dict(),
            "flags": dict(flags)}


# Schedule values PSDLoss resolves from several flags, and what sets them.
DERIVED = {"ramp_steps": "the alpha ramp in steps (--psd-ramp-steps, --psd-ramp-epochs or --epochs)",
           "soft_fraction_ramp_steps": "the soft-fraction ramp in steps (--psd-soft-fraction-ramp-steps or -epochs, "
                                       "or the alpha ramp)",
           "steps_per_epoch": "optimizer steps per epoch (the data size, --batch-size, --accum-freq, the world size)",
           "seed": "the soft subsets' seed (--seed)"}


def schedule_changes(saved: dict, flags: dict, loss_state: dict) -> list[str]:
    """How this run's schedule differs from the saved PSD state `saved`: one "what: old -> new" per difference.

    `flags` are this run's schedule flags, `loss_state` its PSDLoss extra state (the resolved schedule).
    """
    def shown(value):
        return "unset" if value is None else str(value)

    changes = []
    for name, value in flags.items():
        old = saved.get("flags", {}).get(name, value)
        if old != value:
            changes.append(f"--{name.replace('_', '-')} {shown(old)} -> {shown(value)}")
    saved_loss = saved.get("loss", {}).get("_extra_state", {})
    for key, what in DERIVED.items():
        old = saved_loss.get(key, loss_state.get(key))
        if old != loss_state.get(key):
            changes.append(f"{what} {shown(old)} -> {shown(loss_state.get(key))}")
    return changes


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
