"""The paired-seed sweep: run order, the born-again teacher from the CLIP run, resuming, the tables.

    .venv/bin/python -m pytest tests/test_sweep.py -q

Trains psd-tiny for real on 64 demo images (one epoch of 4 steps per run).
"""
import os

import pandas as pd
import pytest

from psd_train.demo.report import regime_tables, summarize
from psd_train.demo.sweep import CLIP_CHECKPOINT, METHODS, main as sweep_main, method_flags
from psd_train.errors import FlagError

TINY = ["--seeds", "0", "--n-train", "64", "--n-val", "4", "--n-test", "40", "--epochs", "1",
        "--batch-size", "16", "--eval-every", "1"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    argv = ["--out", str(out), "--noise", "0", "0.5", "--methods", "born_again", "clip", *TINY]
    sweep_main(argv)
    return out, argv


def test_clip_runs_first_and_born_again_loads_its_checkpoint(sweep):
    out, _ = sweep
    frame = pd.read_csv(out / "results.csv")
    assert list(zip(frame["method"], frame["noise"])) == [("clip", 0.0), ("born_again", 0.0),
                                                         ("clip", 0.5), ("born_again", 0.5)]
    assert set(frame["n_train"]) == {64} and {"memorised_r1", "train_fit_r1"} <= set(frame.columns)
    for noise in (0.0, 0.5):
        log = (out / "logs" / f"born_again-n64-noise{noise}-seed0" / "out.log").read_text()
        clip_ckpt = out / "logs" / f"clip-n64-noise{noise}-seed0" / "checkpoints" / "psd_latest.pt"
        assert f"`pretrained` specifies file path: {clip_ckpt}" in log  # the teacher is this seed's CLIP run


def test_finished_runs_are_skipped(sweep, capsys):
    out, argv = sweep
    before = (out / "results.csv").read_text()
    sweep_main(argv)
    assert (out / "results.csv").read_text() == before
    assert "[1/4]" not in capsys.readouterr().out  # nothing trained again


def test_tables_have_sizes_gap_and_memorisation(sweep):
    out, _ = sweep
    table = summarize(str(out / "results.csv"))
    assert "### caption noise 50%" in table and "| born_again |" in table
    assert "noise gap (clean clip - noisy clip, seeds [0])" in table
    regime = regime_tables(str(out / "results.csv"), every=1)
    assert "### clip, 64 training images" in regime and "swapped pairs memorised" in regime
    assert "| 50% |" in regime and "of 32)" in regime  # 32 of the 64 captions were swapped


def test_born_again_without_the_clip_run_is_refused(tmp_path):
    assert CLIP_CHECKPOINT in METHODS["born_again"]
    with pytest.raises(FlagError, match="needs the finished CLIP run"):
        method_flags("born_again", str(tmp_path / "missing.pt"))
    assert method_flags("pskd") == METHODS["pskd"]


def test_epochs_per_size_must_match(tmp_path):
    with pytest.raises(FlagError, match="--epochs takes one value or one per --n-train size"):
        sweep_main(["--out", str(tmp_path), "--n-train", "64", "128", "--epochs", "1", "2", "3"])
    assert not os.path.exists(tmp_path / "results.csv")


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_is_valid_psd_flags(method, tmp_path):
    from psd_train.args import split_args
    ckpt = tmp_path / "clip.pt"
    ckpt.write_bytes(b"")
    psd, rest = split_args(method_flags(method, str(ckpt)))
    assert 0.0 <= psd.psd_alpha_max <= 1.0
    if method == "progressive":
        assert psd.psd_soft_fraction_preset == "seed" and psd.psd_teacher == "prev_epoch"
    if method == "born_again":
        assert rest == ["--distill-model", "psd-tiny", "--distill-pretrained", str(ckpt)]
