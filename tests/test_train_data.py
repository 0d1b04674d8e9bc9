"""CSV data checks whose cost does not grow with the data, and images skipped during training.

    .venv/bin/python -m pytest tests/test_train_data.py -q

Before training, rank 0 decodes --psd-check-images random images of the CSV (0: none).
During training, an image that is missing or does not decode is skipped, counted and
named in a warning; more than --psd-max-skipped-share of them ends the run with one line.
"""
import pytest

pytest.importorskip("open_clip_train", reason="needs the training extras: pip install '.[train]'")
import os  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from psd_train.datafiles import DataFileError  # noqa: E402
from psd_train.errors import run_command  # noqa: E402
from psd_train.main import main  # noqa: E402
from test_train import argv, data, read_steps  # noqa: E402,F401  (data is a fixture)

SEED = "3"  # test_train.argv's --seed: it draws the checked sample


def _with_bad_rows(data, tmp_path, rows, image="/nope/missing.png"):
    frame = pd.read_csv(data["train_csv"], sep="\t")
    frame.loc[list(rows), "filepath"] = image
    path = tmp_path / "train.csv"
    frame.to_csv(path, sep="\t", index=False)
    return str(path)


def _args(data, tmp_path, train, *extra, epochs=1):
    args = argv(data, tmp_path, "run", *extra, epochs=epochs)
    args[args.index("--train-data") + 1] = train
    return args


def test_sample_check_decodes_only_its_sample(data, tmp_path):
    sample = sorted(np.random.default_rng(int(SEED)).choice(64, size=8, replace=False).tolist())
    outside = next(row for row in range(64) if row not in sample)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    train = _with_bad_rows(data, tmp_path, [sample[3]], image=str(broken))
    expected = rf"--train-data .*train.csv: row {sample[3]}: image .*broken.png is corrupt"
    with pytest.raises(DataFileError, match=expected):
        main(_args(data, tmp_path, train, "--psd-check-images", "8"))
    # a bad image outside the sample passes the check; training skips it
    train = _with_bad_rows(data, tmp_path, [outside], image=str(broken))
    result = main(_args(data, tmp_path, train, "--psd-check-images", "8", "--psd-max-skipped-share", "0.5"))
    assert len(read_steps(result)) == 4


def test_check_off_reads_only_the_header(data, tmp_path):
    frame = pd.read_csv(data["train_csv"], sep="\t")
    frame.loc[5, "title"] = None  # an empty caption: found only by reading the rows
    path = tmp_path / "train.csv"
    frame.to_csv(path, sep="\t", index=False)
    with pytest.raises(DataFileError, match="row 5 has an empty caption"):
        main(_args(data, tmp_path, str(path)))
    with pytest.raises(DataFileError, match="no column 'filepath'"):  # the header is still checked
        main(_args(data, tmp_path, str(path), "--psd-check-images", "0", "--csv-separator", ","))
    result = main(_args(data, tmp_path, str(path), "--psd-check-images", "0"))
    assert len(read_steps(result)) == 4


@pytest.mark.parametrize("workers", ["0", "2"])
def test_missing_image_is_skipped_counted_and_named(workers, data, tmp_path):
    train = _with_bad_rows(data, tmp_path, [7])
    result = main(_args(data, tmp_path, train, "--psd-check-images", "0", "--psd-max-skipped-share", "0.05",
                        "--workers", workers))
    assert len(read_steps(result)) == 4  # every batch full: the next row took row 7's place
    log = open(os.path.join(result["log_dir"], "out.log")).read()
    assert f"--train-data {train}: skipped image /nope/missing.png (FileNotFoundError" in log
    # 64 rows drawn, one of them missing and replaced by the row after it
    assert f"--train-data {train}: 1 of 65 images read so far were missing or did not decode and were skipped" in log


@pytest.mark.parametrize("workers", ["0", "2"])
def test_too_many_skipped_images_stop_with_one_line(workers, data, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PSD_DEBUG", raising=False)
    train = _with_bad_rows(data, tmp_path, range(0, 64, 6))  # 11 of 64 rows
    args = _args(data, tmp_path, train, "--psd-check-images", "0", "--psd-max-skipped-share", "0.1",
                 "--workers", workers)
    assert run_command("python -m psd_train", "psd_train.main:main", args) == 2
    last = capsys.readouterr().err.splitlines()[-1]
    # skipped > 0.1 * max(read, 64) first holds at the 7th skipped image; with workers, the other
    # worker may skip more before the run stops
    skipped = int(last.split(f"--train-data {train}: ")[1].split()[0])
    assert skipped == 7 if workers == "0" else 7 <= skipped <= 11
    assert last.startswith(f"python -m psd_train: error: --train-data {train}: {skipped} of ")
    assert last.endswith("images read so far were missing or did not decode, more than --psd-max-skipped-share 0.1 "
                         "allows (the warnings in the log name them); fix the CSV or raise --psd-max-skipped-share")


@pytest.mark.parametrize("flags, match", [
    (["--psd-check-images", "-1"], "--psd-check-images must be >= 0, got -1"),
    (["--psd-max-skipped-share", "1.5"], r"--psd-max-skipped-share must lie in \[0, 1\], got 1.5"),
])
def test_bad_data_flags_are_reported(flags, match, data, tmp_path):
    from psd_train.errors import FlagError

    with pytest.raises(FlagError, match=match):
        main(_args(data, tmp_path, data["train_csv"], *flags))
