"""What benchmarks/benchmark_psd_loss.py compares: cases, inputs and providers.

A provider maps a case to a function computing one op's loss (a 0-dim tensor,
differentiable in image, text, the scale and, for the sigmoid loss, the bias). The ops
(OPS): "psd_clip_loss", the symmetric softmax (CLIP) loss, and "psd_siglip_loss", the sigmoid
(SigLIP) loss. Like with like, for psd_clip_loss:

    psd-<backend>     psd_kernels.psd_clip_loss(..., backend=<backend>), every backend
                      that psd_kernels.backends.available_backends() says can run here
    torch-chunked     benchmarks/chunked_loss.py: plain PyTorch, row chunks + checkpoint
    openclip-clip     open_clip.ClipLoss (no_teacher) == PSD with alpha = 0
    openclip-distill  open_clip.ClipLoss + DistillClipLoss (teacher "self_scaled"/"separate"):
                      contrastive_loss + distill_loss == 2 x PSD(alpha = 0.5) with the same
                      teacher and teacher scale (checked in tests/test_benchmarks.py); the
                      materialised path users run today for teacher distillation
    inf-cl            Inf-CL's cal_inf_loss both ways (no_teacher, CUDA, D a multiple of
                      256) == PSD with alpha = 0: hard labels only (see InfClProvider)

and for psd_siglip_loss:

    psd-siglip-<backend>  psd_kernels.psd_siglip_loss(..., backend=<backend>), every backend with
                          the sigmoid loss that can run here
    openclip-siglip       open_clip.SigLipLoss (no_teacher) == PSD sigmoid with alpha = 0; open_clip
                          has no sigmoid loss with teacher targets, so a teacher case has no peer

psd-triton variants (all_providers(..., variants=True)): the same kernels with another
column-statistics or backward mode (psd_kernels/backends/triton/launcher.py), timed side by side by
benchmarks/device_check.py.

open_clip: the installed package, else a copy of its loss.py (it needs only torch) at
$PSD_OPEN_CLIP_LOSS or in the repository's .venv, for GPU machines without open_clip.

A case is psd_kernels.tools.roofline.Case, the one the roofline predicts. Its teacher, in the
words of psd_kernels.vocabulary (BENCHMARK_TEACHERS): "no_teacher" (alpha = 0, plain CLIP: every
target one-hot, no teacher read), the teacher cases "self_scaled" (alpha = 0.5, the student's own
embeddings detached, teacher scale s/2: one product per tile) and "separate" (alpha = 0.5, frozen
teacher embeddings of width D', teacher scale 20: two products per tile). The teacher case "self"
(the student at its own scale) is not benchmarked: open_clip's DistillClipLoss has no such peer.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from chunked_loss import DEFAULT_CHUNK_ROWS, chunked_clip_loss
from psd_kernels.tools.roofline import Case
from psd_kernels.vocabulary import DTYPES, NO_TEACHER, OPS, dtype_name

BENCHMARK_TEACHERS = (NO_TEACHER, "self_scaled", "separate")
STUDENT_SCALE = 1.0 / 0.07        # open_clip's initial exp(logit_scale)
STUDENT_BIAS = -10.0              # open_clip's initial logit_bias for --siglip
SEPARATE_TEACHER_SCALE = 20.0


def make_inputs(case: Case, device: torch.device, seed: int = 0) -> dict:
    """Unit-norm embeddings (as CLIP produces them) and scales for `case` on `device`."""
    gen = torch.Generator().manual_seed(seed)
    dtype = DTYPES[case.dtype]

    def unit(rows, cols):
        x = torch.randn(rows, cols, generator=gen, dtype=torch.float32)
        return torch.nn.functional.normalize(x, dim=1).to(device=device, dtype=dtype)

    inputs = {"image": unit(case.batch, case.dim).requires_grad_(),
              "text": unit(case.batch, case.dim).requires_grad_(),
              "scale": torch.tensor(STUDENT_SCALE, device=device).requires_grad_(),
              "bias": torch.tensor(STUDENT_BIAS, device=device).requires_grad_(),
              "teacher_image": None, "teacher_text": None, "teacher_scale": None}
    if case.teacher == "self_scaled":
        inputs["teacher_scale"] = torch.tensor(STUDENT_SCALE / 2, device=device)
    elif case.teacher == "separate":
        inputs["teacher_image"] = unit(case.batch, case.d_teacher)
        inputs["teacher_text"] = unit(case.batch, case.d_teacher)
        inputs["teacher_scale"] = torch.tensor(SEPARATE_TEACHER_SCALE, device=device)
    return inputs


def _teacher_features(case: Case, inputs: dict):
    """The teacher's (image, text, scale) as open_clip's DistillClipLoss takes them."""
    if case.teacher == "self_scaled":
        return inputs["image"].detach(), inputs["text"].detach(), inputs["teacher_scale"]
    return inputs["teacher_image"], inputs["teacher_text"], inputs["teacher_scale"]


@dataclass(frozen=True)
class Provider:
    name: str
    note: str
    op: str = OPS[0]

    def unavailable(self, case: Case, device: torch.device) -> str | None:
        """None when this provider runs `case` on `device`, else why it does not."""
        raise NotImplementedError

    def build(self, case: Case):
        """A function inputs -> 0-dim loss tensor."""
        raise NotImplementedError

    def memory_guess(self, case: Case) -> float:
        """Bytes a first run at this size may need (refined by measurements later)."""
        raise NotImplementedError


def _elem(case: Case) -> int:
    return max(4, torch.finfo(DTYPES[case.dtype]).bits // 8)


@contextlib.contextmanager
def _environment(env: dict):
    """Set `env` for the duration of a call, then restore what was there."""
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass(frozen=True)
class PSDProvider(Provider):
    backend: str = "reference"
    env: tuple = ()   # a backend variant: (name, value) pairs set in the environment around each call

    def unavailable(self, case, device):
        from psd_kernels.backends import available_backends
        return available_backends(device, DTYPES[case.dtype]).get(self.backend, "unknown backend")

    def build(self, case):
        import psd_kernels

        def loss(inputs):
            with _environment(dict(self.env)):
                return psd_kernels.psd_clip_loss(
                    inputs["image"], inputs["text"], inputs["scale"],
                    teacher_image=inputs["teacher_image"], teacher_text=inputs["teacher_text"],
                    teacher_scale=inputs["teacher_scale"], alpha_image=case.alpha, backend=self.backend)
        return loss

    def memory_guess(self, case):
        if self.backend == "reference":            # materialised: a handful of B x B buffers
            return 12.0 * case.batch ** 2 * _elem(case)
        return 8.0 * case.batch * (case.dim + case.d_teacher) * _elem(case) + (64 << 20)


@dataclass(frozen=True)
class ChunkedProvider(Provider):
    def unavailable(self, case, device):
        return None

    def build(self, case):
        def loss(inputs):
            return chunked_clip_loss(
                inputs["image"], inputs["text"], inputs["scale"],
                teacher_image=inputs["teacher_image"], teacher_text=inputs["teacher_text"],
                teacher_scale=inputs["teacher_scale"], alpha_image=case.alpha)
        return loss

    def memory_guess(self, case):
        chunk_logits = min(DEFAULT_CHUNK_ROWS, case.batch) * case.batch
        return 8.0 * chunk_logits * 4 + 8.0 * case.batch * case.dim * _elem(case)


OPEN_CLIP_LOSS_ENV = "PSD_OPEN_CLIP_LOSS"


def _open_clip_loss_file() -> str | None:
    """A copy of open_clip/loss.py: $PSD_OPEN_CLIP_LOSS, else one in the repository's .venv."""
    if os.environ.get(OPEN_CLIP_LOSS_ENV):
        return os.environ[OPEN_CLIP_LOSS_ENV]
    root = Path(__file__).resolve().parents[1]
    found = sorted(root.glob(".venv/lib/python3*/site-packages/open_clip/loss.py"))
    return str(found[0]) if found else None


