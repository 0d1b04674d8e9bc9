"""psd_train on webdataset shards (img2dataset's layout: NNNN.png + NNNN.txt per sample), then resumed.

    .venv/bin/python -m pytest tests/test_train_webdataset.py -q

Needs the webdataset that open_clip_train 3.3 is written for (<= 0.2.86, pinned in
requirements.txt and bounded in the [train] extra).
"""
import pytest

pytest.importorskip("open_clip_train", reason="needs the training extras: pip install '.[train]'")
pytest.importorskip("webdataset", reason="needs the training extras: pip install '.[train]'")
import os  # noqa: E402
import tarfile  # noqa: E402

import pandas as pd  # noqa: E402

from psd_train.checkpoint import load_checkpoint  # noqa: E402
from psd_train.demo.model import TRAIN_FLAGS  # noqa: E402
from psd_train.main import main  # noqa: E402
from test_train import data, read_steps  # noqa: E402,F401  (data is a fixture)

SHARDS, PER_SHARD = 4, 16


def write_shards(data, folder) -> str:
    """The demo's 64 training images as 4 tar shards of 16 samples; the brace pattern that names them."""
    frame = pd.read_csv(data["train_csv"], sep="\t")
    for shard in range(SHARDS):
        with tarfile.open(folder / f"shard-{shard:04d}.tar", "w") as tar:
            for i in range(PER_SHARD):
                row = frame.iloc[shard * PER_SHARD + i]
                key = f"{shard:04d}{i:04d}"
                tar.add(row["filepath"], arcname=f"{key}.png")
                caption = folder / "caption.txt"
                caption.write_text(row["title"])
                tar.add(caption, arcname=f"{key}.txt")
    return str(folder / f"shard-{{0000..{SHARDS - 1:04d}}}.tar")


def argv(shards, logs, epochs):
    return [*TRAIN_FLAGS, "--train-data", shards, "--dataset-type", "webdataset", "--train-num-samples",
            str(SHARDS * PER_SHARD), "--batch-size", "16", "--epochs", str(epochs), "--workers", "2", "--lr", "1e-3",
            "--warmup", "2", "--seed", "3", "--logs", str(logs), "--name", "shards", "--psd-quiet", "--psd-threads",
            "1", "--psd-alpha-max", "0.3", "--psd-teacher", "ema", "--psd-ema-momentum", "0.9", "--psd-ramp-steps", "8"]


def test_train_on_shards_then_resume(data, tmp_path):
    shards = write_shards(data, tmp_path)
    first = main(argv(shards, tmp_path / "logs", epochs=1))
    steps = read_steps(first)
    assert [int(r["step"]) for r in steps] == [1, 2, 3, 4]  # 64 samples / 16 per batch
    assert load_checkpoint(first["checkpoint"])["epoch"] == 1

    resumed = main(argv(shards, tmp_path / "logs", epochs=2) + ["--resume", "latest"])
    steps = read_steps(resumed)
    assert [int(r["step"]) for r in steps] == list(range(1, 9))
    assert [float(r["alpha"]) for r in steps[4:]] == [0.3 * t / 8 for t in range(4, 8)]
    checkpoint = load_checkpoint(resumed["checkpoint"])
    assert checkpoint["epoch"] == 2
    assert checkpoint["psd"]["loss"]["_extra_state"]["step"] == 8
    assert checkpoint["psd"]["teacher"]["weights"] is not None
    log = open(os.path.join(resumed["log_dir"], "out.log")).read()
    assert "=> resuming checkpoint" in log and "psd_latest.pt" in log
    assert "psd_train: PSD loss backend cpp (--psd-backend auto; torch.float32 features on cpu)" in log
