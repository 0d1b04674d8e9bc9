"""`python -m psd_train`: open_clip_train with PSDLoss, PSD teachers, evaluations and resumable state.

    python -m psd_train --model psd-tiny --image-mean 0 0 0 --image-std 1 1 1 \\
        --train-data data/psd_demo/train.csv --dataset-type csv --csv-separator $'\\t' \\
        --csv-img-key filepath --csv-caption-key title --batch-size 128 --epochs 12 \\
        --psd-alpha-max 0.3 --psd-teacher ema --psd-eval-data data/psd_demo

How it plugs in. open_clip_train.main.main(argv) is one long function; psd_train runs it
unchanged and replaces three names in its module namespace for the duration of the call
(restored afterwards, so open_clip_train stays usable in the same process):

    create_loss      -> builds PSDLoss from the --psd-* flags (the only loss change)
    train_one_epoch  -> the original, called with the teacher as `dist_model` (open_clip's
                        distillation path forwards it under no_grad and passes its outputs to
                        the loss as dist_*), plus what has to happen around an epoch: seeding
                        the data order, refreshing the teacher, evaluating, and writing the
                        PSD checkpoint; an optimizer step post-hook (torch's
                        Optimizer.register_step_post_hook) updates the EMA teacher and logs
                        loss, alpha, lr and scale after every optimizer step
    setup_logging    -> the original, with its console handler quieted under --psd-quiet; the
                        handlers it adds are removed when the run ends

psd_train holds no loss math: PSDLoss (psd_kernels) owns the soft targets, the alpha
schedule and its step counter.

Data order: each epoch seeds torch, numpy and random from (--seed, epoch), so the order of
epoch e does not depend on what ran before it. A resumed run therefore sees the same batches
as an uninterrupted one, and runs with the same --seed (CLIP vs PSD) see the same batches.
"""
from __future__ import annotations

import json
import logging
import os
import random
import sys
from contextlib import contextmanager

import numpy as np
import torch
from tqdm import tqdm

from psd_kernels import PSDLoss
from psd_train.args import check_combined, psd_parser, split_args
from psd_train.checkpoint import (PSD_CHECKPOINT_NAME, atomic_save, check_resume_file, find_psd_state,
                                  psd_state)
from psd_train.datafiles import check_data_files
from psd_train.errors import UsageError
from psd_train.runlog import (FINAL_METRICS, METRICS_CSV, STEP_FIELDS, STEPS_CSV, append_csv_rows,
                              truncate_csv)
from psd_train.teachers import Teacher

def main(argv: list[str] | None = None) -> dict:
    """Train; returns {"log_dir", "checkpoint", "metrics" (the last evaluation, or {})}."""
    import open_clip_train.main as oc_main
    from open_clip_train.params import parse_args

    from psd_train.demo.model import register_demo_models

    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        psd_parser().print_help()
        print("\nopen_clip_train flags:")
        parse_args(["--help"])
    psd, rest = split_args(argv)
    if psd.psd_threads is not None:
        torch.set_num_threads(psd.psd_threads)
    if not torch.cuda.is_available() and not any(a.split("=")[0] == "--precision" for a in rest):
        # open_clip_train's default --precision amp means bfloat16 autocast on a CPU, which is
        # many times slower than fp32 there (no bf16 matmul units on most CPUs).
        rest += ["--precision", "fp32"]
    register_demo_models()
    args = parse_args(rest)
    check_combined(psd, args)
    n_train = check_data_files(args, psd)
    check_resume_file(args.resume)

    run = _Run(psd, n_train)
    with run.patched(oc_main):
        status = oc_main.main(rest)
    if status == -1:
        raise UsageError("open_clip_train stopped (see its message above): an experiment with this "
                         "--name already exists; pick a new --name or pass --resume latest")
    return run.result()


# -- the per-run hooks ------------------------------------------------------------------------

