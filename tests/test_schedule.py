"""The PSD schedule, the soft subset, and PSDLoss's step counter across save/restore.

    .venv/bin/python -m pytest tests/test_schedule.py
"""
import math

import pytest
import torch

from psd_kernels import AlphaSchedule, PSDLoss, SoftSubset
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