def _open_clip_missing() -> str | None:
    """Why open_clip cannot be used, or None (found without importing it: the import is slow)."""
    if importlib.util.find_spec("open_clip") is None and _open_clip_loss_file() is None:
        return (f"open_clip is not installed (pip install open_clip_torch, or set {OPEN_CLIP_LOSS_ENV} to a "
                "copy of open_clip/loss.py)")
    return None


def _open_clip_loss():
    """open_clip.loss, or the module loaded from the copy of its loss.py."""
    if importlib.util.find_spec("open_clip") is not None:
        import open_clip.loss
        return open_clip.loss
    spec = importlib.util.spec_from_file_location("open_clip_loss_copy", _open_clip_loss_file())
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class OpenClipProvider(Provider):
    distill: bool = False

    def unavailable(self, case, device):
        if self.distill and case.teacher == NO_TEACHER:
            return "ClipLoss + DistillClipLoss needs a teacher (see openclip-clip)"
        if not self.distill and case.teacher != NO_TEACHER:
            return "ClipLoss has no teacher (see openclip-distill)"
        return _open_clip_missing()

    def build(self, case):
        losses = _open_clip_loss()
        if not self.distill:
            module = losses.ClipLoss()
            return lambda inputs: module(inputs["image"], inputs["text"], inputs["scale"])
        module = losses.DistillClipLoss()

        def loss(inputs):
            t_image, t_text, t_scale = _teacher_features(case, inputs)
            contrastive, distill = module(inputs["image"], inputs["text"], inputs["scale"],
                                          t_image, t_text, t_scale)
            return contrastive + distill
        return loss

    def memory_guess(self, case):
        buffers = 14.0 if self.distill else 8.0
        return buffers * case.batch ** 2 * _elem(case)