class _Run:
    """State shared by the hooks of one main() call."""

    def __init__(self, psd, n_train: int | None):
        self.psd = psd
        self.n_train = n_train
        self.teacher = Teacher(psd.psd_teacher, psd.psd_ema_momentum, fixed_scale=psd.psd_teacher_scale is not None)
        self.args = None
        self.model = None
        self.loss = None
        self.step = 0
        self.last = {}
        self.steps_rows = []
        self.metrics = {}
        self.progress = None
        self.eval_tools = None

    @contextmanager
    def patched(self, oc_main):
        saved = {name: getattr(oc_main, name) for name in ("create_loss", "train_one_epoch", "setup_logging")}
        before = list(logging.root.handlers)
        # setup_logging sets every logger to INFO (torch._dynamo's too); restore them afterwards
        levels = {name: logger.level for name, logger in logging.root.manager.loggerDict.items()
                  if isinstance(logger, logging.Logger)}
        root_level = logging.root.level

        def train_one_epoch(*a, **kw):
            return self.train_one_epoch(saved["train_one_epoch"], *a, **kw)

        def setup_logging(log_file, level, include_host=False):
            saved["setup_logging"](log_file, level, include_host)
            if self.psd.psd_quiet:
                for handler in logging.root.handlers:
                    if type(handler) is logging.StreamHandler:
                        handler.setLevel(logging.WARNING)

        oc_main.create_loss = self.create_loss
        oc_main.train_one_epoch = train_one_epoch
        oc_main.setup_logging = setup_logging
        try:
            yield
        finally:
            for name, value in saved.items():
                setattr(oc_main, name, value)
            for handler in [h for h in logging.root.handlers if h not in before]:
                logging.root.removeHandler(handler)
                handler.close()
            logging.root.setLevel(root_level)
            for name, logger in logging.root.manager.loggerDict.items():
                if isinstance(logger, logging.Logger):
                    logger.setLevel(levels.get(name, logging.NOTSET))
            if self.progress is not None:
                self.progress.close()

    def create_loss(self, args):
        psd = self.psd
        return PSDLoss(alpha_max=psd.psd_alpha_max, schedule=psd.psd_schedule, ramp_steps=_ramp_steps(psd, args, self.n_train),
                       soft_fraction=psd.psd_soft_fraction, seed=args.seed, teacher_scale=psd.psd_teacher_scale,
                       teacher_mode=psd.psd_teacher_mode, backend=psd.psd_backend, local_loss=args.local_loss,
                       gather_with_grad=args.gather_with_grad, rank=args.rank, world_size=args.world_size)

    def train_one_epoch(self, original, model, data, loss, epoch, optimizer, scaler, scheduler, dist_model,
                        args, tb_writer=None):
        if self.args is None:
            self._start(model, data, loss, epoch, optimizer, args)
        _seed_epoch(args.seed, epoch)
        teacher_model = self.teacher.for_epoch(_unwrap(model), epoch, dist_model)
        distill = args.distill
        args.distill = teacher_model is not None
        try:
            original(model, data, loss, epoch, optimizer, scaler, scheduler, teacher_model, args, tb_writer=tb_writer)
        finally:
            args.distill = distill
        self._end_epoch(model, epoch, optimizer, scaler, args, tb_writer)

    # first call: hooks, resumed state, log files
    def _start(self, model, data, loss, start_epoch, optimizer, args):
        self.args, self.model, self.loss = args, model, loss
        self.batches = data["train"].dataloader.num_batches
        self.step = start_epoch * self.batches
        if args.resume is not None and start_epoch > 0:
            state = find_psd_state(args.resume)
            if state is None:
                logging.warning(f"{args.resume} holds no PSD state: the alpha schedule restarts at step 0 "
                                "and the teacher starts from the student")
            else:
                loss.load_state_dict(state["loss"])
                self.teacher.load_state_dict(state["teacher"], _unwrap(model))
        self.log_dir = os.path.join(args.logs, args.name) if args.logs else None
        if args.save_logs:
            truncate_csv(os.path.join(self.log_dir, STEPS_CSV), "step", self.step)
            truncate_csv(os.path.join(self.log_dir, METRICS_CSV), "epoch", start_epoch)
        loss.register_forward_pre_hook(self._before_loss)
        loss.register_forward_hook(self._after_loss)
        optimizer.register_step_post_hook(self._after_step)
        if self.psd.psd_progress:
            self.progress = tqdm(total=args.epochs * self.batches, initial=self.step, desc=args.name,
                                 unit="step", dynamic_ncols=True)

    def _before_loss(self, module, inputs):
        self.last["alpha"] = module.current_alpha()

    def _after_loss(self, module, inputs, output):
        value = output["contrastive_loss"] if isinstance(output, dict) else output
        self.last["loss"] = float(value.detach())

    def _after_step(self, optimizer, *unused):
        model = _unwrap(self.model)
        self.teacher.after_step(model)
        self.step += 1
        row = {"epoch": self.epoch_of(self.step), "step": self.step, "loss": self.last.get("loss"),
               "alpha": self.last.get("alpha"), "lr": optimizer.param_groups[0]["lr"],
               "logit_scale": float(model.logit_scale.detach().exp())}
        self.steps_rows.append(row)
        if self.progress is not None:
            self.progress.update(1)
            self.progress.set_postfix(loss=f"{row['loss']:.3f}", alpha=f"{row['alpha']:.2f}")

    def epoch_of(self, step: int) -> int:
        return (step - 1) // self.batches

    def _end_epoch(self, model, epoch, optimizer, scaler, args, tb_writer):
        done = epoch + 1
        if args.save_logs:
            append_csv_rows(os.path.join(self.log_dir, STEPS_CSV), STEP_FIELDS, self.steps_rows)
            if tb_writer is not None:
                for row in self.steps_rows:
                    tb_writer.add_scalar("psd/alpha", row["alpha"], row["step"])
        self.steps_rows = []
        every = self.psd.psd_eval_every
        if self.psd.psd_eval_data and (done == args.epochs or (every and done % every == 0)):
            self.metrics = self._evaluate(model, args)
            if args.save_logs:
                row = {"epoch": done, "step": self.step, **self.metrics}
                append_csv_rows(os.path.join(self.log_dir, METRICS_CSV), tuple(row), [row])
                if tb_writer is not None:
                    for key, value in self.metrics.items():
                        tb_writer.add_scalar(f"psd_eval/{key}", value, done)
                if done == args.epochs:
                    with open(os.path.join(self.log_dir, FINAL_METRICS), "w") as f:
                        json.dump(self.metrics, f, indent=1)
        if args.save_logs:
            checkpoint = {"epoch": done, "name": args.name, "state_dict": _unwrap(model).state_dict(),
                          "optimizer": optimizer.state_dict(), "psd": psd_state(self.loss, self.teacher)}
            if scaler is not None:
                checkpoint["scaler"] = scaler.state_dict()
            atomic_save(checkpoint, os.path.join(args.checkpoint_path, PSD_CHECKPOINT_NAME))

    def _evaluate(self, model, args) -> dict:
        from psd_train.demo.evaluate import evaluate

        if self.eval_tools is None:
            import open_clip
            from open_clip.transform import PreprocessCfg, image_transform_v2
            # the model carries its final preprocessing (with --image-mean/--image-std applied)
            preprocess = image_transform_v2(PreprocessCfg(**open_clip.get_model_preprocess_cfg(_unwrap(model))),
                                            is_train=False)
            tokenizer = open_clip.get_tokenizer(args.model, context_length=args.force_context_length)
            self.eval_tools = preprocess, tokenizer
        preprocess, tokenizer = self.eval_tools
        model.eval()
        metrics = evaluate(_unwrap(model), preprocess, tokenizer, self.psd.psd_eval_data, device=args.device)
        logging.info("psd_train eval after epoch %d: %s", self.epoch_of(self.step) + 1,
                     " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        return {k: float(v) for k, v in metrics.items()}

    def result(self) -> dict:
        if self.args is None:
            return {"log_dir": None, "checkpoint": None, "metrics": {}}
        checkpoint = os.path.join(self.args.checkpoint_path, PSD_CHECKPOINT_NAME) if self.args.save_logs else None
        return {"log_dir": self.log_dir, "checkpoint": checkpoint, "metrics": dict(self.metrics)}


# -- helpers ----------------------------------------------------------------------------------

def _unwrap(model):
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def _seed_epoch(seed: int, epoch: int) -> None:
    """Seed torch, numpy and random from (seed, epoch): the epoch's data order and dropout."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(2)
    torch.manual_seed(int(state[0]) << 32 | int(state[1]))
    np.random.seed(int(state[0]))
    random.seed(int(state[1]))


def _ramp_steps(psd, args, n_train: int | None) -> int:
    """--psd-ramp-steps, or --psd-ramp-epochs (default --epochs) times the optimizer steps per epoch."""
    if psd.psd_ramp_steps is not None:
        return psd.psd_ramp_steps
    epochs = args.epochs if psd.psd_ramp_epochs is None else psd.psd_ramp_epochs
    if n_train is None:
        n_train = args.train_num_samples or 0
    steps_per_epoch = n_train // (args.batch_size * args.world_size) // args.accum_freq  # drop_last batches
    return int(round(epochs * steps_per_epoch))
