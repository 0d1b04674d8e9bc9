"""Checkpoints cannot run code, and a resume with other schedule flags says so.

    .venv/bin/python -m pytest tests/test_train_checkpoints.py -q

Every load (--resume, `--resume latest`, the PSD state, --distill-pretrained) uses
torch.load(weights_only=True): a file whose unpickling would call os.system is refused with
one line naming it, and the command it carries never runs.
"""
import pytest

pytest.importorskip("open_clip_train", reason="needs the training extras: pip install '.[train]'")
import os  # noqa: E402

import torch  # noqa: E402

from psd_train.checkpoint import load_checkpoint  # noqa: E402
from psd_train.errors import run_command  # noqa: E402
from psd_train.main import main  # noqa: E402
from test_train import argv, data, read_steps  # noqa: E402,F401  (data is a fixture)


class RunsCode:
    """Unpickling this calls os.system(command)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _code_carrying_checkpoint(path, marker):
    torch.save({"epoch": 1, "state_dict": {"x": torch.zeros(1)}, "payload": RunsCode(f"touch {marker}")}, path)


def _one_line_error(args, capsys, monkeypatch) -> str:
    monkeypatch.delenv("PSD_DEBUG", raising=False)
    assert run_command("python -m psd_train", "psd_train.main:main", args) == 2
    *logged, last = capsys.readouterr().err.splitlines()  # open_clip_train's console log may come first
    assert last.startswith("python -m psd_train: error: "), last
    assert not any("error" in line for line in logged), logged
    return last


@pytest.mark.parametrize("where", ["resume", "resume_latest", "distill_pretrained"])
def test_checkpoint_that_runs_code_is_refused(where, data, tmp_path, capsys, monkeypatch):
    marker = tmp_path / "ran"
    name = "evil"
    if where == "resume_latest":
        path = tmp_path / name / "checkpoints" / "epoch_9.pt"
        path.parent.mkdir(parents=True)
        extra = ["--resume", "latest"]
    else:
        path = tmp_path / "evil.pt"
        extra = (["--resume", str(path)] if where == "resume" else
                 ["--psd-alpha-max", "0.5", "--distill-model", "psd-tiny", "--distill-pretrained", str(path)])
    _code_carrying_checkpoint(path, marker)
    err = _one_line_error(argv(data, tmp_path, name, *extra, epochs=1), capsys, monkeypatch)
    assert str(path) in err
    assert "holds objects other than tensors and plain values (Trying to load unsupported GLOBAL posix.system" in err
    assert "weights_only=True" in err
    assert not marker.exists()


def test_resume_with_other_schedule_flags_stops_or_warns(data, tmp_path, capsys, monkeypatch):
    flags = ["--psd-teacher", "ema", "--psd-ramp-steps", "8", "--psd-soft-fraction", "0.5"]
    first = main(argv(data, tmp_path, "run", "--psd-alpha-max", "0.3", *flags, epochs=1))
    assert load_checkpoint(first["checkpoint"])["psd"]["flags"]["psd_alpha_max"] == 0.3

    changed = argv(data, tmp_path, "run", "--psd-alpha-max", "0.5", *flags, "--resume", "latest", "--batch-size", "32")
    err = _one_line_error(changed, capsys, monkeypatch)
    assert "the PSD schedule differs from the checkpoint's: --psd-alpha-max 0.3 -> 0.5; " in err
    assert "optimizer steps per epoch (the data size, --batch-size, --accum-freq, the world size) 4 -> 2;" in err
    assert "--psd-allow-schedule-change" in err

    same = main(argv(data, tmp_path, "run", "--psd-alpha-max", "0.3", *flags, "--resume", "latest"))
    assert [int(r["step"]) for r in read_steps(same)] == list(range(1, 9))

    accepted = main(argv(data, tmp_path, "run", "--psd-alpha-max", "0.5", *flags, "--resume", "latest",
                         "--psd-allow-schedule-change", epochs=3))
    steps = read_steps(accepted)
    assert [int(r["step"]) for r in steps] == list(range(1, 13))
    assert float(steps[-1]["alpha"]) == 0.5  # the new alpha max, past the 8-step ramp
    log = open(os.path.join(accepted["log_dir"], "out.log")).read()
    assert "continuing with a PSD schedule that differs from the checkpoint's (--psd-allow-schedule-change): " \
           "--psd-alpha-max 0.3 -> 0.5" in log
