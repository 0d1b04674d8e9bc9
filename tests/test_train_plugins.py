"""psd_train.plugins: the trainer takes models and evaluations from plugins, never from psd_train.demo.

    .venv/bin/python -m pytest tests/test_train_plugins.py -q
"""
import ast
import pathlib

import pytest

from psd_train import plugins
from psd_train.errors import FlagError
from psd_train.plugins import Plugin, PluginError

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXTRAS = "needs the training extras: pip install '.[train]'"


def _imported_modules(path: pathlib.Path):
    """(line, module) of every import in the file, function-level ones included; relative imports
    resolved against the file's package."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            yield node.lineno, base
            for alias in node.names:  # from psd_train import demo
                yield node.lineno, f"{base}.{alias.name}"


def test_no_trainer_module_imports_the_demo():
    trainer = sorted((ROOT / "psd_train").glob("*.py"))
    assert {p.name for p in trainer} >= {"main.py", "plugins.py", "__main__.py"}
    offenders = [f"psd_train/{path.name}:{line} imports {module}" for path in trainer
                 for line, module in _imported_modules(path)
                 if module == "psd_train.demo" or module.startswith("psd_train.demo.")]
    assert not offenders, offenders


def test_the_import_check_sees_function_level_and_relative_imports(tmp_path):
    folder = ROOT / "psd_train"
    probe = folder / "_probe_for_test.py"
    probe.write_text("def f():\n    from psd_train.demo.model import x\n    from .demo import evaluate\n"
                     "    from . import demo\n")
    try:
        found = [module for _, module in _imported_modules(probe)]
    finally:
        probe.unlink()
    assert "psd_train.demo.model" in found and "psd_train.demo" in found and "psd_train.demo.evaluate" in found


def test_an_installed_entry_point_is_found(tmp_path, monkeypatch):
    (tmp_path / "extra_psd_plugin.py").write_text(
        "from psd_train.plugins import Plugin\nPLUGIN = Plugin(name='extra', register_models=lambda: ['m'])\n")
    info = tmp_path / "extra_psd_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: extra-psd-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[psd_train.plugins]\nextra = extra_psd_plugin:PLUGIN\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(plugins.ENVIRONMENT_VARIABLE, raising=False)
    found = {p.name: p for p in plugins.installed()}
    assert "extra" in found and plugins.register_models([found["extra"]]) == ["m"]


def test_environment_variable_and_explicit_plugins(monkeypatch):
    monkeypatch.setenv(plugins.ENVIRONMENT_VARIABLE, "psd_train.demo.plugin:PLUGIN")
    from psd_train.demo.plugin import PLUGIN

    assert PLUGIN in plugins.installed()
    assert plugins.resolve(["psd_train.demo.plugin:PLUGIN", PLUGIN]) == [PLUGIN]
    assert plugins.resolve([]) == []
    with pytest.raises(PluginError, match="not a psd_train.plugins.Plugin"):
        plugins.resolve(["psd_train.errors:FlagError"])
    with pytest.raises(PluginError, match="not a plugin's \"module:attribute\" name"):
        plugins.resolve(["psd_train.demo.plugin"])


def test_eval_data_without_an_evaluation_names_the_flag(tmp_path):
    models_only = Plugin(name="models only", register_models=list)
    assert plugins.evaluation(None, []) is None
    with pytest.raises(FlagError, match=r"--psd-eval-data DIR: no psd_train plugin provides an evaluation "
                                        r"\(plugins: models only\)"):
        plugins.evaluation("DIR", [models_only])
    with pytest.raises(FlagError, match="no psd_train plugin provides an evaluation .plugins: none.; for the demo's "
                                        "evaluation, reinstall psd .pip install --no-build-isolation --use-pep517 -e ."):
        plugins.evaluation("DIR", [])
    one, two = Plugin(name="one", evaluate=dict), Plugin(name="two", evaluate=dict)
    with pytest.raises(FlagError, match=r"several psd_train plugins provide an evaluation \(one, two\)"):
        plugins.evaluation("DIR", [one, two])
    assert plugins.evaluation("DIR", [one, models_only]) is one


def test_demo_plugin_checks_its_eval_data(tmp_path):
    from psd_train.datafiles import DataFileError
    from psd_train.demo.plugin import PLUGIN

    with pytest.raises(DataFileError, match=f"--psd-eval-data {tmp_path}: meta.json is missing .build it with "
                                            "python -m psd_train.demo.data."):
        plugins.evaluation(str(tmp_path), [PLUGIN])


@pytest.fixture
def without_psd_tiny(monkeypatch):
    """open_clip's registry as in a fresh process: no psd-tiny (an earlier test may have added it)."""
    factory = pytest.importorskip("open_clip.factory", reason=EXTRAS)
    monkeypatch.setattr(factory, "_MODEL_CONFIGS", {k: v for k, v in factory._MODEL_CONFIGS.items()
                                                    if k != "psd-tiny"})


def test_unknown_model_names_the_flag_and_the_plugins(without_psd_tiny, tmp_path):
    from psd_train.main import main

    argv = ["--model", "psd-tiny", "--train-data", str(tmp_path / "train.csv"), "--logs", str(tmp_path)]
    with pytest.raises(FlagError, match=r"--model psd-tiny: open_clip has no such model and no psd_train plugin "
                                        r"registers it \(plugins: none\); no psd_train plugin is installed"):
        main(argv, plugins=[])
    with pytest.raises(FlagError, match="--distill-model psd-tiny: open_clip has no such model"):
        main(["--model", "RN50", "--train-data", str(tmp_path / "train.csv"), "--distill-model", "psd-tiny",
              "--distill-pretrained", "x.pt"], plugins=[])


def test_demo_plugin_registers_psd_tiny(without_psd_tiny):
    import open_clip

    from psd_train.demo.plugin import PLUGIN

    assert "psd-tiny" not in open_clip.list_models()
    assert plugins.register_models(plugins.resolve(["psd_train.demo.plugin:PLUGIN"])) == ["psd-tiny"]
    assert "psd-tiny" in open_clip.list_models() and PLUGIN.evaluate is not None
