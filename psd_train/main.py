"""`python -m psd_train`: open_clip_train with PSDLoss, PSD teachers, evaluations and resumable state.

    python -m psd_train --model psd-tiny --image-mean 0 0 0 --image-std 1 1 1 \\
        --train-data data/psd_demo/train.csv --dataset-type csv --csv-separator $'\\t' \\
        --csv-img-key filepath --csv-caption-key title --batch-size 128 --epochs 12 \\
        --psd-alpha-max 0.3 --psd-teacher ema --psd-eval-data data/psd_demo

Models and evaluations come from plugins (psd_train.plugins): the entry-point group
psd_train.plugins, or main(argv, plugins=[...]). The demo's plugin (psd_train.demo.plugin)
registers psd-tiny and evaluates --psd-eval-data on demo data; the trainer imports nothing
from psd_train.demo.

How it plugs in (psd_train.compat lists every open_clip_train name used and why):
open_clip_train.main.main(argv) runs unchanged, with its train_one_epoch replaced by
_Run.train_one_epoch for the length of the call. That seeds the epoch, calls the original
with PSDLoss as the loss and the student with its teacher as the model (psd_train.feed, which
also carries the teacher through --accum-freq), then evaluates and writes the PSD
checkpoint. open_clip_train.data.CsvDataset is replaced for the call too, by a subclass
that skips images that do not load (psd_train.csvimages). An optimizer step post-hook
updates the EMA teacher, advances PSDLoss's schedules by one step and logs loss, alpha,
soft fraction, lr and scale after every optimizer step, so with --accum-freq N the N loss
calls of a step share one alpha and one soft subset.

Several processes (torchrun): every rank runs all of the above on its own share of each
batch; the EMA and previous-epoch teachers follow the student, which DDP keeps equal on every
rank. Rank 0 alone evaluates and writes the step log and the PSD checkpoint, as
open_clip_train's save_logs decides.

psd_train holds no loss math: PSDLoss (psd_kernels) owns the soft targets, both schedules
and their step counter.

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

import numpy as np
import torch
from tqdm import tqdm

from psd_train.args import check_combined, psd_parser, schedule_flags, split_args, without_distill_flags
from psd_train.checkpoint import (PSD_CHECKPOINT_NAME, CheckpointError, atomic_save, check_resume_file,
                                  find_psd_state, model_state, psd_state, schedule_changes)
from psd_train.compat import check_open_clip, patched
from psd_train.console import known_messages_left_out
from psd_train.csvimages import TooManySkippedImages, skipping_csv_dataset
from psd_train.datafiles import check_data_files, csv_flags
from psd_train.errors import UsageError
from psd_train.feed import for_loop, unwrap
from psd_train.loss_from_flags import backend_in_use, make_loss
from psd_train.plugins import check_models, evaluation, register_models, resolve
from psd_train.runlog import (FINAL_METRICS, METRICS_CSV, STEP_FIELDS, STEPS_CSV, append_csv_rows,
                              truncate_csv)
from psd_train.teachers import Teacher, load_distill_model


def main(argv: list[str] | None = None, plugins=None) -> dict:
    """Train; returns {"log_dir", "checkpoint" (None where this rank writes none), "metrics" (the last
    evaluation, or {}; under torchrun rank 0 evaluates, writes every log file and the checkpoint),
    "settings" (the PSD settings the run used: psd_train.args.schedule_flags, teacher resolved)}.

    plugins: the psd_train.plugins.Plugin objects (or "module:attribute" names) that bring models
    and the --psd-eval-data evaluation; default: those installed (psd_train.plugins.installed)."""
    check_open_clip()
    import open_clip_train.data as oc_data
    import open_clip_train.main as oc_main
    from open_clip_train.distributed import world_info_from_env
    from open_clip_train.params import parse_args

    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        psd_parser().print_help()
        print("\nopen_clip_train flags:")
        parse_args(["--help"])
    psd, rest = split_args(argv)
    if psd.psd_threads is not None:
        torch.set_num_threads(psd.psd_threads)
    if not torch.cuda.is_available():
        rest += _cpu_defaults(rest)
    active = resolve(plugins)
    register_models(active)  # before open_clip_train parses its args: --model NAME of a plugin
    args = parse_args(rest)
    check_combined(psd, args)
    check_models(args, active)
    evaluator = evaluation(psd.psd_eval_data, active)
    check_data_files(args, psd, rank=world_info_from_env()[1])
    check_resume_file(args)

    run = _Run(psd, oc_main.train_one_epoch, distill=(args.distill_model, args.distill_pretrained),
               evaluator=evaluator)
    csv_dataset = skipping_csv_dataset(oc_data.CsvDataset, csv_flags(args), psd.psd_max_skipped_share,
                                       run.skipped_images)
    with patched(oc_main, run.train_one_epoch, quiet=psd.psd_quiet, csv_dataset=csv_dataset), \
            known_messages_left_out(not args.pretrained):
        try:
            status = oc_main.main(without_distill_flags(rest))
        finally:
            run.close()
    if status == -1:
        raise UsageError("open_clip_train stopped (see its message above): an experiment with this "
                         "--name already exists; pick a new --name or pass --resume latest")
    return run.result()


def _cpu_defaults(argv: list[str]) -> list[str]:
    """open_clip_train flags for a machine without CUDA, where the user left them out.

    --precision fp32: open_clip_train's default amp means bfloat16 autocast on a CPU, which is
    many times slower than fp32 there (no bf16 matmul units on most CPUs).
    --device cpu: its default cuda would only fall back to the CPU, with a warning per process.
    """
    given = {a.split("=")[0] for a in argv}
    return [token for flag, value in (("--precision", "fp32"), ("--device", "cpu")) if flag not in given
            for token in (flag, value)]


class _Run:
    """State shared by the hooks of one main() call."""

    def __init__(self, psd, original_train_one_epoch, distill: tuple, evaluator=None):
        self.psd = psd
        self.evaluator = evaluator  # the psd_train.plugins.Plugin whose evaluate runs for --psd-eval-data
        self.original = original_train_one_epoch
        self.distill = distill
        self.args = None
        self.model = None
        self.loss = None
        self.teacher = None
        self.step = 0
        self.last = {}
        self.steps_rows = []
        self.metrics = {}
        self.progress = None
        self.eval_tools = None
        self.skipped_images = []  # psd_train.csvimages.SkippedImages of each CSV dataset open_clip_train builds

    def train_one_epoch(self, model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args,
                        tb_writer=None):
        """Stands in for open_clip_train.main.train_one_epoch. `loss` (open_clip's ClipLoss, or SigLipLoss
        with --siglip) gives way to PSDLoss (PSDSigLipLoss); `dist_model` is None (the teacher travels
        with the model, psd_train.feed)."""
        if self.args is None:
            self._start(model, data, epoch, optimizer, args)
        _seed_epoch(args.seed, epoch)
        loop_model, loop_loss = for_loop(model, self.teacher.for_epoch(unwrap(model), epoch), self.loss,
                                         args.accum_freq)
        try:
            self.original(loop_model, data, loop_loss, epoch, optimizer, scaler, scheduler, dist_model, args,
                          tb_writer=tb_writer)
        except TooManySkippedImages:
            # raised in a DataLoader worker, it arrives with the worker's traceback in its message;
            # the counts are shared, so the same one-line error is rebuilt here
            exceeded = [skips for skips in self.skipped_images if skips.exceeded()]
            if not exceeded:
                raise
            raise exceeded[0].error() from None
        self._end_epoch(model, epoch, optimizer, scaler, args, tb_writer)

    # first call: the loss, the teacher, resumed state, log files, hooks
    def _start(self, model, data, start_epoch, optimizer, args):
        self.args, self.model = args, model
        # optimizer steps per epoch, as open_clip_train's train_one_epoch and LR schedule count them
        self.steps_per_epoch = data["train"].dataloader.num_batches // args.accum_freq
        self.loss = make_loss(self.psd, args, self.steps_per_epoch)
        distill_model = load_distill_model(*self.distill, args) if self.psd.psd_teacher == "distill" else None
        self.teacher = Teacher(self.psd.psd_teacher, self.psd.psd_ema_momentum,
                               fixed_scale=self.psd.psd_teacher_scale is not None, distill_model=distill_model,
                               keep_bias=args.siglip and self.psd.psd_teacher_bias is None)
        self.step = start_epoch * self.steps_per_epoch
        if args.resume is not None and start_epoch > 0:
            state = find_psd_state(args.resume)
            if state is None:
                logging.warning(f"{args.resume} holds no PSD state: the schedules restart at step 0 "
                                "and the teacher starts from the student")
            else:
                self._check_schedule(state, args.resume)
                self.loss.load_state_dict(state["loss"])
                self.teacher.load_state_dict(state["teacher"], unwrap(model))
        self.log_dir = os.path.join(args.logs, args.name) if args.logs else None
        if args.save_logs:
            truncate_csv(os.path.join(self.log_dir, STEPS_CSV), "step", self.step)
            truncate_csv(os.path.join(self.log_dir, METRICS_CSV), "epoch", start_epoch)
        self.loss.register_forward_pre_hook(self._before_loss)
        self._backend_hook = self.loss.register_forward_pre_hook(self._log_backend, with_kwargs=True)
        self.loss.register_forward_hook(self._after_loss)
        optimizer.register_step_post_hook(self._after_step)
        if self.psd.psd_progress and args.rank == 0:
            self.progress = tqdm(total=args.epochs * self.steps_per_epoch, initial=self.step, desc=args.name,
                                 unit="step", dynamic_ncols=True)

    def _check_schedule(self, state: dict, resumed: str) -> None:
        """A resume with other schedule flags than the checkpoint's stops, unless --psd-allow-schedule-change."""
        changes = schedule_changes(state, schedule_flags(self.psd), self.loss.get_extra_state())
        if not changes:
            return
        listed = "; ".join(changes)
        if not self.psd.psd_allow_schedule_change:
            raise CheckpointError(f"--resume {resumed}: the PSD schedule differs from the checkpoint's: {listed}; "
                                  "resume with the checkpoint's values, or pass --psd-allow-schedule-change to "
                                  "continue with the new ones")
        logging.warning(f"--resume {resumed}: continuing with a PSD schedule that differs from the checkpoint's "
                        f"(--psd-allow-schedule-change): {listed}")

    def _log_backend(self, module, args, kwargs):
        """Once, at the first loss call: which backend --psd-backend resolved to for these features."""
        features = kwargs["image_features"] if "image_features" in kwargs else args[0]
        logging.info(f"psd_train: PSD loss backend {backend_in_use(module, features)} (--psd-backend "
                     f"{module.backend}; {features.dtype} features on {features.device})")
        self._backend_hook.remove()

    def _before_loss(self, module, inputs):
        self.last["alpha"] = module.current_alpha()
        self.last["soft_fraction"] = module.current_soft_fraction()

    def _after_loss(self, module, inputs, output):
        value = output["contrastive_loss"] if isinstance(output, dict) else output
        self.last["loss"] = float(value.detach())

    def _after_step(self, optimizer, *unused):
        model = unwrap(self.model)
        self.teacher.after_step(model)
        self.loss.advance()  # once per optimizer step, however many loss calls it took
        self.step += 1
        row = {"epoch": self.epoch_of(self.step), "step": self.step, "loss": self.last.get("loss"),
               "alpha": self.last.get("alpha"), "soft_fraction": self.last.get("soft_fraction"),
               "lr": optimizer.param_groups[0]["lr"], "logit_scale": float(model.logit_scale.detach().exp())}
        self.steps_rows.append(row)
        if self.progress is not None:
            self.progress.update(1)
            self.progress.set_postfix(loss=f"{row['loss']:.3f}", alpha=f"{row['alpha']:.2f}")

    def epoch_of(self, step: int) -> int:
        return (step - 1) // self.steps_per_epoch

    def _end_epoch(self, model, epoch, optimizer, scaler, args, tb_writer):
        done = epoch + 1
        for skips in self.skipped_images:
            if skips.skipped:
                logging.warning(f"{skips.label}: {skips.skipped} of {skips.read} images read so far were missing "
                                "or did not decode and were skipped")
        if args.save_logs:
            append_csv_rows(os.path.join(self.log_dir, STEPS_CSV), STEP_FIELDS, self.steps_rows)
            if tb_writer is not None:
                for row in self.steps_rows:
                    tb_writer.add_scalar("psd/alpha", row["alpha"], row["step"])
                    tb_writer.add_scalar("psd/soft_fraction", row["soft_fraction"], row["step"])
        self.steps_rows = []
        every = self.psd.psd_eval_every
        # rank 0 evaluates (the model is the same on every rank); the others wait for it at
        # open_clip_train's barrier after the epoch
        if self.psd.psd_eval_data and args.rank == 0 and (done == args.epochs or (every and done % every == 0)):
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
            checkpoint = {"epoch": done, "name": args.name, "state_dict": model_state(model),
                          "optimizer": optimizer.state_dict(),
                          "psd": psd_state(self.loss, self.teacher, schedule_flags(self.psd))}
            if scaler is not None:
                checkpoint["scaler"] = scaler.state_dict()
            atomic_save(checkpoint, os.path.join(args.checkpoint_path, PSD_CHECKPOINT_NAME))

    def _evaluate(self, model, args) -> dict:
        if self.eval_tools is None:
            import open_clip
            from open_clip.transform import PreprocessCfg, image_transform_v2
            # the model carries its final preprocessing (with --image-mean/--image-std applied)
            preprocess = image_transform_v2(PreprocessCfg(**open_clip.get_model_preprocess_cfg(unwrap(model))),
                                            is_train=False)
            tokenizer = open_clip.get_tokenizer(args.model, context_length=args.force_context_length)
            self.eval_tools = preprocess, tokenizer
        preprocess, tokenizer = self.eval_tools
        model.eval()
        metrics = self.evaluator.evaluate(unwrap(model), preprocess, tokenizer, self.psd.psd_eval_data,
                                          device=args.device)
        logging.info("psd_train eval after epoch %d: %s", self.epoch_of(self.step) + 1,
                     " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        return {k: float(v) for k, v in metrics.items()}

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()

    def result(self) -> dict:
        if self.args is None:
            return {"log_dir": None, "checkpoint": None, "metrics": {}, "settings": schedule_flags(self.psd)}
        checkpoint = os.path.join(self.args.checkpoint_path, PSD_CHECKPOINT_NAME) if self.args.save_logs else None
        return {"log_dir": self.log_dir, "checkpoint": checkpoint, "metrics": dict(self.metrics),
                "settings": schedule_flags(self.psd)}


def _seed_epoch(seed: int, epoch: int) -> None:
    """Seed torch, numpy and random from (seed, epoch): the epoch's data order and dropout."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(2)
    torch.manual_seed(int(state[0]) << 32 | int(state[1]))
    np.random.seed(int(state[0]))
    random.seed(int(state[1]))
