"""psd_train's command-line errors: the message names the flag, file and row; one line, exit status 2.

    .venv/bin/python -m pytest tests/test_train_errors.py -q
"""
import pytest

pytest.importorskip("open_clip_train", reason="needs the training extras: pip install '.[train]'")
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pandas as pd  # noqa: E402

from psd_train.checkpoint import CheckpointError  # noqa: E402
from psd_train.datafiles import DataFileError  # noqa: E402
from psd_train.errors import FlagError, run_command  # noqa: E402
from psd_train.main import main  # noqa: E402
from test_train import argv, data  # noqa: E402,F401  (data is a fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _copy_csv(data, tmp_path, edit):
    frame = pd.read_csv(data["train_csv"], sep="\t")
    frame = edit(frame)
    path = tmp_path / "train.csv"
    frame.to_csv(path, sep="\t", index=False)
    return str(path)


@pytest.mark.parametrize("problem, match", [
    ("missing_file", "file not found"),
    ("missing_image", "row 3: image .* not found"),
    ("corrupt_image", "row 0: image .* is corrupt"),
    ("missing_column", "no column 'title'"),
])
def test_bad_data_files_are_reported(problem, match, data, tmp_path):
    if problem == "missing_file":
        train = str(tmp_path / "nope.csv")
    elif problem == "missing_image":
        train = _copy_csv(data, tmp_path, lambda f: f.assign(filepath=f.filepath.where(f.index != 3, "/nope.png")))
    elif problem == "corrupt_image":
        broken = tmp_path / "broken.png"
        broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        train = _copy_csv(data, tmp_path, lambda f: f.assign(filepath=f.filepath.where(f.index != 0, str(broken))))
    else:
        train = _copy_csv(data, tmp_path, lambda f: f.drop(columns=["title"]))
    args = argv(data, tmp_path, "bad")
    args[args.index("--train-data") + 1] = train
    with pytest.raises(DataFileError, match=match):
        main(args)


@pytest.mark.parametrize("flags, match", [
    (["--psd-alpha-max", "1.5"], "alpha-max"),
    (["--psd-teacher", "distill"], "distill-model"),
    (["--psd-ramp-steps", "3", "--psd-ramp-epochs", "1"], "not both"),
    (["--model", "coca_ViT-B-32"], "CoCa models"),
    (["--psd-teacher-bias", "-2"], "needs --siglip"),
])
def test_bad_flags_are_reported(flags, match, data, tmp_path):
    with pytest.raises(FlagError, match=match):
        main(argv(data, tmp_path, "flags", *flags))


def test_corrupt_checkpoint_is_reported(data, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        main(argv(data, tmp_path, "bad", "--resume", str(bad)))


def test_usage_error_is_one_line_and_status_2(data, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PSD_DEBUG", raising=False)
    args = argv(data, tmp_path, "bad", "--resume", str(tmp_path / "missing.pt"))
    assert run_command("python -m psd_train", "psd_train.main:main", args) == 2
    err = capsys.readouterr().err
    assert err == f"python -m psd_train: error: checkpoint {tmp_path / 'missing.pt'} does not exist\n"

    monkeypatch.setenv("PSD_DEBUG", "1")
    assert run_command("python -m psd_train", "psd_train.main:main", args) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and err.endswith("does not exist\n")


def test_command_line_exit_status(tmp_path):
    """The real entry point: exit status 2, one line on stderr, no traceback."""
    env = {k: v for k, v in os.environ.items() if k != "PSD_DEBUG"}
    missing = str(tmp_path / "missing.csv")
    run = subprocess.run([sys.executable, "-m", "psd_train", "--train-data", missing, "--dataset-type", "csv",
                          "--logs", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert run.returncode == 2, run.stderr
    assert run.stderr == f"python -m psd_train: error: --train-data {missing}: file not found\n"
