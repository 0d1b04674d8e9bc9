"""The paired-seed comparison: CLIP vs PSD teachers at several caption-noise levels and data sizes.

    python -m psd_train.demo.sweep --out runs/sweep                 # run (resumable), then summarise
    python -m psd_train.demo.sweep --out runs/sweep --summarize     # only the tables, from results.csv
    python -m psd_train.demo.sweep --out runs/regime --methods clip --n-train 2000 4000 --epochs 30 15
                                                                    # the noise regime: CLIP only, two sizes

Every (data size, seed, noise) triple gets its own demo data (the seed fixes the split,
placement, templates and which captions are swapped) and every method trains on it from
the same initialisation in the same batch order (psd_train seeds the model from --seed and
each epoch from (--seed, epoch)), so methods are compared on paired seeds and the spread
between seeds does not hide the difference between methods. Runs are ordered size by size,
seed by seed and noise by noise, CLIP first, so an interrupted sweep leaves complete pairs;
finished runs are rows of <out>/results.csv and are skipped when the sweep is started again.
Each run evaluates every --eval-every epochs (<out>/logs/<run>/psd_metrics.csv: the curves).

Methods (METHODS): each is one of the trainer's --psd-teacher kinds (self, ema, prev_epoch,
distill) with its --psd-alpha-max (the soft-target weight of PSDLoss) and the flags it sets
otherwise; every other setting is the trainer's default (python -m psd_train --help: alpha
ramping linearly over the whole run, EMA momentum 0.99, the teacher's own scale, every row
soft). Each row of results.csv records the settings the run used (SETTINGS, as the trainer
resolved them) and the summary's first table shows them per method.
    clip         plain CLIP (alpha = 0)
    pskd         prev_epoch, alpha 0.8 (PS-KD)
    albef_ema    ema, alpha 0.4 reached after one epoch, momentum 0.995 (ALBEF's, not the default)
    ema_teacher  ema, alpha 0.4 reached after one epoch (the default momentum)
    self_sharp   self at a lower temperature: teacher scale 30 (the student's own scale stays
                 near 14-19 here), alpha 0.5
    born_again   distill: the final checkpoint of this sweep's CLIP run on the same data and seed
                 (open_clip's --distill-model psd-tiny --distill-pretrained CKPT), alpha 0.5 from
                 the first step (constant schedule)
    progressive  pskd with the seed paper's progressive soft subset (--psd-soft-fraction-preset
                 seed: 10% of each batch's rows soft in the first epoch, 10% more each epoch, all
                 from the 10th); pskd itself softens every row
    self, self_scale7, ema, prev_epoch, within_modality
                 the earlier short-budget teachers, alpha 0.3 (self_scale7: teacher scale 7; ema:
                 momentum 0.95; within_modality: self with --psd-teacher-mode within_modality)
    siglip, siglip_ema_teacher, siglip_born_again
                 the sigmoid loss (--siglip: open_clip_train's SigLIP model with a logit bias,
                 PSDSigLipLoss): plain SigLIP (alpha = 0), and ema_teacher and born_again on it
                 (siglip_born_again's teacher is this sweep's SigLIP run on the same data and seed)

Summaries compare each method with --baseline on the same seeds (default clip; siglip for the
sigmoid-loss methods).
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import time
from dataclasses import dataclass, field

from psd_train.args import TEACHER_SOURCES
from psd_train.demo.data import SOURCES, build_demo_data
from psd_train.demo.model import DEMO_MODEL, TRAIN_FLAGS
from psd_train.demo.plugin import PLUGIN
from psd_train.demo.report import SETTINGS, regime_tables, summarize
from psd_train.errors import FlagError, run_command
from psd_train.main import main as train_main
from psd_train.runlog import append_csv_rows

# Stands for the final checkpoint of the method's baseline run (CLIP, or SigLIP for the sigmoid loss)
# with the same data and seed.
CLIP_CHECKPOINT = "{clip_checkpoint}"
BASELINES = ("clip", "siglip")


@dataclass(frozen=True)
class Method:
    """A PSD teacher of the sweep: the trainer's --psd-teacher kind, its --psd-alpha-max, and the
    flags where it departs from the trainer's defaults (flag -> value); nothing else is set.
    siglip: the sigmoid loss (--siglip), whose baseline run is "siglip" instead of "clip"."""

    teacher: str
    alpha_max: float
    overrides: dict = field(default_factory=dict)
    siglip: bool = False

    def __post_init__(self):
        assert self.teacher in TEACHER_SOURCES, self.teacher

    @property
    def baseline(self) -> str:
        return BASELINES[self.siglip]

    def flags(self) -> list[str]:
        out = ["--siglip"] if self.siglip else []
        out += ["--psd-teacher", self.teacher, "--psd-alpha-max", f"{self.alpha_max:g}"]
        for flag, value in self.overrides.items():
            out += [flag, value]
        return out


ALPHA = 0.3
ONE_EPOCH = {"--psd-ramp-epochs": "1"}
METHODS = {
    "clip": Method("self", 0.0),
    "pskd": Method("prev_epoch", 0.8),
    "albef_ema": Method("ema", 0.4, {"--psd-ema-momentum": "0.995", **ONE_EPOCH}),
    "ema_teacher": Method("ema", 0.4, ONE_EPOCH),
    "self_sharp": Method("self", 0.5, {"--psd-teacher-scale": "30"}),
    "born_again": Method("distill", 0.5, {"--psd-schedule": "constant", "--distill-model": DEMO_MODEL,
                                          "--distill-pretrained": CLIP_CHECKPOINT}),
    "progressive": Method("prev_epoch", 0.8, {"--psd-soft-fraction-preset": "seed"}),
    # the short-budget teachers (4 epochs, lr 2e-3)
    "self": Method("self", ALPHA),
    "self_scale7": Method("self", ALPHA, {"--psd-teacher-scale": "7"}),
    "ema": Method("ema", ALPHA, {"--psd-ema-momentum": "0.95"}),
    "prev_epoch": Method("prev_epoch", ALPHA),
    "within_modality": Method("self", ALPHA, {"--psd-teacher-mode": "within_modality"}),
    # the sigmoid loss
    "siglip": Method("self", 0.0, siglip=True),
    "siglip_ema_teacher": Method("ema", 0.4, ONE_EPOCH, siglip=True),
    "siglip_born_again": Method("distill", 0.5, {"--psd-schedule": "constant", "--distill-model": DEMO_MODEL,
                                                 "--distill-pretrained": CLIP_CHECKPOINT}, siglip=True),
}
DEFAULT_METHODS = ("clip", "pskd", "albef_ema", "self_sharp", "born_again", "progressive")
RESULTS = "results.csv"
PROG = "python -m psd_train.demo.sweep"


def train_flags(data: dict, *, batch_size: int, epochs: int, lr: float, warmup: int, seed: int,
                threads: int | None) -> list[str]:
    """The open_clip_train + psd flags shared by every method (the demo uses them too)."""
    flags = [*TRAIN_FLAGS, "--train-data", data["train_csv"], "--dataset-type", "csv", "--csv-separator", "\t",
             "--csv-img-key", "filepath", "--csv-caption-key", "title", "--batch-size", str(batch_size),
             "--epochs", str(epochs), "--lr", str(lr), "--warmup", str(warmup), "--workers", "0",
             "--seed", str(seed), "--save-frequency", "0", "--report-to", "tensorboard",
             "--psd-eval-data", data["root"]]
    if threads is not None:
        flags += ["--psd-threads", str(threads)]
    return flags


def method_flags(method: str, clip_checkpoint: str | None = None) -> list[str]:
    """METHODS[method]'s trainer flags, with its baseline's checkpoint filled in (born_again)."""
    flags = METHODS[method].flags()
    if CLIP_CHECKPOINT in flags:
        baseline = METHODS[method].baseline
        if clip_checkpoint is None or not os.path.isfile(clip_checkpoint):
            raise FlagError(f"method {method} needs the finished {baseline} run of the same data and seed as its "
                            f"teacher; {clip_checkpoint} does not exist (run --methods {baseline} first)")
        flags[flags.index(CLIP_CHECKPOINT)] = clip_checkpoint
    return flags


def settings_row(settings: dict) -> dict:
    """The columns SETTINGS of results.csv from the settings a run returned (psd_train.main.main's
    "settings"): the EMA momentum only for the EMA teacher (no other teacher uses it)."""
    row = {name: settings.get(name) for name in SETTINGS}
    if row["psd_teacher"] != "ema":
        row["psd_ema_momentum"] = None
    return row


def run_name(method: str, n_train: int, noise: float, seed: int) -> str:
    return f"{method}-n{n_train}-noise{noise}-seed{seed}"


def done_runs(path: str) -> set:
    if not os.path.isfile(path):
        return set()
    with open(path) as f:
        return {(r["method"], int(r["n_train"]), float(r["noise"]), int(r["seed"])) for r in csv.DictReader(f)}


def _epochs_per_size(a) -> dict[int, int]:
    if len(a.epochs) not in (1, len(a.n_train)):
        raise FlagError(f"--epochs takes one value or one per --n-train size ({len(a.n_train)}), got {a.epochs}")
    epochs = a.epochs * len(a.n_train) if len(a.epochs) == 1 else a.epochs
    return dict(zip(a.n_train, epochs))


def run_sweep(a) -> None:
    results = os.path.join(a.out, RESULTS)
    done = done_runs(results)
    methods = a.methods or list(DEFAULT_METHODS)
    methods = sorted(dict.fromkeys(methods), key=lambda m: m not in BASELINES)  # first: born_again needs them
    epochs_of = _epochs_per_size(a)
    total = len(a.n_train) * len(a.seeds) * len(a.noise) * len(methods)
    count = 0
    logs = os.path.join(a.out, "logs")
    for n_train in a.n_train:
        for seed in a.seeds:
            for noise in a.noise:
                data = build_demo_data(os.path.join(a.out, "data", f"n{n_train}_noise{noise}_seed{seed}"),
                                       noise=noise, seed=seed, n_train=n_train, n_val=a.n_val, n_test=a.n_test,
                                       source=a.source, progress=False)
                for method in methods:
                    clip_checkpoint = os.path.join(logs, run_name(METHODS[method].baseline, n_train, noise, seed),
                                                   "checkpoints", "psd_latest.pt")
                    count += 1
                    if (method, n_train, noise, seed) in done:
                        continue
                    name = run_name(method, n_train, noise, seed)
                    flags = method_flags(method, clip_checkpoint)
                    shutil.rmtree(os.path.join(logs, name), ignore_errors=True)  # a run cut off earlier
                    start = time.time()
                    print(f"[{count}/{total}] {name}", flush=True)
                    result = train_main([*train_flags(data, batch_size=a.batch_size, epochs=epochs_of[n_train],
                                                      lr=a.lr, warmup=a.warmup, seed=seed, threads=a.threads),
                                         *flags, "--logs", logs, "--name", name, "--psd-quiet",
                                         "--psd-eval-every", str(a.eval_every)], plugins=[PLUGIN])
                    row = {"method": method, "noise": noise, "seed": seed, "epochs": epochs_of[n_train],
                           "n_train": n_train, "n_test": a.n_test, "source": a.source, "lr": a.lr,
                           "wall_s": round(time.time() - start, 1), **settings_row(result["settings"]),
                           **result["metrics"]}
                    append_csv_rows(results, tuple(row), [row])
                    print(f"    {row['wall_s']} s  zero-shot {row.get('zeroshot_top1', float('nan')):.3f}",
                          flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/sweep")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.3, 0.5])
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=None,
                   help=f"default: {' '.join(DEFAULT_METHODS)}")
    p.add_argument("--n-train", type=int, nargs="+", default=[2000], help="training-set sizes")
    p.add_argument("--n-val", type=int, default=100)
    p.add_argument("--n-test", type=int, default=500, help="held-out test images (the evaluation set)")
    p.add_argument("--source", choices=SOURCES, default="mnist",
                   help="demo data source: mnist (5000 images), digits, or mnist_digits (6797: room for "
                        "4000 training and 2000 test images)")
    p.add_argument("--epochs", type=int, nargs="+", default=[30],
                   help="epochs: one value, or one per --n-train size (e.g. 30 15: the same steps)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--eval-every", type=int, default=1, help="epochs between evaluations (the curves)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (1 suits a shared machine)")
    p.add_argument("--summarize", action="store_true", help="only print the tables from results.csv")
    p.add_argument("--baseline", choices=BASELINES, default="clip",
                   help="the method every other one is compared with on the same seeds")
    a = p.parse_args(argv)
    if not a.summarize:
        _epochs_per_size(a)
    os.makedirs(a.out, exist_ok=True)
    if not a.summarize:
        run_sweep(a)
    print(summarize(os.path.join(a.out, RESULTS), baseline=a.baseline))
    print(regime_tables(os.path.join(a.out, RESULTS), method=a.baseline))
    return 0


if __name__ == "__main__":
    sys.exit(run_command(PROG, "psd_train.demo.sweep:main"))