@dataclass(frozen=True)
class PSDSiglipProvider(PSDProvider):
    """The sigmoid loss of a psd backend; memory as PSDProvider's (the reference materialises B x B)."""

    def unavailable(self, case, device):
        from psd_kernels.backends import available_backends
        return available_backends(device, DTYPES[case.dtype], "siglip_rows").get(self.backend, "unknown backend")

    def build(self, case):
        import psd_kernels

        def loss(inputs):
            return psd_kernels.psd_siglip_loss(
                inputs["image"], inputs["text"], inputs["scale"], inputs["bias"],
                teacher_image=inputs["teacher_image"], teacher_text=inputs["teacher_text"],
                teacher_scale=inputs["teacher_scale"], alpha_image=case.alpha, backend=self.backend)
        return loss


@dataclass(frozen=True)
class OpenClipSiglipProvider(Provider):
    def unavailable(self, case, device):
        if case.teacher != NO_TEACHER:
            return f"open_clip's SigLipLoss has no teacher targets (compared at {NO_TEACHER})"
        return _open_clip_missing()

    def build(self, case):
        module = _open_clip_loss().SigLipLoss()
        return lambda inputs: module(inputs["image"], inputs["text"], inputs["scale"], inputs["bias"])

    def memory_guess(self, case):
        return 8.0 * case.batch ** 2 * _elem(case)


INF_CL_HEAD_DIM = 256   # cal_inf_loss's default head_dim: it views B x D as B x (D / 256) x 256


def _inf_cl_missing() -> str | None:
    if importlib.util.find_spec("inf_cl") is None:
        return "inf_cl is not installed (pip install inf-cl)"
    return None


