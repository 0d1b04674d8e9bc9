"""PSD flags, layered on open_clip_train's own parser.

    python -m psd_train --help

`split_args(argv)` parses the --psd-* flags and returns them with the untouched rest
of argv, which open_clip_train.params.parse_args then parses as usual. Every
open_clip_train flag therefore keeps its meaning and its default.
"""
from __future__ import annotations

import argparse

from psd_kernels import TEACHER_MODES
from psd_kernels.backends import BACKENDS
from psd_kernels.schedule import FRACTION_SCHEDULES, SCHEDULES
from psd_train.errors import FlagError

# Where the teacher's embeddings come from (how they are used is --psd-teacher-mode).
TEACHER_SOURCES = ("self", "ema", "prev_epoch", "distill")
# --psd-soft-fraction-preset: (start, end, schedule, ramp in epochs)
FRACTION_PRESETS = {"seed": (0.1, 1.0, "per_epoch", 9)}
FRACTION_FLAGS = ("psd_soft_fraction", "psd_soft_fraction_start", "psd_soft_fraction_schedule",
                  "psd_soft_fraction_ramp_steps", "psd_soft_fraction_ramp_epochs")
DISTILL_FLAGS = ("--distill-model", "--distill-pretrained")
# The flags that set what PSD trains towards: saved in every checkpoint and compared on resume.
SCHEDULE_FLAGS = ("psd_alpha_max", "psd_schedule", "psd_ramp_steps", "psd_ramp_epochs", "psd_soft_fraction",
                  "psd_soft_fraction_start", "psd_soft_fraction_schedule", "psd_soft_fraction_ramp_steps",
                  "psd_soft_fraction_ramp_epochs", "psd_soft_fraction_preset", "psd_teacher", "psd_teacher_mode",
                  "psd_teacher_scale", "psd_teacher_bias", "psd_ema_momentum")


