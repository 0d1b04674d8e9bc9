"""The PSD schedule, the soft subset, and PSDLoss's step counter across save/restore.

    .venv/bin/python -m pytest tests/test_schedule.py
"""
import math

import pytest
import torch

from psd_kernels import AlphaSchedule, FractionSchedule, PSDLoss, SoftSubset
from psd_kernels.schedule import IMAGE_ROWS, TEXT_ROWS


def test_linear_cosine_constant_values():
    lin = AlphaSchedule("linear", 0.5, 100)
    assert [lin(t) for t in (0, 25, 100, 1000)] == [0.0, 0.125, 0.5, 0.5]
    cos = AlphaSchedule("cosine", 0.5, 100)
    assert cos(0) == 0.0 and cos(100) == pytest.approx(0.5) and cos(2000) == pytest.approx(0.5)
    assert cos(50) == pytest.approx(0.25) and cos(25) == pytest.approx(0.25 * (1 - math.cos(math.pi / 4)))
    assert AlphaSchedule("constant", 0.3, 100)(0) == 0.3
    assert AlphaSchedule("linear", 0.3, 0)(0) == 0.3  # no ramp: alpha_max from the start


@pytest.mark.parametrize("kwargs,match", [
    (dict(kind="step"), "schedule must be one of"),
    (dict(alpha_max=1.5), "alpha_max must lie in"),
    (dict(alpha_max=-0.1), "alpha_max must lie in"),
    (dict(ramp_steps=-1), "ramp_steps must be"),
    (dict(ramp_steps=2.5), "ramp_steps must be"),
])
def test_schedule_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AlphaSchedule(**kwargs)


@pytest.mark.parametrize("n,fraction,size", [(10, 0.5, 5), (7, 0.3, 2), (1, 0.5, 0), (128, 1.0, 128), (9, 0.0, 0)])
def test_subset_has_exact_size(n, fraction, size):
    for step in range(5):
        assert int(SoftSubset(fraction, seed=3).mask(n, step).sum()) == size


def test_subset_is_deterministic_and_independent_across_steps_streams_ranks():
    sub = SoftSubset(0.5, seed=11)
    base = sub.mask(256, 4, IMAGE_ROWS, rank=0)
    assert torch.equal(base, SoftSubset(0.5, seed=11).mask(256, 4, IMAGE_ROWS, rank=0))
    others = [sub.mask(256, 5, IMAGE_ROWS, 0), sub.mask(256, 4, TEXT_ROWS, 0), sub.mask(256, 4, IMAGE_ROWS, 1),
              SoftSubset(0.5, seed=12).mask(256, 4, IMAGE_ROWS, 0)]
    for other in others:
        assert not torch.equal(base, other)
    with pytest.raises(ValueError, match="soft_fraction"):
        SoftSubset(1.2)


def run_steps(loss_fn, inputs, steps):
    return [loss_fn(*inputs).detach() for _ in range(steps)]


def test_step_advances_in_training_only_and_state_dict_round_trip_mid_ramp():
    b, d = 12, 6
    inputs = (torch.randn(b, d, dtype=torch.float64), torch.randn(b, d, dtype=torch.float64),
              torch.tensor(4.0, dtype=torch.float64))
    opts = dict(alpha_max=0.6, schedule="cosine", ramp_steps=10, soft_fraction=0.5, seed=7,
                teacher_scale=9.0, backend="reference")
    straight = PSDLoss(**opts)
    run_steps(straight, inputs, 4)
    assert straight.step == 4
    straight.eval()
    straight(*inputs)
    assert straight.step == 4  # eval forwards do not advance the schedule
    straight.train()
    saved = straight.state_dict()
    expected = run_steps(straight, inputs, 5)

    resumed = PSDLoss(**opts)
    resumed.load_state_dict(saved)
    assert resumed.step == 4 and resumed.current_alpha() == pytest.approx(AlphaSchedule("cosine", 0.6, 10)(4))
    assert all(torch.equal(a, b) for a, b in zip(run_steps(resumed, inputs, 5), expected))
    fresh = run_steps(PSDLoss(**opts), inputs, 5)
    assert not all(torch.equal(a, b) for a, b in zip(fresh, expected))  # the restore mattered


def test_corrupt_state_is_rejected():
    with pytest.raises(ValueError, match="step"):
        PSDLoss().load_state_dict({"_extra_state": {"step": -3}})


# -- the soft fraction's own schedule -------------------------------------------------------------
N_ROWS = 64


@pytest.mark.parametrize("kind,expected_sizes", [
    # start 0.25 -> end 0.75 over 8 steps, 4 steps per epoch; sizes of 64 rows at steps 0, 2, 4, 6, 8, 12
    ("constant", [48, 48, 48, 48, 48, 48]),
    ("linear", [16, 24, 32, 40, 48, 48]),
    ("cosine", [16, 21, 32, 43, 48, 48]),
    ("per_epoch", [16, 16, 32, 32, 48, 48]),
])
def test_subset_size_per_step_for_each_fraction_schedule(kind, expected_sizes):
    schedule = FractionSchedule(kind, start=0.25, end=0.75, ramp_steps=8, steps_per_epoch=4)
    subset = SoftSubset(schedule, seed=5)
    for step, size in zip([0, 2, 4, 6, 8, 12], expected_sizes):
        assert subset.size(N_ROWS, step) == size, (kind, step)
        assert int(subset.mask(N_ROWS, step).sum()) == size, (kind, step)


