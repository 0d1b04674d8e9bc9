"""psd_train end to end on CPU: main(argv), every teacher, resume equivalence, clear errors.

    .venv/bin/python -m pytest tests/test_train.py -q

Runs open_clip_train for real on a 64-image slice of the demo data with psd-tiny
(4 steps of 16 per epoch).
"""
import pytest

pytest.importorskip("open_clip_train", reason="needs the training extras: pip install '.[train]'")
import csv  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from psd_train.checkpoint import atomic_save, load_checkpoint  # noqa: E402
from psd_train.demo.data import build_demo_data  # noqa: E402
from psd_train.demo.model import TRAIN_FLAGS  # noqa: E402
from psd_train.demo.report import paired_interval, summarize  # noqa: E402
from psd_train.main import main  # noqa: E402
from psd_train.teachers import Teacher  # noqa: E402

BATCH = 16


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("psd_demo")
    return build_demo_data(root, noise=0.3, seed=0, n_train=64, n_val=16, n_test=40, progress=False)


def argv(data, logs, name, *extra, epochs=2):
    return [*TRAIN_FLAGS, "--train-data", data["train_csv"], "--dataset-type", "csv",
            "--csv-separator", "\t", "--csv-img-key", "filepath", "--csv-caption-key", "title",
            "--batch-size", str(BATCH), "--epochs", str(epochs), "--workers", "0", "--lr", "1e-3",
            "--warmup", "2", "--seed", "3", "--logs", str(logs), "--name", name, "--psd-quiet", "--psd-threads", "1", *extra]


def read_steps(result):
    with open(os.path.join(result["log_dir"], "psd_steps.csv")) as f:
        return list(csv.DictReader(f))


def test_main_end_to_end_with_evaluation(data, tmp_path):
    result = main(argv(data, tmp_path, "e2e", "--psd-alpha-max", "0.5", "--psd-eval-data", data["root"], epochs=1))
    metrics = result["metrics"]
    for key in ("zeroshot_top1", "i2t_r1", "t2i_r10", "linear_probe_top1", "shift_mean_top1"):
        assert 0.0 <= metrics[key] <= 1.0, key
    steps = read_steps(result)
    assert [int(r["step"]) for r in steps] == [1, 2, 3, 4]
    # linear ramp over the whole run (4 steps): alpha = 0.5 * t / 4 at steps t = 0..3
    assert [float(r["alpha"]) for r in steps] == pytest.approx([0.0, 0.125, 0.25, 0.375])
    checkpoint = load_checkpoint(result["checkpoint"])
    assert checkpoint["epoch"] == 1
    assert checkpoint["psd"]["loss"]["_extra_state"]["step"] == 4
    with open(os.path.join(result["log_dir"], "psd_metrics.csv")) as f:
        assert int(next(csv.DictReader(f))["epoch"]) == 1


TEACHER_FLAGS = {
    "self": [],
    "self_temperature": ["--psd-teacher-scale", "5"],
    "ema": ["--psd-teacher", "ema", "--psd-ema-momentum", "0.5"],
    "prev_epoch": ["--psd-teacher", "prev_epoch"],
    "within_modality": ["--psd-teacher-mode", "within_modality"],
}


@pytest.fixture(scope="module")
def clip_and_self(data, tmp_path_factory):
    """Loss curves of plain CLIP and of the self teacher, to compare the other teachers with."""
    logs = tmp_path_factory.mktemp("logs")
    clip = read_steps(main(argv(data, logs, "clip", "--psd-alpha-max", "0")))
    self_ = read_steps(main(argv(data, logs, "self", "--psd-alpha-max", "0.5", "--psd-schedule", "constant")))
    return clip, self_


@pytest.mark.parametrize("teacher", [t for t in TEACHER_FLAGS if t != "self"])
def test_each_teacher_runs_and_changes_training(teacher, data, tmp_path, clip_and_self):
    clip, self_ = clip_and_self
    extra = ["--psd-alpha-max", "0.5", "--psd-schedule", "constant", *TEACHER_FLAGS[teacher]]
    steps = read_steps(main(argv(data, tmp_path, teacher, *extra)))
    losses = [float(r["loss"]) for r in steps]
    assert len(losses) == 8 and all(torch.isfinite(torch.tensor(losses)))
    self_losses = [float(r["loss"]) for r in self_]
    if teacher == "prev_epoch":
        # epoch 0 has no previous epoch: the teacher is the student itself, as for "self"
        assert losses[:4] == pytest.approx(self_losses[:4], rel=1e-5)
        assert losses[4:] != pytest.approx(self_losses[4:], rel=1e-4)
    else:
        assert losses[1:] != pytest.approx(self_losses[1:], rel=1e-4)


