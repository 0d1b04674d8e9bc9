"""Shared fixtures: every test starts from its own reproducible seed.

The trainer finds the demo (psd-tiny, the --psd-eval-data evaluations) through the entry-point
group psd_train.plugins that setup.py declares. An environment installed from an older setup.py
has no such entry point; the tests then name the demo's plugin in PSD_TRAIN_PLUGINS (inherited by
the processes they start) and say so in pytest's header. Reinstall to test the entry point itself:
pip install --no-build-isolation -e .
"""
import importlib.metadata
import os
import zlib

import pytest
import torch

DEMO_PLUGIN = "psd_train.demo.plugin:PLUGIN"
DEMO_ENTRY_POINT_INSTALLED = any(e.value == DEMO_PLUGIN
                                 for e in importlib.metadata.entry_points(group="psd_train.plugins"))
if not DEMO_ENTRY_POINT_INSTALLED and DEMO_PLUGIN not in os.environ.get("PSD_TRAIN_PLUGINS", ""):
    os.environ["PSD_TRAIN_PLUGINS"] = ",".join(filter(None, [os.environ.get("PSD_TRAIN_PLUGINS"), DEMO_PLUGIN]))


def pytest_report_header(config):
    if not DEMO_ENTRY_POINT_INSTALLED:
        return (f"psd_train.plugins: the installed psd declares no demo entry point (installed from an older "
                f"setup.py); PSD_TRAIN_PLUGINS={os.environ['PSD_TRAIN_PLUGINS']} stands in for it")
    return None


@pytest.fixture(autouse=True)
def seeded(request):
    """Seed torch from the test's id: fresh inputs per test, the same on every run."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