def test_seed_paper_preset_grows_by_a_tenth_per_epoch():
    schedule = FractionSchedule.seed_paper(steps_per_epoch=10)
    fractions = [schedule(10 * epoch + within) for epoch in range(12) for within in (0, 9)]
    expected = [min(1.0, 0.1 * (epoch + 1)) for epoch in range(12) for _ in (0, 9)]
    assert fractions == pytest.approx(expected, abs=1e-12)
    assert [SoftSubset(schedule).size(100, 10 * e) for e in range(11)] == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 100]


@pytest.mark.parametrize("kwargs,match", [
    (dict(kind="exponential"), "soft_fraction_schedule must be one of"),
    (dict(kind="linear", start=1.5), "soft_fraction_start must lie in"),
    (dict(kind="linear", end=-0.1), "soft_fraction must lie in"),
    (dict(kind="linear", ramp_steps=-2), "soft_fraction_ramp_steps must be"),
    (dict(kind="per_epoch", ramp_steps=10), "needs steps_per_epoch >= 1"),
])
def test_fraction_schedule_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FractionSchedule(**kwargs)


def test_psdloss_soft_fraction_ramp_draws_per_step_and_is_deterministic_across_ranks():
    opts = dict(alpha_max=0.5, schedule="constant", soft_fraction_start=0.25, soft_fraction=1.0,
                soft_fraction_schedule="linear", soft_fraction_ramp_steps=6, seed=3)
    loss_fn = PSDLoss(**opts)
    assert [PSDLoss(**opts, rank=0, world_size=2).fraction_schedule(t) for t in (0, 3, 6, 9)] == \
        pytest.approx([0.25, 0.625, 1.0, 1.0])
    for step in range(8):
        loss_fn.step = step
        k = loss_fn.subset.size(16, step)
        assert k == round(loss_fn.current_soft_fraction() * 16)
        mine = loss_fn.subset.mask(16, step, IMAGE_ROWS, rank=0)
        again = PSDLoss(**opts).subset.mask(16, step, IMAGE_ROWS, rank=0)
        other_rank = PSDLoss(**opts, rank=1, world_size=2).subset.mask(16, step, IMAGE_ROWS, rank=1)
        assert torch.equal(mine, again) and int(other_rank.sum()) == k
        if 0 < k < 16:
            assert not torch.equal(mine, other_rank)  # each rank draws its own rows


def test_state_dict_round_trip_mid_ramp_of_both_schedules():
    b, d = 16, 6
    inputs = (torch.randn(b, d, dtype=torch.float64), torch.randn(b, d, dtype=torch.float64),
              torch.tensor(4.0, dtype=torch.float64))
    opts = dict(alpha_max=0.6, schedule="linear", ramp_steps=10, soft_fraction_start=0.125, soft_fraction=0.875,
                soft_fraction_schedule="per_epoch", soft_fraction_ramp_steps=9, steps_per_epoch=3, seed=2,
                teacher_scale=9.0, backend="reference")
    straight = PSDLoss(**opts)
    run_steps(straight, inputs, 4)  # mid-ramp of both: alpha 0.24, fraction 0.375 (epoch 1 of 3)
    saved = straight.state_dict()
    assert saved["_extra_state"]["soft_fraction_schedule"] == "per_epoch" and saved["_extra_state"]["step"] == 4
    expected_fractions = [straight.fraction_schedule(t) for t in range(4, 9)]
    expected = run_steps(straight, inputs, 5)
    resumed = PSDLoss(**opts)
    resumed.load_state_dict(saved)
    assert resumed.current_alpha() == pytest.approx(0.24) and resumed.current_soft_fraction() == pytest.approx(0.375)
    got_fractions = []
    for _ in range(5):
        got_fractions.append(resumed.current_soft_fraction())
        assert torch.equal(resumed(*inputs).detach(), expected.pop(0))
    assert got_fractions == expected_fractions and len(set(got_fractions)) > 1


def test_step_per_forward_false_advances_only_on_advance():
    inputs = (torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 4, dtype=torch.float64), 3.0)
    loss_fn = PSDLoss(alpha_max=0.5, ramp_steps=4, soft_fraction=0.5, step_per_forward=False,
                      backend="reference")
    loss_fn.advance()
    first = [loss_fn(*inputs).detach() for _ in range(3)]  # N micro-batch calls of one optimizer step
    assert loss_fn.step == 1 and all(torch.equal(first[0], v) for v in first)
    loss_fn.advance(2)
    assert loss_fn.step == 3 and loss_fn.current_alpha() == pytest.approx(0.375)
    with pytest.raises(ValueError, match="steps must be a non-negative int"):
        loss_fn.advance(-1)