def test_self_teacher_at_alpha_zero_is_clip(clip_and_self):
    clip, _ = clip_and_self
    assert all(float(r["alpha"]) == 0.0 for r in clip)


def test_distill_teacher(data, tmp_path, clip_and_self):
    teacher_checkpoint = str(tmp_path / "teacher.pt")
    first = main(argv(data, tmp_path, "teacher", epochs=1))
    torch.save({"state_dict": load_checkpoint(first["checkpoint"])["state_dict"]}, teacher_checkpoint)
    result = main(argv(data, tmp_path, "student", "--psd-alpha-max", "0.5", "--psd-schedule", "constant",
                       "--distill-model", "psd-tiny", "--distill-pretrained", teacher_checkpoint))
    losses = [float(r["loss"]) for r in read_steps(result)]
    assert losses != pytest.approx([float(r["loss"]) for r in clip_and_self[1]], rel=1e-4)


def test_ema_update_and_prev_epoch_snapshot():
    student = torch.nn.Linear(3, 2)
    ema = Teacher("ema", ema_momentum=0.9)
    ema.for_epoch(student, 0)
    before = ema.model.weight.clone()
    with torch.no_grad():
        student.weight.add_(1.0)
    ema.after_step(student)
    assert torch.allclose(ema.model.weight, 0.9 * before + 0.1 * student.weight)

    prev = Teacher("prev_epoch")
    assert prev.for_epoch(student, 0) is None
    prev.for_epoch(student, 1)
    snapshot = student.weight.clone()
    with torch.no_grad():
        student.weight.add_(1.0)
    prev.after_step(student)
    assert torch.equal(prev.model.weight, snapshot)


