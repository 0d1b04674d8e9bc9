"""What benchmarks/benchmark_psd_loss.py compares: cases, inputs and providers.

A provider maps a case to a function computing the symmetric contrastive loss
(a 0-dim tensor, differentiable in image, text and the scale). Like with like:

    psd-<backend>     psd_kernels.psd_clip_loss(..., backend=<backend>), every backend
                      that psd_kernels.backends.available_backends() says can run here
    torch-chunked     benchmarks/chunked_loss.py: plain PyTorch, row chunks + checkpoint
    openclip-clip     open_clip.ClipLoss (teacher "none") == PSD with alpha = 0
    openclip-distill  open_clip.ClipLoss + DistillClipLoss (teacher "self"/"separate"):
                      contrastive_loss + distill_loss == 2 x PSD(alpha = 0.5) with the same
                      teacher and teacher scale (checked in tests/test_benchmarks.py); the
                      materialised path users run today for teacher distillation

Teacher cases: "none" (alpha = 0, plain CLIP), "self" (alpha = 0.5, the student's own
embeddings detached, teacher scale s/2: one product per tile), "separate" (alpha = 0.5,
frozen teacher embeddings of width D', teacher scale 20: two products per tile).
"""
from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass

import torch

from chunked_loss import DEFAULT_CHUNK_ROWS, chunked_clip_loss

TEACHERS = ("none", "self", "separate")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}
STUDENT_SCALE = 1.0 / 0.07        # open_clip's initial exp(logit_scale)
SEPARATE_TEACHER_SCALE = 20.0


@dataclass(frozen=True)
class Case:
    """One benchmark point: the symmetric loss on B x D embeddings."""
    batch: int
    dim: int
    teacher: str = "none"
    dtype: str = "float32"
    teacher_dim: int = 0          # D' of a separate teacher; 0 means D

    def __post_init__(self):
        if self.teacher not in TEACHERS:
            raise ValueError(f"teacher must be one of {TEACHERS}, got {self.teacher!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        if self.batch < 1 or self.dim < 1:
            raise ValueError(f"batch and dim must be >= 1, got {self.batch} and {self.dim}")

    @property
    def alpha(self) -> float:
        return 0.0 if self.teacher == "none" else 0.5

    @property
    def d_teacher(self) -> int:
        return (self.teacher_dim or self.dim) if self.teacher == "separate" else 0

    def config(self) -> dict:
        """The case's identity without the batch size (the x axis)."""
        out = asdict(self)
        del out["batch"]
        out["teacher_dim"] = self.d_teacher
        out["alpha"] = self.alpha
        return out

    def flops(self, mode: str) -> float:
        """Useful FLOPs, recomputation not counted (FLOP_FORMULA)."""
        b2 = float(self.batch) ** 2
        forward = 2 * b2 * self.dim + 2 * b2 * self.d_teacher
        backward = 4 * b2 * self.dim
        return {"forward": forward, "backward": backward, "full": forward + backward}[mode]


FLOP_FORMULA = ("useful FLOPs, recomputation not counted: forward = 2*B^2*D (one student product "
                "shared by both directions) + 2*B^2*D' (separate teacher only); backward = 4*B^2*D "
                "(dL/dimage and dL/dtext); full = 6*B^2*D + 2*B^2*D'")


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
              "teacher_image": None, "teacher_text": None, "teacher_scale": None}
    if case.teacher == "self":
        inputs["teacher_scale"] = torch.tensor(STUDENT_SCALE / 2, device=device)
    elif case.teacher == "separate":
        inputs["teacher_image"] = unit(case.batch, case.d_teacher)
        inputs["teacher_text"] = unit(case.batch, case.d_teacher)
        inputs["teacher_scale"] = torch.tensor(SEPARATE_TEACHER_SCALE, device=device)
    return inputs


def _teacher_features(case: Case, inputs: dict):
    """The teacher's (image, text, scale) as open_clip's DistillClipLoss takes them."""
    if case.teacher == "self":
        return inputs["image"].detach(), inputs["text"].detach(), inputs["teacher_scale"]
    return inputs["teacher_image"], inputs["teacher_text"], inputs["teacher_scale"]


@dataclass(frozen=True)
class Provider:
    name: str
    note: str

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


@dataclass(frozen=True)
class PSDProvider(Provider):
    backend: str = "reference"

    def unavailable(self, case, device):
        from psd_kernels.backends import available_backends
        return available_backends(device, DTYPES[case.dtype]).get(self.backend, "unknown backend")

    def build(self, case):
        import psd_kernels

        def loss(inputs):
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


def _open_clip_missing() -> str | None:
    """Why open_clip cannot be used, or None (found without importing it: the import is slow)."""
    if importlib.util.find_spec("open_clip") is None:
        return "open_clip is not installed (pip install open_clip_torch)"
    return None


@dataclass(frozen=True)
class OpenClipProvider(Provider):
    distill: bool = False

    def unavailable(self, case, device):
        if self.distill and case.teacher == "none":
            return "ClipLoss + DistillClipLoss needs a teacher (see openclip-clip)"
        if not self.distill and case.teacher != "none":
            return "ClipLoss has no teacher (see openclip-distill)"
        return _open_clip_missing()

    def build(self, case):
        from open_clip.loss import ClipLoss, DistillClipLoss
        if not self.distill:
            module = ClipLoss()
            return lambda inputs: module(inputs["image"], inputs["text"], inputs["scale"])
        module = DistillClipLoss()

        def loss(inputs):
            t_image, t_text, t_scale = _teacher_features(case, inputs)
            contrastive, distill = module(inputs["image"], inputs["text"], inputs["scale"],
                                          t_image, t_text, t_scale)
            return contrastive + distill
        return loss

    def memory_guess(self, case):
        buffers = 14.0 if self.distill else 8.0
        return buffers * case.batch ** 2 * _elem(case)


def all_providers(device: torch.device, dtype: torch.dtype = torch.float32) -> tuple[list, dict]:
    """(providers, {name: reason}) for this device: every psd backend that can run, then the peers."""
    from psd_kernels.backends import BACKENDS, available_backends
    status = available_backends(device, dtype)
    providers, skipped = [], {}
    for backend in BACKENDS:
        name = f"psd-{backend}"
        if status.get(backend) is None:
            providers.append(PSDProvider(name, f"psd_kernels.psd_clip_loss(backend={backend!r})",
                                         backend=backend))
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
    return providers, skipped
