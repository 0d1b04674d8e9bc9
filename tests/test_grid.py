"""psd_kernels.backends.triton.grid: waves and grid efficiency counted by hand, and the one-sweep grid it picks.

    .venv/bin/python -m pytest tests/test_grid.py -q
"""
import math

import pytest

from psd_kernels.backends.triton import grid


def test_waves_and_wave_efficiency_of_equal_programs():
    assert grid.waves(264, 264) == 1 and grid.waves(272, 264) == 2
    # 272 programs on 264 slots: a second wave of 8 programs, 272 / 528 of the slots' time used
    assert grid.wave_efficiency(272, 264) == pytest.approx(272 / 528)
    assert grid.wave_efficiency(256, 132) == pytest.approx(256 / 264)


def test_group_split_efficiency_counts_the_longest_program():
    # 256 row blocks x 1024 column tiles in 16 groups x 17 splits: 16 blocks by 61 tiles per program
    # (the 17th split has 48), 272 programs: two waves on 264 slots, three on 132
    work = 256 * 1024
    assert grid.group_split_efficiency(256, 1024, 16, 17, 264) == pytest.approx(work / (264 * 2 * 16 * 61))
    assert grid.group_split_efficiency(256, 1024, 16, 17, 132) == pytest.approx(work / (132 * 3 * 16 * 61))
    # 16 x 16: every program 16 x 64, one wave on 264 slots
    assert grid.group_split_efficiency(256, 1024, 16, 16, 264) == pytest.approx(work / (264 * 16 * 64))
    # a split past the last tile holds no work and takes no slot: 3 tiles in 4 splits of 1
    assert grid.group_split_efficiency(1, 3, 1, 4, 10) == pytest.approx(3 / 10)


@pytest.mark.parametrize("batch", (1, 1000, 4097, 32768, 65536, 1 << 20))
def test_balanced_grid_fills_the_sms(batch):
    rows, cols, sms = math.ceil(batch / 128), math.ceil(batch / 32), 132
    groups, splits = grid.balanced_grid(rows, cols, sms)
    assert 1 <= groups <= rows and 1 <= splits <= cols and groups * splits <= 4 * sms
    # no empty group or split
    assert math.ceil(rows / math.ceil(rows / groups)) == groups
    assert math.ceil(cols / math.ceil(cols / splits)) == splits
    worst = min(grid.group_split_efficiency(rows, cols, groups, splits, k * sms) for k in (1, 2))
    if batch >= 4097:  # enough tiles for every slot: no grid leaves more than 10% of the slots' time idle
        assert worst >= 0.9
    if batch == 32768:
        assert (groups, splits) == (16, 16)
