"""Grids that fill a GPU: waves of programs over the SMs' CTA slots.

A launch of P programs on a GPU with `slots` = SMs x CTAs per SM runs in ceil(P / slots)
waves; when the programs' work differs, the longest one sets each wave's length. The
share of the slots' time that does work,

    efficiency = total work / (slots x waves x longest program's work),

is what the grid costs against a perfectly filled GPU (1.0). The one-sweep symmetric forward
(psd_kernels.backends.triton.launcher) picks its (row groups, column splits) here, and psd_kernels.tools.roofline
divides each launch's compute time by this efficiency.

Pure Python (no torch, no triton), so the roofline uses the very function the launcher does.
Tested by: .venv/bin/python -m pytest tests/test_grid.py
"""
from __future__ import annotations

import functools
import math


def waves(programs: int, slots: int) -> int:
    """Waves of a launch of `programs` equal programs on `slots` CTA slots."""
    return math.ceil(programs / slots)


def wave_efficiency(programs: int, slots: int) -> float:
    """Share of the slots' time used by `programs` programs of equal work: P / (waves x slots)."""
    return programs / (waves(programs, slots) * slots)


def group_split_efficiency(row_blocks: int, col_tiles: int, groups: int, splits: int, slots: int) -> float:
    """Efficiency of the (groups x splits) grid of the one-sweep forward: program (g, h) sweeps
    ceil(row_blocks / groups) row blocks by ceil(col_tiles / splits) column tiles (fewer at the
    ends, none past them: such programs end at once and take no slot time)."""
    per_group, per_split = math.ceil(row_blocks / groups), math.ceil(col_tiles / splits)
    busy = math.ceil(row_blocks / per_group) * math.ceil(col_tiles / per_split)
    return row_blocks * col_tiles / (slots * waves(busy, slots) * per_group * per_split)


@functools.lru_cache(maxsize=256)
def balanced_grid(row_blocks: int, col_tiles: int, sms: int) -> tuple[int, int]:
    """(row groups, column splits) for the one-sweep forward: the best worst-case efficiency at one
    and at two CTAs per SM (the kept 128-row tiles run one, the 64-row ones two), with at most
    4 x SMs programs; ties go to fewer programs, then to fewer partials (5 floats per group and
    column, 6 per split and row: the smaller 5 groups + 6 splits). No empty groups or splits."""
    best_key, best = None, (1, 1)
    for groups in range(1, min(row_blocks, 4 * sms) + 1):
        if math.ceil(row_blocks / math.ceil(row_blocks / groups)) != groups:
            continue  # the last group would be empty
        for splits in range(1, min(col_tiles, 4 * sms // groups) + 1):
            if math.ceil(col_tiles / math.ceil(col_tiles / splits)) != splits:
                continue
            worst = min(group_split_efficiency(row_blocks, col_tiles, groups, splits, k * sms) for k in (1, 2))
            key = (-round(worst, 9), groups * splits, 5 * groups + 6 * splits)
            if best_key is None or key < best_key:
                best_key, best = key, (groups, splits)
    return best