def psd_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m psd_train", add_help=False,
        description="open_clip_train with the PSD loss. Flags below are PSD's; every other "
                    "flag is open_clip_train's (listed after these).")
    group = parser.add_argument_group("PSD (progressive self-distillation)")
    group.add_argument("--psd-alpha-max", type=float, default=0.0,
                       help="largest soft-target weight alpha (0 = plain CLIP loss)")
    group.add_argument("--psd-schedule", choices=SCHEDULES, default="linear",
                       help="how alpha ramps from 0 to alpha_max")
    group.add_argument("--psd-ramp-steps", type=int, default=None,
                       help="optimizer steps to reach alpha_max")
    group.add_argument("--psd-ramp-epochs", type=float, default=None,
                       help="the ramp in epochs instead of steps (default: all of --epochs)")
    group.add_argument("--psd-soft-fraction-end", "--psd-soft-fraction", dest="psd_soft_fraction", type=float,
                       default=None, help="fraction of rows per direction that get the soft target; with a "
                                          "soft-fraction ramp, the fraction it ends at (default 1)")
    group.add_argument("--psd-soft-fraction-start", type=float, default=None,
                       help="the soft fraction at step 0 (default: the end fraction, no ramp)")
    group.add_argument("--psd-soft-fraction-schedule", choices=FRACTION_SCHEDULES, default=None,
                       help="how the soft fraction goes from start to end: linear, cosine, or per_epoch (one "
                            "equal rise at each epoch start). Default: linear with a start, else constant")
    group.add_argument("--psd-soft-fraction-ramp-steps", type=int, default=None,
                       help="optimizer steps from the start fraction to the end fraction")
    group.add_argument("--psd-soft-fraction-ramp-epochs", type=float, default=None,
                       help="that ramp in epochs (default: the alpha ramp's length)")
    group.add_argument("--psd-soft-fraction-preset", choices=tuple(FRACTION_PRESETS), default=None,
                       help="seed: the seed paper's soft fraction (Andonian et al. 2022): 0.1 of the batch in "
                            "the first epoch, 0.1 more at each epoch start, all of it from the 10th epoch")
    group.add_argument("--psd-teacher", choices=TEACHER_SOURCES, default=None,
                       help="teacher embeddings: self (the student, detached), ema (a momentum "
                            "copy of the student), prev_epoch (a snapshot taken at each epoch "
                            "start), distill (open_clip's --distill-model, frozen). Default: "
                            "distill when --distill-model is given, else self")
    group.add_argument("--psd-teacher-mode", choices=TEACHER_MODES, default="cross",
                       help="cross: the teacher's image-text matrix seen from both sides; "
                            "within_modality: caption-caption targets for image rows and "
                            "image-image targets for caption rows (SoftCLIP)")
    group.add_argument("--psd-teacher-scale", type=float, default=None,
                       help="fixed teacher scale s~ (exp of a logit scale, e.g. 50 for a softer "
                            "teacher than a student at 100); default: the teacher's own scale")
    group.add_argument("--psd-teacher-bias", type=float, default=None,
                       help="with --siglip: fixed teacher bias b~ of the sigmoid loss's teacher logits "
                            "s~ <x~, y~> + b~; default: the teacher's own bias")
    group.add_argument("--psd-ema-momentum", type=float, default=0.99,
                       help="EMA teacher: t <- m t + (1 - m) student after every optimizer step")
    group.add_argument("--psd-backend", choices=("auto",) + BACKENDS, default="auto",
                       help="loss implementation (auto: the fastest built one)")
    group.add_argument("--psd-eval-data", default=None,
                       help="evaluate on this data root with the evaluation a psd_train plugin provides (the "
                            "demo's: a demo data root, python -m psd_train.demo.data; psd_train.plugins)")
    group.add_argument("--psd-eval-every", type=int, default=0,
                       help="evaluate every N epochs (0: only after the last epoch)")
    group.add_argument("--psd-threads", type=int, default=None,
                       help="torch CPU threads (torch.set_num_threads); on a shared machine 1 thread "
                            "per process avoids OpenMP oversubscription, which can cost several times")
    group.add_argument("--psd-check-images", type=int, default=100,
                       help="before training, rank 0 reads each CSV's image and caption columns (rows, empty "
                            "captions) and decodes this many of its images, drawn from --seed (0: the header "
                            "and its columns only)")
    group.add_argument("--psd-max-skipped-share", type=float, default=0.01,
                       help="a CSV image that is missing or does not decode is skipped with a warning; stop "
                            "when more than this share of the images read were skipped (0: at the first)")
    group.add_argument("--psd-allow-schedule-change", action="store_true",
                       help="resume even if the schedule flags (alpha, ramps, soft fraction, teacher options) "
                            "differ from the checkpoint's; the run warns with the old and new values and uses "
                            "the new ones. Without it such a resume stops with an error listing them")
    group.add_argument("--psd-progress", action="store_true",
                       help="show a progress bar over the training steps")
    group.add_argument("--psd-quiet", action="store_true",
                       help="console shows warnings only (the log file keeps everything)")
    return parser


def split_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """(PSD flags, the remaining argv for open_clip_train). Checks the PSD flags."""
    psd, rest = psd_parser().parse_known_args(argv)
    _check(psd)
    return psd, rest


def _check(psd: argparse.Namespace) -> None:
    if not 0.0 <= psd.psd_alpha_max <= 1.0:
        raise FlagError(f"--psd-alpha-max must lie in [0, 1], got {psd.psd_alpha_max}")
    _check_ramp("--psd-ramp", psd.psd_ramp_steps, psd.psd_ramp_epochs)
    _check_soft_fraction(psd)
    if psd.psd_teacher_scale is not None and not psd.psd_teacher_scale > 0:
        raise FlagError(f"--psd-teacher-scale must be positive, got {psd.psd_teacher_scale}")
    if not 0.0 <= psd.psd_ema_momentum < 1.0:
        raise FlagError(f"--psd-ema-momentum must lie in [0, 1), got {psd.psd_ema_momentum}")
    if psd.psd_threads is not None and psd.psd_threads < 1:
        raise FlagError(f"--psd-threads must be >= 1, got {psd.psd_threads}")
    if psd.psd_check_images < 0:
        raise FlagError(f"--psd-check-images must be >= 0, got {psd.psd_check_images}")
    if not 0.0 <= psd.psd_max_skipped_share <= 1.0:
        raise FlagError(f"--psd-max-skipped-share must lie in [0, 1], got {psd.psd_max_skipped_share}")
    if psd.psd_eval_every < 0:
        raise FlagError(f"--psd-eval-every must be >= 0, got {psd.psd_eval_every}")


