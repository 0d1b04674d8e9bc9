"""The --psd-* schedule flags -> PSDLoss: alpha ramp, soft-fraction schedule and preset, one step per optimizer step.

    .venv/bin/python -m pytest tests/test_train_loss_from_flags.py -q
"""
import argparse

import pytest

from psd_train.args import split_args
from psd_kernels import PSDSigLipLoss
from psd_train.errors import FlagError
from psd_train.loss_from_flags import make_loss

STEPS_PER_EPOCH = 10


def loss_for(*flags, epochs=4, siglip=False, loss_dist_impl=None):
    psd, rest = split_args(list(flags))
    assert rest == []
    args = argparse.Namespace(epochs=epochs, seed=0, local_loss=False, gather_with_grad=False, rank=0, world_size=1,
                              siglip=siglip, loss_dist_impl=loss_dist_impl)
    return make_loss(psd, args, STEPS_PER_EPOCH)


def fractions(loss, steps):
    return [loss.fraction_schedule(t) for t in steps]


def test_defaults_whole_batch_and_alpha_over_all_epochs():
    loss = loss_for("--psd-alpha-max", "0.4")
    assert loss.step_per_forward is False  # psd_train advances it once per optimizer step
    assert (loss.schedule.kind, loss.schedule.ramp_steps) == ("linear", 40)
    assert loss.fraction_schedule.kind == "constant"
    assert fractions(loss, [0, 39]) == [1.0, 1.0]


@pytest.mark.parametrize("flag", ["--psd-soft-fraction", "--psd-soft-fraction-end"])
def test_constant_fraction_under_either_name(flag):
    loss = loss_for(flag, "0.3")
    assert loss.fraction_schedule.kind == "constant"
    assert fractions(loss, [0, 17]) == [0.3, 0.3]


def test_ramp_defaults_to_linear_over_the_alpha_ramp():
    loss = loss_for("--psd-ramp-epochs", "2", "--psd-soft-fraction-start", "0.2", "--psd-soft-fraction-end", "0.6")
    fs = loss.fraction_schedule
    assert (fs.kind, fs.start, fs.end, fs.ramp_steps) == ("linear", 0.2, 0.6, 20)
    assert fractions(loss, [0, 10, 20, 30]) == pytest.approx([0.2, 0.4, 0.6, 0.6])


def test_ramp_in_epochs_and_in_steps():
    by_epochs = loss_for("--psd-soft-fraction-start", "0", "--psd-soft-fraction-schedule", "cosine",
                         "--psd-soft-fraction-ramp-epochs", "1.5")
    assert (by_epochs.fraction_schedule.kind, by_epochs.fraction_schedule.ramp_steps) == ("cosine", 15)
    by_steps = loss_for("--psd-soft-fraction-start", "0.5", "--psd-soft-fraction-schedule", "per_epoch",
                        "--psd-soft-fraction-ramp-steps", "20")
    # per_epoch: one equal rise at each epoch start, 20 / 10 = 2 rises from 0.5 to 1
    assert fractions(by_steps, [0, 9, 10, 19, 20, 35]) == pytest.approx([0.5, 0.5, 0.75, 0.75, 1.0, 1.0])


def test_seed_preset_is_the_paper_setting():
    loss = loss_for("--psd-soft-fraction-preset", "seed", epochs=12)
    fs = loss.fraction_schedule
    assert (fs.kind, fs.start, fs.end, fs.ramp_steps, fs.steps_per_epoch) == ("per_epoch", 0.1, 1.0, 90, 10)
    # 0.1 in epoch 0, 0.1 more at each epoch start, 1.0 from epoch 9 on
    assert fractions(loss, [10 * e for e in range(11)] + [9]) == pytest.approx(
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.0, 0.1])


@pytest.mark.parametrize("flags, match", [
    (["--psd-soft-fraction-preset", "seed", "--psd-soft-fraction", "0.5"], "drop --psd-soft-fraction"),
    (["--psd-soft-fraction-schedule", "linear"], "needs --psd-soft-fraction-start"),
    (["--psd-soft-fraction-schedule", "constant", "--psd-soft-fraction-start", "0.1"], "has no start"),
    (["--psd-soft-fraction-start", "1.5"], "--psd-soft-fraction-start must lie in"),
    (["--psd-soft-fraction-end", "-0.1"], "--psd-soft-fraction must lie in"),
    (["--psd-soft-fraction-ramp-steps", "3", "--psd-soft-fraction-ramp-epochs", "1"], "not both"),
    (["--psd-soft-fraction-ramp-steps", "-1"], "must be >= 0"),
])
def test_bad_soft_fraction_flags(flags, match):
    with pytest.raises(FlagError, match=match):
        split_args(flags)


def test_siglip_gives_the_sigmoid_loss_with_the_same_schedules():
    loss = loss_for("--psd-alpha-max", "0.4", "--psd-soft-fraction-preset", "seed", "--psd-teacher-scale", "5",
                    "--psd-teacher-bias", "-3", epochs=12, siglip=True, loss_dist_impl="gather")
    assert isinstance(loss, PSDSigLipLoss) and loss.dist_impl == "gather"
    assert (loss.teacher_scale, loss.teacher_bias, loss.step_per_forward) == (5.0, -3.0, False)
    assert (loss.schedule.kind, loss.schedule.ramp_steps) == ("linear", 120)
    assert fractions(loss, [0, 10, 90]) == pytest.approx([0.1, 0.2, 1.0])
    assert loss_for("--psd-alpha-max", "0.4", siglip=True).dist_impl == "bidir"  # open_clip's default
