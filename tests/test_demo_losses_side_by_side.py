"""The demo's first step (psd_train.demo.losses_side_by_side): psd's losses beside open_clip's.

    .venv/bin/python -m pytest tests/test_demo_losses_side_by_side.py -q

At a tiny batch: both comparisons run, the losses agree (the step raises otherwise), every
figure is a positive time and a memory reading, and the table carries them.
"""
import pytest

pytest.importorskip("open_clip", reason="compares with open_clip's losses")
from psd_train.demo import losses_side_by_side  # noqa: E402


def test_both_losses_are_measured_beside_open_clips_and_tabled():
    rows = losses_side_by_side.measure(batch=64, dim=32)
    assert [r["peer"] for r in rows] == ["ClipLoss + DistillClipLoss", "SigLipLoss"]
    for r in rows:
        assert r["psd_s"] > 0 and r["open_clip_s"] > 0 and r["psd_mib"] >= 0 and r["open_clip_mib"] >= 0
    table = losses_side_by_side.table(rows)
    assert table.count("\n") == 3 and "softmax loss, separate teacher (64 x 32)" in table
    assert "SigLipLoss:" in table


def test_a_mismatch_between_the_losses_is_an_error(monkeypatch):
    pairs = losses_side_by_side._pairs()
    label, psd_fn, peer, peer_fn, _ = pairs[1]
    monkeypatch.setattr(losses_side_by_side, "_pairs", lambda: [(label, psd_fn, peer, peer_fn, 2.0)])
    with pytest.raises(AssertionError, match="differ"):
        losses_side_by_side.measure(batch=16, dim=8)
