"""psd_kernels: fused progressive self-distillation (PSD) contrastive loss for CLIP.

    from psd_kernels import PSDLoss, psd_loss, psd_clip_loss                 # the softmax (CLIP) loss
    from psd_kernels import PSDSigLipLoss, psd_siglip_loss                   # the sigmoid (SigLIP) loss

The math, gradients and fused algorithm: docs/ (docs/README.md is the index).
"""
from psd_kernels.assembly import TEACHER_MODES
from psd_kernels.backends import BACKENDS, BackendUnavailable, available_backends
from psd_kernels.distributed import psd_clip_loss_distributed, psd_siglip_loss_distributed
from psd_kernels.functional import psd_clip_loss, psd_loss, psd_siglip_loss
from psd_kernels.loss import PSDLoss
from psd_kernels.schedule import AlphaSchedule, FractionSchedule, SoftSubset
from psd_kernels.siglip_loss import PSDSigLipLoss

__all__ = ["BACKENDS", "TEACHER_MODES", "AlphaSchedule", "BackendUnavailable", "FractionSchedule", "PSDLoss",
           "PSDSigLipLoss", "SoftSubset", "available_backends", "psd_clip_loss", "psd_clip_loss_distributed",
           "psd_loss", "psd_siglip_loss", "psd_siglip_loss_distributed"]
