"""One rank of tests/test_train_distributed.py: `python -m psd_train` under torchrun, recorded.

    .venv/bin/python -m torch.distributed.run --standalone --nproc_per_node 2 \\
        tests/train_distributed_worker.py OUT [--kill-at-step K] -- <python -m psd_train flags>

Runs the flags as `python -m psd_train` does (psd_train.errors.run_command, same exit status)
and saves OUT/rank<r>.pt, recorded through wrappers around psd_train's own functions:

    student      the student's state_dict at the end
    teacher      the EMA / previous-epoch teacher's state_dict at the end (None for self, distill)
    soft         {(step, stream): the indices of the soft rows this rank drew at that step}
    loss_world   the world size the PSD loss (PSDLoss, PSDSigLipLoss) was built for
    written      the paths this rank wrote through psd_train's step log and checkpoint writers
    tensorboard  whether this rank was handed a TensorBoard writer
    status       run_command's exit status

With --kill-at-step K, rank 0 ends the job right after optimizer step K as a killed job
ends: SIGKILL to the other rank (its pid from OUT/pid<r>), to torchrun, then to itself.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import torch

import psd_train.main as psd_main
from psd_kernels.loss import ScheduledLoss
from psd_train.errors import run_command


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--kill-at-step", type=int, default=None)
    ours, flags = parser.parse_known_args()
    flags = flags[1:] if flags[:1] == ["--"] else flags
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    (ours.out / f"pid{rank}").write_text(str(os.getpid()))
    record = {"soft": {}, "written": [], "tensorboard": False}
    runs = []

    row_alpha = ScheduledLoss._row_alpha  # PSDLoss's and PSDSigLipLoss's soft subsets

    def recording_row_alpha(self, alpha, stream, rows, like):
        out = row_alpha(self, alpha, stream, rows, like)
        record["loss_world"] = self.world_size
        if isinstance(out, torch.Tensor):
            record["soft"][(self.step, stream)] = out.nonzero().flatten().tolist()
        return out

    init, end_epoch, after_step = psd_main._Run.__init__, psd_main._Run._end_epoch, psd_main._Run._after_step

    def keep_run(self, *args, **kwargs):
        init(self, *args, **kwargs)
        runs.append(self)

    def note_writer(self, model, epoch, optimizer, scaler, args, tb_writer):
        record["tensorboard"] |= tb_writer is not None
        return end_epoch(self, model, epoch, optimizer, scaler, args, tb_writer)

    def kill_at(self, optimizer, *unused):
        after_step(self, optimizer, *unused)
        if rank == 0 and self.step == ours.kill_at_step:
            for other in range(1, world):
                os.kill(int((ours.out / f"pid{other}").read_text()), signal.SIGKILL)
            os.kill(os.getppid(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)

    ScheduledLoss._row_alpha = recording_row_alpha
    psd_main._Run.__init__, psd_main._Run._end_epoch, psd_main._Run._after_step = keep_run, note_writer, kill_at
    psd_main.append_csv_rows = _recorded(psd_main.append_csv_rows, record)
    psd_main.atomic_save = _recorded(psd_main.atomic_save, record, path_index=1)

    record["status"] = run_command("python -m psd_train", "psd_train.main:main", flags)
    if runs and runs[0].model is not None:
        run = runs[0]
        record["student"] = {k: v.clone() for k, v in psd_main.unwrap(run.model).state_dict().items()}
        teacher = run.teacher.model if run.teacher.kind in ("ema", "prev_epoch") else None
        record["teacher"] = None if teacher is None else {k: v.clone() for k, v in teacher.state_dict().items()}
    torch.save(record, ours.out / f"rank{rank}.pt")
    return record["status"]


def _recorded(function, record: dict, path_index: int = 0):
    """function, noting the file name of its path argument (argument path_index) in record["written"]."""
    def wrapper(*args, **kwargs):
        record["written"].append(os.path.basename(args[path_index]))
        return function(*args, **kwargs)
    return wrapper


if __name__ == "__main__":
    sys.exit(main())
