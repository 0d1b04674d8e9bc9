"""A CPU run's console: no framework message the user cannot act on (psd_train.console).

    .venv/bin/python -m pytest tests/test_train_console.py -q

`python -m psd_train` trains psd-tiny for 2 epochs of 4 steps on a 64-image slice of the demo
data, with a DataLoader worker (its own iterator per epoch, as in real runs), in a
subprocess; its console must not show torch's pin_memory warning, open_clip_train's cuda
fallback or open_clip's random-initialisation note, and no warning line twice.
"""
import pytest

pytest.importorskip("open_clip_train", reason="needs the training extras: pip install '.[train]'")
import logging  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from collections import Counter  # noqa: E402

import torch  # noqa: E402

from psd_train.console import PIN_MEMORY, known_messages_left_out  # noqa: E402
from psd_train.demo.data import build_demo_data  # noqa: E402
from psd_train.demo.model import TRAIN_FLAGS  # noqa: E402

KNOWN = ("pin_memory", "falling back to CPU", "No pretrained weights loaded")


def test_cpu_run_console_has_no_known_framework_warning(tmp_path):
    data = build_demo_data(tmp_path / "data", noise=0.3, seed=0, n_train=64, n_val=16, n_test=40, progress=False)
    argv = [*TRAIN_FLAGS, "--train-data", data["train_csv"], "--dataset-type", "csv", "--csv-separator", "\t",
            "--csv-img-key", "filepath", "--csv-caption-key", "title", "--batch-size", "16", "--epochs", "2",
            "--workers", "1", "--lr", "1e-3", "--warmup", "2", "--logs", str(tmp_path / "logs"), "--name", "console",
            "--psd-threads", "1", "--psd-alpha-max", "0.5", "--psd-teacher", "ema"]
    done = subprocess.run([sys.executable, "-m", "psd_train", *argv], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    console = (done.stdout + done.stderr).splitlines()
    assert "Device cpu" in done.stdout + done.stderr  # open_clip_train's own line: it ran on the CPU
    for message in KNOWN:
        assert not [line for line in console if message in line], message
    warned = Counter(line for line in console if "Warning" in line or "| WARNING |" in line)
    assert [line for line, times in warned.items() if times > 1] == []


def _shown(caplog) -> list[str]:
    """What reaches the console of the known warning and log messages emitted now."""
    caplog.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn_explicit(PIN_MEMORY + ", then device pinned memory won't be used.", UserWarning,
                               "dataloader.py", 1, registry={})  # a fresh registry: not "already shown"
    logging.warning("No pretrained weights loaded for model 'psd-tiny'. Model initialized randomly.")
    logging.getLogger("torch.nn.parallel.distributed").info("Reducer buckets have been rebuilt in this iteration.")
    return [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]


def test_known_messages_left_out_only_inside_the_block(caplog):
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger="torch.nn.parallel.distributed")
    filters, root_filters = list(warnings.filters), list(logging.root.filters)
    assert len(_shown(caplog)) == 3
    # with an accelerator, pinned memory works and torch would not warn: nothing to leave out
    pin = [PIN_MEMORY[:28]] if torch.accelerator.is_available() else []
    with known_messages_left_out(from_scratch=True):
        assert [m[:28] for m in _shown(caplog)] == pin
    with known_messages_left_out(from_scratch=False):  # --pretrained given: the note matters
        assert [m[:28] for m in _shown(caplog)] == pin + ["No pretrained weights loaded"]
    assert len(_shown(caplog)) == 3
    assert warnings.filters == filters and logging.root.filters == root_filters