def _check_ramp(flag: str, steps: int | None, epochs: float | None) -> None:
    if steps is not None and epochs is not None:
        raise FlagError(f"give {flag}-steps or {flag}-epochs, not both")
    if steps is not None and steps < 0:
        raise FlagError(f"{flag}-steps must be >= 0, got {steps}")
    if epochs is not None and epochs < 0:
        raise FlagError(f"{flag}-epochs must be >= 0, got {epochs}")


def _check_soft_fraction(psd: argparse.Namespace) -> None:
    if psd.psd_soft_fraction_preset is not None:
        given = [f"--{name.replace('_', '-')}" for name in FRACTION_FLAGS if getattr(psd, name) is not None]
        if given:
            raise FlagError(f"--psd-soft-fraction-preset {psd.psd_soft_fraction_preset} sets the soft fraction; "
                            f"drop {' '.join(given)}")
        return
    for flag, value in (("--psd-soft-fraction", psd.psd_soft_fraction),
                        ("--psd-soft-fraction-start", psd.psd_soft_fraction_start)):
        if value is not None and not 0.0 <= value <= 1.0:
            raise FlagError(f"{flag} must lie in [0, 1], got {value}")
    _check_ramp("--psd-soft-fraction-ramp", psd.psd_soft_fraction_ramp_steps, psd.psd_soft_fraction_ramp_epochs)
    schedule, start = psd.psd_soft_fraction_schedule, psd.psd_soft_fraction_start
    if schedule == "constant" and start is not None:
        raise FlagError("--psd-soft-fraction-schedule constant has no start: drop --psd-soft-fraction-start "
                        "or pick linear, cosine or per_epoch")
    if schedule not in (None, "constant") and start is None:
        raise FlagError(f"--psd-soft-fraction-schedule {schedule} needs --psd-soft-fraction-start "
                        "(the fraction it ramps from)")


def schedule_flags(psd: argparse.Namespace) -> dict:
    """{flag dest: value} of SCHEDULE_FLAGS, plain values only (they go into checkpoints)."""
    return {name: getattr(psd, name) for name in SCHEDULE_FLAGS}


def without_distill_flags(argv: list[str]) -> list[str]:
    """argv less --distill-model/--distill-pretrained and their values: psd_train builds that teacher
    itself (open_clip_train's distillation path refuses --accum-freq > 1)."""
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token in DISTILL_FLAGS:
            skip = True
        elif not token.startswith(tuple(f"{flag}=" for flag in DISTILL_FLAGS)):
            out.append(token)
    return out


def check_combined(psd: argparse.Namespace, args: argparse.Namespace) -> None:
    """Checks that need open_clip_train's parsed args too; resolves the default teacher."""
    distill = args.distill_model is not None
    if psd.psd_teacher is None:
        psd.psd_teacher = "distill" if distill else "self"
    if psd.psd_teacher == "distill" and not (distill and args.distill_pretrained is not None):
        raise FlagError("--psd-teacher distill needs --distill-model and --distill-pretrained")
    if psd.psd_teacher != "distill" and distill:
        raise FlagError(f"--distill-model is given but --psd-teacher is {psd.psd_teacher!r}; "
                        "drop one of them")
    if "coca" in args.model.lower():
        raise FlagError("psd_train replaces the contrastive loss; CoCa models (contrastive + captioning) are "
                        "not supported")
    if args.siglip and psd.psd_teacher_mode != "cross":
        raise FlagError("--psd-teacher-mode within_modality is for the softmax loss; with --siglip the teacher "
                        "scores the same image-text pairs (cross)")
    if not args.siglip and psd.psd_teacher_bias is not None:
        raise FlagError("--psd-teacher-bias is the sigmoid loss's teacher bias: it needs --siglip")
    if args.train_data is None and args.dataset_type != "synthetic":
        raise FlagError("--train-data is required")
