"""Packaging: psd_kernels needs only torch and numpy; ".[train]" declares what psd_train needs.

    .venv/bin/python -m pytest tests/test_packaging.py -q
"""
import ast
import os
import pathlib
import subprocess
import sys

from packaging.requirements import Requirement

from psd_kernels.tools import info
from psd_train.errors import EXTRA_DISTRIBUTIONS

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Run first in a child interpreter: every training extra becomes unimportable.
BLOCKER = """
import importlib.abc, sys
HIDDEN = {hidden!r}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {{name!r}} (hidden by the test)", name=name)
        return None
sys.meta_path.insert(0, Blocker())
"""

KERNELS_ONLY = """
import torch
from psd_kernels import PSDLoss, psd_clip_loss
image = torch.randn(16, 8, requires_grad=True)
text = torch.randn(16, 8, requires_grad=True)
loss = PSDLoss(alpha_max=0.5, schedule="constant", soft_fraction=0.5, teacher_scale=5.0)(image, text, 10.0)
loss.backward()
assert torch.isfinite(loss) and image.grad.abs().sum() > 0
assert torch.allclose(psd_clip_loss(image, text, 10.0), PSDLoss()(image, text, 10.0))
loaded = sorted(m for m in sys.modules if m.split(".")[0] in HIDDEN | {{"psd_train"}})
assert not loaded, loaded
print("kernels ok")
"""


def _child(code: str, hidden: set, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PSD_DEBUG"}
    return subprocess.run([sys.executable, "-c", BLOCKER.format(hidden=hidden) + code, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_kernels_run_without_the_training_extras():
    hidden = set(EXTRA_DISTRIBUTIONS)
    run = _child(KERNELS_ONLY.format(), hidden)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "kernels ok"


def test_trainer_names_the_missing_extra():
    code = "import runpy; sys.argv = ['psd_train', '--help']; runpy.run_module('psd_train', run_name='__main__')"
    run = _child(code, {"open_clip", "open_clip_train", "pandas"})
    assert run.returncode == 2, run.stderr
    assert run.stderr == ("python -m psd_train: error: pandas is not installed; python -m psd_train needs the "
                          "training extras: pip install \".[train]\" in the psd repository (or make install)\n")


def _setup_keyword(name: str):
    """A literal assigned to `name` at the top of setup.py (setup.py itself builds the extension)."""
    for node in ast.parse((ROOT / "setup.py").read_text()).body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == [name]:
            return ast.literal_eval(node.value)
    raise AssertionError(f"setup.py assigns no {name}")


def test_train_extras_hold_the_pinned_stack():
    """Every training extra is in requirements.txt, and each version pinned there is inside its range."""
    pinned = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            pinned[requirement.name.lower()] = requirement.specifier
    extras = [Requirement(r) for r in _setup_keyword("TRAIN_EXTRAS")]
    assert {r.name.lower() for r in extras} >= {package.lower() for package in EXTRA_DISTRIBUTIONS.values()}
    for requirement in extras:
        assert requirement.name.lower() in pinned, requirement.name
        for spec in pinned[requirement.name.lower()]:
            if spec.operator == "==":
                assert requirement.specifier.contains(spec.version), (requirement, spec)


def test_metadata_declares_kernels_needs_and_the_train_extra(tmp_path):
    env = {**os.environ, "PSD_SKIP_CUDA_BUILD": "1"}
    subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path)], cwd=ROOT, env=env,
                   check=True, capture_output=True, timeout=300)
    requires = (tmp_path / "psd.egg-info" / "requires.txt").read_text().split("\n\n")
    # torch within the supported range (psd_kernels.tools.info), which holds the pinned torch
    torch_requirement, numpy = requires[0].split()
    assert numpy == "numpy" and Requirement(torch_requirement) == Requirement(info.torch_requirement())
    assert info.torch_requirement() == "torch>=2.8,<2.15"
    pinned_torch = next(Requirement(line) for line in (ROOT / "requirements.txt").read_text().splitlines()
                        if line.startswith("torch=="))
    assert Requirement(torch_requirement).specifier.contains(next(iter(pinned_torch.specifier)).version)
    section, *train = requires[1].split()
    assert section == "[train]"
    assert [Requirement(r) for r in train] == [Requirement(r) for r in _setup_keyword("TRAIN_EXTRAS")]
    # the demo plugs into the trainer through the entry-point group psd_train.plugins
    entry_points = (tmp_path / "psd.egg-info" / "entry_points.txt").read_text().split()
    assert entry_points == ["[psd_train.plugins]", "demo", "=", "psd_train.demo.plugin:PLUGIN"]
    from psd_train.plugins import load

    plugin = load("psd_train.demo.plugin:PLUGIN")
    assert plugin.register_models and plugin.evaluate and plugin.check_eval_data


