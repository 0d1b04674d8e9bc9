"""The demo as a psd_train plugin (psd_train.plugins): the psd-tiny model and the demo evaluations.

    PLUGIN    register_models: psd_train/demo/model_configs/*.json into open_clip's registry
              (psd_train.demo.model.register_demo_models), so --model psd-tiny and
              --distill-model psd-tiny work;
              evaluate: psd_train.demo.evaluate.evaluate, what --psd-eval-data DIR runs on a demo
              data root (python -m psd_train.demo.data builds one);
              check_eval_data: DIR holds meta.json, test.csv and train.csv

setup.py declares it in the entry-point group psd_train.plugins (demo = psd_train.demo.plugin:PLUGIN),
so `python -m psd_train --model psd-tiny ... --psd-eval-data DIR` finds it once psd is installed;
the demo's own commands (python -m psd_train.demo, python -m psd_train.demo.sweep) pass it to
psd_train.main.main(argv, plugins=[PLUGIN]) themselves and do not depend on the install.
The trainer imports nothing from psd_train.demo: this module is how the demo plugs in.
"""
from __future__ import annotations

import os

from psd_train.datafiles import DataFileError
from psd_train.plugins import Plugin

EVAL_FILES = ("meta.json", "test.csv", "train.csv")


def register_models() -> list[str]:
    from psd_train.demo.model import register_demo_models

    return register_demo_models()


def evaluate(model, preprocess, tokenizer, data_root, device="cpu") -> dict:
    from psd_train.demo.evaluate import evaluate as evaluate_demo

    return evaluate_demo(model, preprocess, tokenizer, data_root, device=device)


def check_eval_data(data_root: str) -> None:
    """DataFileError naming --psd-eval-data when DIR is not a finished demo data build."""
    for name in EVAL_FILES:
        if not os.path.isfile(os.path.join(data_root, name)):
            raise DataFileError(f"--psd-eval-data {data_root}: {name} is missing "
                                "(build it with python -m psd_train.demo.data)")


PLUGIN = Plugin(name="psd_train.demo", register_models=register_models, evaluate=evaluate,
                check_eval_data=check_eval_data)