def test_resume_matches_uninterrupted_run(data, tmp_path, monkeypatch):
    extra = ["--psd-alpha-max", "0.5", "--psd-teacher", "ema", "--psd-ema-momentum", "0.8",
             "--psd-soft-fraction", "0.5"]
    full = main(argv(data, tmp_path, "full", *extra, epochs=3))

    import open_clip_train.main as oc_main
    original = oc_main.train_one_epoch

    def crash_in_epoch_2(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args, tb_writer=None):
        if epoch == 2:
            raise KeyboardInterrupt("simulated crash")
        return original(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args, tb_writer=tb_writer)

    monkeypatch.setattr(oc_main, "train_one_epoch", crash_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        main(argv(data, tmp_path, "resumed", *extra, epochs=3))
    monkeypatch.setattr(oc_main, "train_one_epoch", original)
    resumed = main(argv(data, tmp_path, "resumed", *extra, "--resume", "latest", epochs=3))

    a, b = load_checkpoint(full["checkpoint"]), load_checkpoint(resumed["checkpoint"])
    assert a["epoch"] == b["epoch"] == 3
    assert a["psd"]["loss"]["_extra_state"] == b["psd"]["loss"]["_extra_state"]
    for name, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    for name, value in a["psd"]["teacher"]["weights"].items():
        torch.testing.assert_close(b["psd"]["teacher"]["weights"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    steps_a, steps_b = read_steps(full), read_steps(resumed)
    assert [r["step"] for r in steps_b] == [r["step"] for r in steps_a]
    assert [float(r["loss"]) for r in steps_b] == pytest.approx([float(r["loss"]) for r in steps_a], rel=1e-5)


def test_accum_freq_with_ema_teacher(data, tmp_path):
    """--accum-freq 4: one optimizer step per 4 micro-batches; the schedules count optimizer steps."""
    result = main(argv(data, tmp_path, "accum", "--batch-size", "8", "--accum-freq", "4", "--psd-alpha-max", "0.3",
                       "--psd-teacher", "ema", "--psd-ema-momentum", "0.5"))
    steps = read_steps(result)
    # 64 rows / 8 = 8 micro-batches per epoch = 2 optimizer steps; alpha ramps linearly over the 4 steps
    assert [int(r["step"]) for r in steps] == [1, 2, 3, 4]
    assert [int(r["epoch"]) for r in steps] == [0, 0, 1, 1]
    assert [float(r["alpha"]) for r in steps] == pytest.approx([0.0, 0.075, 0.15, 0.225])
    assert all(math.isfinite(float(r["loss"])) for r in steps)
    checkpoint = load_checkpoint(result["checkpoint"])
    assert checkpoint["psd"]["loss"]["_extra_state"]["step"] == 4
    assert checkpoint["psd"]["teacher"]["weights"] is not None


def test_soft_fraction_schedule_in_step_log_and_tensorboard(data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = main(argv(data, tmp_path, "fraction", "--psd-alpha-max", "0.5", "--psd-soft-fraction-preset", "seed",
                       "--report-to", "tensorboard"))
    # the seed paper's preset: 0.1 of the rows in epoch 0, 0.2 in epoch 1 (4 steps per epoch)
    expected = [0.1] * 4 + [0.2] * 4
    assert [float(r["soft_fraction"]) for r in read_steps(result)] == pytest.approx(expected)
    events = EventAccumulator(os.path.join(result["log_dir"], "tensorboard")).Reload()
    assert [e.value for e in events.Scalars("psd/soft_fraction")] == pytest.approx(expected)


def test_amp_bf16_on_cpu(data, tmp_path, monkeypatch):
    """--precision amp_bf16 on CPU: autocast hands the loss bfloat16 features, as a GPU run would."""
    import psd_train.loss_from_flags

    dtypes = []

    class RecordingLoss(psd_train.loss_from_flags.PSDLoss):
        def forward(self, image_features, text_features, logit_scale, **kwargs):
            dtypes.append((image_features.dtype, kwargs["dist_image_features"].dtype))
            return super().forward(image_features, text_features, logit_scale, **kwargs)

    monkeypatch.setattr(psd_train.loss_from_flags, "PSDLoss", RecordingLoss)
    result = main(argv(data, tmp_path, "bf16", "--precision", "amp_bf16", "--psd-alpha-max", "0.5",
                       "--psd-soft-fraction", "0.5", "--psd-teacher", "ema", epochs=1))
    assert dtypes == [(torch.bfloat16, torch.bfloat16)] * 4
    losses = [float(r["loss"]) for r in read_steps(result)]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)


def test_atomic_save_keeps_previous_checkpoint_on_crash(tmp_path, monkeypatch):
    path = str(tmp_path / "psd_latest.pt")
    atomic_save({"epoch": 1}, path)

    def torn_save(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError):
        atomic_save({"epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path) == {"epoch": 1}
    assert os.listdir(tmp_path) == ["psd_latest.pt"]


def test_summarize_pairs_methods_by_seed(tmp_path):
    rows = [("clip", 0.5, 0, 0.50), ("clip", 0.5, 1, 0.70), ("psd", 0.5, 0, 0.55), ("psd", 0.5, 1, 0.72),
            ("psd", 0.5, 2, 0.99)]  # seed 2 has no CLIP run: it must not enter the paired difference
    path = tmp_path / "results.csv"
    pd.DataFrame(rows, columns=["method", "noise", "seed", "zeroshot_top1"]).to_csv(path, index=False)
    table = summarize(str(path), metrics=("zeroshot_top1",))
    assert "| clip | 2 | 60.0 ± 14.1 |" in table
    # paired differences 5 and 2 points: mean 3.5, sd 2.121, t(0.975, 1) = 12.706 -> half-width 19.06
    assert "| psd | +3.5 [-15.6, +22.6] (2/2) |" in table


def test_paired_interval_is_the_paired_t_interval():
    # differences 1, 2, 3: mean 2, sd 1, t(0.975, 2) = 4.3027 -> 2 +- 4.3027 / sqrt(3)
    mean, low, high = paired_interval(pd.Series([1.0, 2.0, 3.0]))
    assert mean == 2.0 and low == pytest.approx(2 - 2.48418, abs=1e-4) and high == pytest.approx(2 + 2.48418, abs=1e-4)
    assert paired_interval(pd.Series([4.0])) == (4.0, 4.0, 4.0)


def test_summarize_prints_no_header_only_tables(tmp_path):
    rows = [("clip", 0.0, 0, 0.7), ("clip", 0.5, 0, 0.4), ("clip", 0.5, 1, 0.5)]  # CLIP only: nothing to pair
    path = tmp_path / "results.csv"
    pd.DataFrame(rows, columns=["method", "noise", "seed", "zeroshot_top1"]).to_csv(path, index=False)
    table = summarize(str(path), metrics=("zeroshot_top1",))
    assert "paired difference" not in table and "wins back" not in table
    lines = table.splitlines()
    for i, line in enumerate(lines):  # every table header is followed by its separator and a row
        if line.startswith("|---"):
            assert i + 1 < len(lines) and lines[i + 1].startswith("| "), table


@pytest.mark.parametrize("parallel", ["--parallel", "--sequential"])
def test_demo_quick(tmp_path, parallel):
    from psd_train.demo.run import main as demo_main

    out = demo_main(["--out", str(tmp_path), "--n-train", "64", "--n-test", "40", "--epochs", "1",
                     "--batch-size", "16", "--eval-every", "1", "--threads", "1", parallel])
    assert list(out["metrics"]) == ["CLIP (50% noisy captions)", "PSD born_again (50% noisy captions)",
                                    "CLIP (clean captions)"]
    assert os.path.getsize(out["plot"]) > 10_000
    log = (tmp_path / "logs" / "born_again" / "out.log").read_text()
    assert f"`pretrained` specifies file path: {tmp_path / 'logs' / 'clip' / 'checkpoints' / 'psd_latest.pt'}" in log
