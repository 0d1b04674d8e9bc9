"""The words for each axis of a loss call, defined once and imported everywhere (docs/api.md).

    teacher case   how a kernel gets the teacher's logits T (psd_kernels.backends):
                   self          the student at its own scale: T = S, no teacher statistics
                   self_scaled   the student at another scale s~: T = (s~ / s) S, the same dot products
                   separate      separate teacher embeddings: T = s~ x~ y~^T, a second product
    no_teacher     alpha = 0 on every row: every target is one-hot (plain CLIP), no teacher is read
    teacher mode   which teacher matrix the soft targets come from: cross (the teacher's image-text
                   matrix seen from both sides) or within_modality (caption-caption targets for
                   image rows, image-image targets for caption rows)
    dtype          an input dtype, named as torch names it: float32, bfloat16, float16, float64
    op             a loss, named by its public function: psd_clip_loss (the symmetric softmax
                   loss; psd_loss is its one direction) or psd_siglip_loss (the sigmoid loss)

Where a trainer's teacher comes from (self, ema, prev_epoch, distill) is psd_train's axis:
psd_train.args.TEACHER_SOURCES.
"""
import torch

TEACHER_CASES = ("self", "self_scaled", "separate")
NO_TEACHER = "no_teacher"
TEACHER_MODES = ("cross", "within_modality")
OPS = ("psd_clip_loss", "psd_siglip_loss")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def dtype_name(dtype: torch.dtype) -> str:
    """The DTYPES key of a torch dtype: torch.bfloat16 -> "bfloat16"."""
    return str(dtype).removeprefix("torch.")
