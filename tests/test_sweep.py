"""The paired-seed sweep: run order, the born-again teacher from the CLIP run, resuming, the tables.

    .venv/bin/python -m pytest tests/test_sweep.py -q

Trains psd-tiny for real on 64 demo images (one epoch of 4 steps per run).
"""
import pytest

pytest.importorskip("open_clip_train", reason="needs the training extras: pip install '.[train]'")
import os  # noqa: E402
import pathlib  # noqa: E402

import pandas as pd  # noqa: E402

from psd_train.demo.report import SETTINGS, regime_tables, summarize  # noqa: E402
from psd_train.demo.sweep import CLIP_CHECKPOINT, METHODS, main as sweep_main, method_flags  # noqa: E402
from psd_train.errors import FlagError  # noqa: E402

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


def test_rows_record_the_settings_each_run_used(sweep):
    out, _ = sweep
    frame = pd.read_csv(out / "results.csv")
    assert set(SETTINGS) <= set(frame.columns)
    clip, born_again = frame.iloc[0], frame.iloc[1]
    assert (clip["psd_teacher"], clip["psd_alpha_max"], clip["psd_schedule"]) == ("self", 0.0, "linear")
    assert (born_again["psd_teacher"], born_again["psd_alpha_max"], born_again["psd_schedule"]) == \
        ("distill", 0.5, "constant")
    assert frame["psd_ema_momentum"].isna().all()  # neither teacher is EMA
    table = summarize(str(out / "results.csv"))
    assert table.index("### PSD settings each method ran with") < table.index("### caption noise 0%")
    assert "| clip | none (alpha 0) | - | 0 |" in table
    assert "| born_again | distill | cross | 0.5 | constant | none (constant) | - | own | 1 |" in table


def test_methods_take_the_trainers_defaults_unless_they_set_a_flag():
    from psd_train.args import psd_parser, split_args

    defaults = psd_parser().parse_args([])
    for name, method in METHODS.items():
        psd, _ = split_args(method_flags(name, __file__))
        assert psd.psd_teacher == method.teacher and psd.psd_alpha_max == method.alpha_max
        for flag in ("psd_ema_momentum", "psd_teacher_scale", "psd_schedule", "psd_ramp_epochs",
                     "psd_soft_fraction_preset", "psd_teacher_mode"):
            if f"--{flag.replace('_', '-')}" not in method.overrides:
                assert getattr(psd, flag) == getattr(defaults, flag), (name, flag)
    assert split_args(method_flags("albef_ema"))[0].psd_ema_momentum == 0.995  # ALBEF's, set explicitly
    assert split_args(method_flags("ema_teacher"))[0].psd_ema_momentum == defaults.psd_ema_momentum == 0.99


def test_a_results_csv_of_an_older_sweep_takes_the_new_columns(tmp_path):
    from psd_train.runlog import append_csv_rows

    path = tmp_path / "results.csv"
    path.write_text("method,noise,seed,zeroshot_top1\nclip,0.5,0,0.4\n")
    append_csv_rows(str(path), ("method", "noise", "seed", "psd_teacher", "zeroshot_top1"),
                    [{"method": "pskd", "noise": 0.5, "seed": 0, "psd_teacher": "prev_epoch", "zeroshot_top1": 0.5}])
    frame = pd.read_csv(path)
    assert list(frame.columns) == ["method", "noise", "seed", "zeroshot_top1", "psd_teacher"]
    assert frame["psd_teacher"].tolist()[1] == "prev_epoch" and frame["zeroshot_top1"].tolist() == [0.4, 0.5]


def test_tables_have_sizes_gap_and_memorisation(sweep):
    out, _ = sweep
    table = summarize(str(out / "results.csv"))
    assert "### caption noise 50%" in table and "| born_again |" in table
    assert "noise gap (clean clip - noisy clip, seeds [0])" in table
    regime = regime_tables(str(out / "results.csv"), every=1)
    assert "### clip, 64 training images" in regime and "swapped pairs memorised" in regime
    assert "| 50% |" in regime and "of 32)" in regime  # 32 of the 64 captions were swapped


def test_born_again_without_its_baseline_run_is_refused(tmp_path):
    assert CLIP_CHECKPOINT in METHODS["born_again"].flags()
    with pytest.raises(FlagError, match="needs the finished clip run"):
        method_flags("born_again", str(tmp_path / "missing.pt"))
    with pytest.raises(FlagError, match=r"needs the finished siglip run .* \(run --methods siglip first\)"):
        method_flags("siglip_born_again", str(tmp_path / "missing.pt"))
    assert METHODS["siglip_ema_teacher"].flags()[:3] == ["--siglip", "--psd-teacher", "ema"]
    assert method_flags("pskd") == METHODS["pskd"].flags() == ["--psd-teacher", "prev_epoch", "--psd-alpha-max", "0.8"]


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


RESULTS = pathlib.Path(__file__).resolve().parent.parent / "results"
GENERATED = "Generated by `python -m psd_train.demo.report"


@pytest.mark.parametrize("folder", sorted(p.parent.name for p in RESULTS.glob("*/summary.md")
                                          if GENERATED in p.read_text()))
def test_committed_summary_is_the_report_of_its_csvs(folder):
    """A results folder's summary.md is what the report prints from its results.csv and curves.csv
    against the baseline its command names (default clip; the runs' logs are not committed: the
    curves stand in for them)."""
    results_csv = str(RESULTS / folder / "results.csv")
    assert not (RESULTS / folder / "logs").exists()
    command = (RESULTS / folder / "summary.md").read_text().split(GENERATED, 1)[1].split("`", 1)[0].split()
    baseline = command[1] if len(command) > 1 else "clip"
    printed = summarize(results_csv, baseline=baseline) + "\n" + regime_tables(results_csv, method=baseline)
    clean_runs = (pd.read_csv(results_csv)["noise"] == 0).any()  # the regime tables start from clean captions
    assert "no per-epoch curves" not in printed if clean_runs else "no per-epoch curves of clean-caption runs" in printed
    assert printed in (RESULTS / folder / "summary.md").read_text()