def test_tests_collect_without_open_clip_and_webdataset():
    """pytest tests collects without open_clip_torch and webdataset: the modules that need them skip."""
    code = ("import pytest; sys.exit(pytest.main(['--collect-only', '-q', '-p', 'no:cacheprovider', "
            "'tests/test_train.py', 'tests/test_train_accumulation.py', 'tests/test_train_compat.py', "
            "'tests/test_train_webdataset.py', 'tests/test_sweep.py', 'tests/test_train_plugins.py']))")
    run = _child(code, {"open_clip", "open_clip_train", "webdataset"})
    assert run.returncode == 0, run.stdout + run.stderr
    assert "error" not in run.stdout.lower(), run.stdout


def _at_least_as_strict(ours, bound) -> bool:
    """Whether the specifier set `ours` implies the single bound `bound` (<, <=, >, >=, ==)."""
    from packaging.version import Version

    limit = Version(bound.version)
    for spec in ours:
        version = Version(spec.version)
        if spec.operator == "==" and bound.contains(spec.version):
            return True
        if bound.operator in ("<=", "<") and spec.operator in ("<=", "<"):
            if version < limit or (version == limit and (bound.operator == "<=" or spec.operator == "<")):
                return True
        if bound.operator in (">=", ">") and spec.operator in (">=", ">"):
            if version > limit or (version == limit and (bound.operator == ">=" or spec.operator == ">")):
                return True
    return False


def test_train_extras_lie_inside_open_clips_training_requirements():
    """Each package that open_clip_torch's own "training" extra bounds is bounded at least as tightly here."""
    import importlib.metadata

    from packaging.markers import default_environment

    theirs = [Requirement(r) for r in importlib.metadata.requires("open_clip_torch")]
    training = {r.name.lower(): r.specifier for r in theirs
                if r.marker is not None and r.marker.evaluate({**default_environment(), "extra": "training"})}
    assert "webdataset" in training and training["webdataset"], training
    ours = {r.name.lower(): r.specifier for r in map(Requirement, _setup_keyword("TRAIN_EXTRAS"))}
    checked = []
    for name, bounds in training.items():
        if name not in ours:
            continue
        for bound in bounds:
            assert bound.operator in ("<", "<=", ">", ">=", "=="), (name, bound)
            assert _at_least_as_strict(ours[name], bound), f"{name}: ours {ours[name]}, open_clip's {bounds}"
        checked.append(name)
    assert "webdataset" in checked


def test_strictness_helper_rejects_looser_bounds():
    from packaging.specifiers import Specifier, SpecifierSet

    assert _at_least_as_strict(SpecifierSet(">=0.2.5,<=0.2.86"), Specifier("<=0.2.86"))
    assert _at_least_as_strict(SpecifierSet("==0.2.80"), Specifier("<=0.2.86"))
    assert not _at_least_as_strict(SpecifierSet(">=0.2.5"), Specifier("<=0.2.86"))
    assert not _at_least_as_strict(SpecifierSet("<=1.0.2"), Specifier("<=0.2.86"))
    assert not _at_least_as_strict(SpecifierSet(">=0.2.4"), Specifier(">=0.2.5"))
    assert not _at_least_as_strict(SpecifierSet("<=0.2.86"), Specifier("<0.2.86"))
