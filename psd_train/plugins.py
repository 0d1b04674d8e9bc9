"""Plugins: the model configs and the evaluation that psd_train takes from other packages.

The trainer knows no model and no evaluation data of its own. A plugin brings them; the CPU
demo is one (psd_train.demo.plugin: the psd-tiny model and the evaluations behind
--psd-eval-data), and a package of your own can be another.

A plugin is a Plugin object; each part is optional:

    name                   how messages name it
    register_models()      adds model configs to open_clip's registry (idempotent) and returns their
                           names. psd_train calls it before open_clip_train parses its args, so that
                           --model NAME and --distill-model NAME find them
    evaluate(model, preprocess, tokenizer, data_root, device) -> {metric: float}
                           what --psd-eval-data DIR runs, on rank 0, after the epochs --psd-eval-every
                           picks; the model is unwrapped (no DDP) and in eval mode
    check_eval_data(data_root)
                           raises a psd_train.errors.UsageError naming --psd-eval-data when DIR cannot be
                           evaluated; called before training, so a bad DIR stops the run at once

Where psd_train.main.main finds them:

    main(argv, plugins=[...])   exactly these: Plugin objects or "module:attribute" names of them
    main(argv)                  (and python -m psd_train) the plugins installed in the entry-point group
                                psd_train.plugins; psd's setup.py declares
                                    demo = psd_train.demo.plugin:PLUGIN
                                plus the "module:attribute" names listed, comma-separated, in the
                                environment variable PSD_TRAIN_PLUGINS (for a plugin that is not
                                installed as a distribution)

Processes: every process that runs main() (each torchrun rank, each process of a pool) looks the
plugins up and registers their models itself, before it builds a model; the open_clip registry is
per process. DataLoader workers build no model: they receive the tokenizer and transforms that
open_clip_train built in their parent, so they need no registration.

An installed psd whose metadata predates the entry point (installed from an older setup.py) lists
no plugin: reinstall it (pip install --no-build-isolation --use-pep517 -e . or make install), or set
PSD_TRAIN_PLUGINS=psd_train.demo.plugin:PLUGIN.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
from dataclasses import dataclass
from typing import Callable

from psd_train.errors import FlagError, UsageError

ENTRY_POINT_GROUP = "psd_train.plugins"
ENVIRONMENT_VARIABLE = "PSD_TRAIN_PLUGINS"
REINSTALL = ("reinstall psd (pip install --no-build-isolation --use-pep517 -e . or make install, in the psd repository: "
             f"an install from an older setup.py lists no plugin) or set {ENVIRONMENT_VARIABLE}="
             "psd_train.demo.plugin:PLUGIN")


@dataclass(frozen=True)
class Plugin:
    """What a plugin adds to psd_train (module docstring)."""

    name: str
    register_models: Callable[[], list[str]] | None = None
    evaluate: Callable[..., dict] | None = None
    check_eval_data: Callable[[str], None] | None = None


class PluginError(UsageError):
    """A plugin named in an entry point, PSD_TRAIN_PLUGINS or plugins=[...] is not a Plugin."""


def load(target: str | Plugin, where: str = "plugins=[...]") -> Plugin:
    """A Plugin, or the Plugin at "module:attribute"; `where` names the source for the error."""
    if isinstance(target, Plugin):
        return target
    module, _, attribute = str(target).partition(":")
    if not module or not attribute:
        raise PluginError(f"{where}: {target!r} is not a plugin's \"module:attribute\" name")
    plugin = getattr(importlib.import_module(module), attribute, None)
    if not isinstance(plugin, Plugin):
        raise PluginError(f"{where}: {target} is {type(plugin).__name__}, not a psd_train.plugins.Plugin")
    return plugin


def installed() -> list[Plugin]:
    """The plugins of the entry-point group psd_train.plugins (by entry-point name), then those named
    in PSD_TRAIN_PLUGINS; each once."""
    found = []
    for entry in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        found.append(load(entry.value, f"entry point {entry.name} = {entry.value} (group {ENTRY_POINT_GROUP})"))
    for name in os.environ.get(ENVIRONMENT_VARIABLE, "").split(","):
        if name.strip():
            found.append(load(name.strip(), f"{ENVIRONMENT_VARIABLE}={os.environ[ENVIRONMENT_VARIABLE]}"))
    return list(dict.fromkeys(found))


def resolve(plugins=None) -> list[Plugin]:
    """plugins (Plugin objects or "module:attribute" names) when given, else the installed ones."""
    if plugins is None:
        return installed()
    return list(dict.fromkeys(load(p) for p in plugins))


def names(plugins: list[Plugin]) -> str:
    return ", ".join(p.name for p in plugins) or "none"


def register_models(plugins: list[Plugin]) -> list[str]:
    """Each plugin's models added to open_clip's registry; their names."""
    return [name for p in plugins if p.register_models is not None for name in p.register_models()]


def check_models(args, plugins: list[Plugin]) -> None:
    """--model and --distill-model name a model open_clip knows (built in, hf-hub:, local-dir: or
    registered by a plugin); else a FlagError naming the flag and the plugins looked at."""
    import open_clip
    from open_clip.factory import parse_model_name

    known = set(open_clip.list_models())
    for flag, name in (("--model", args.model), ("--distill-model", args.distill_model)):
        if name is None or parse_model_name(name)[0] is not None or name.replace("/", "-") in known:
            continue
        hint = ("" if plugins else f"; no psd_train plugin is installed (entry-point group {ENTRY_POINT_GROUP}): "
                f"for the demo's psd-tiny, {REINSTALL}")
        raise FlagError(f"{flag} {name}: open_clip has no such model and no psd_train plugin registers it "
                        f"(plugins: {names(plugins)}){hint}")


def evaluation(data_root: str | None, plugins: list[Plugin]) -> Plugin | None:
    """The one plugin whose evaluate runs for --psd-eval-data (None without the flag); its
    check_eval_data has passed. FlagError when no plugin, or more than one, provides an evaluation."""
    if data_root is None:
        return None
    providers = [p for p in plugins if p.evaluate is not None]
    if not providers:
        hint = "" if plugins else f"; for the demo's evaluation, {REINSTALL}"
        raise FlagError(f"--psd-eval-data {data_root}: no psd_train plugin provides an evaluation "
                        f"(plugins: {names(plugins)}){hint}")
    if len(providers) > 1:
        raise FlagError(f"--psd-eval-data {data_root}: several psd_train plugins provide an evaluation "
                        f"({names(providers)}); pass the one to use: main(argv, plugins=[...])")
    plugin = providers[0]
    if plugin.check_eval_data is not None:
        plugin.check_eval_data(data_root)
    return plugin