@dataclass(frozen=True)
class InfClProvider(Provider):
    """Inf-CL (Cheng et al. 2024; the inf_cl package): tiled Triton kernels for the plain contrastive
    loss with hard labels. cal_inf_loss(q, k) is one direction's mean cross-entropy, so the symmetric
    loss is the mean of both directions == PSD with alpha = 0 (and open_clip's ClipLoss)."""

    def unavailable(self, case, device):
        if case.teacher != NO_TEACHER:
            return f"Inf-CL has hard labels only: no teacher targets (compared at {NO_TEACHER})"
        if case.dim % INF_CL_HEAD_DIM:
            return f"Inf-CL needs D to be a multiple of its head_dim {INF_CL_HEAD_DIM}, got D = {case.dim}"
        if device.type != "cuda":
            return f"Inf-CL's Triton kernels need a CUDA device, got {device.type}"
        return _inf_cl_missing()

    def build(self, case):
        from inf_cl import cal_inf_loss

        def loss(inputs):
            image, text, scale = inputs["image"], inputs["text"], inputs["scale"]
            # The scale is folded into the queries: cal_inf_loss(scale=...) all-reduces the scale's
            # gradient (its GradientGather), which needs an initialised torch.distributed.
            return 0.5 * (cal_inf_loss(scale * image, text) + cal_inf_loss(scale * text, image))
        return loss

    def memory_guess(self, case):
        return 8.0 * case.batch * case.dim * 4 + (64 << 20)   # fp32 copies and gradients of both sides


# Variants of psd-triton (psd_kernels/backends/triton/launcher.py): the default is one forward sweep with
# per-group column partials and a backward kernel per side.
TRITON_VARIANTS = {"psd-triton [second pass]": {"PSD_TRITON_COLUMN_STATS": "second_pass"}}


def all_providers(device: torch.device, dtype: torch.dtype = torch.float32,
                  variants: bool = False) -> tuple[list, dict]:
    """(providers, {name: reason}) for this device, every op's (Provider.op): every psd backend that
    can run (with the psd-triton variants when `variants`), then the peers."""
    from psd_kernels.backends import BACKENDS, available_backends
    status = available_backends(device, dtype)
    providers, skipped = [], {}
    for backend in BACKENDS:
        name = f"psd-{backend}"
        if status.get(backend) is None:
            providers.append(PSDProvider(name, f"psd_kernels.psd_clip_loss(backend={backend!r})",
                                         backend=backend))
            if backend == "triton" and variants:
                providers += [PSDProvider(variant, f"psd-triton with {env}", backend=backend,
                                          env=tuple(env.items())) for variant, env in TRITON_VARIANTS.items()]
        else:
            skipped[name] = status[backend]
    providers.append(ChunkedProvider("torch-chunked", "plain PyTorch, row chunks + checkpoint, "
                                     "never holds B x B (benchmarks/chunked_loss.py)"))
    missing = _open_clip_missing()
    if missing is None:
        providers.append(OpenClipProvider("openclip-clip", "open_clip ClipLoss == PSD alpha=0"))
        providers.append(OpenClipProvider(
            "openclip-distill", "open_clip ClipLoss + DistillClipLoss (contrastive + distill) == "
            "2 x PSD(alpha=0.5) with the same teacher; materialised", distill=True))
    else:
        skipped["openclip-clip"] = skipped["openclip-distill"] = missing
    inf_cl = InfClProvider("inf-cl", "Inf-CL cal_inf_loss both ways == PSD alpha=0; hard labels only (no "
                           "teacher targets); upcasts to fp32 and multiplies in TF32; D a multiple of 256")
    missing = inf_cl.unavailable(Case(1, INF_CL_HEAD_DIM), device)
    if missing is None:
        providers.append(inf_cl)
    else:
        skipped["inf-cl"] = missing
    siglip = OPS[1]
    for backend in BACKENDS:
        provider = PSDSiglipProvider(f"psd-siglip-{backend}", f"psd_kernels.psd_siglip_loss(backend={backend!r})",
                                     siglip, backend=backend)
        reason = provider.unavailable(Case(1, 16, dtype=dtype_name(dtype)), device)
        if reason is None:
            providers.append(provider)
        else:
            skipped[provider.name] = reason
    if _open_clip_missing() is None:
        providers.append(OpenClipSiglipProvider("openclip-siglip", "open_clip SigLipLoss == PSD sigmoid alpha=0",
                                                siglip))
    else:
        skipped["openclip-siglip"] = _open_clip_missing()
    return providers, skipped
