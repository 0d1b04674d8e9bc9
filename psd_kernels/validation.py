"""Input checks and normalisation for the public loss functions.

Every error names the argument and what was expected. Shape, dtype and device checks
are free (metadata only) and always run. Value checks on tensors (scale > 0 and finite,
alpha in [0, 1], labels in range) and the one fact the assembly needs from the values
(does any row have alpha > 0; if none does, every target is one-hot and the teacher is
unused) are computed on the
tensors' device and read back together: at most ONE host synchronisation per call
(none when every checked value is a Python number). They are skipped while
torch.compile traces (soft rows are then assumed). `check_finite=True` also scans
the embeddings for NaN/Inf: one extra full read of every embedding tensor and one more
synchronisation, so it is off by default.

Each public call validates each argument exactly once: one_direction() for psd_loss,
symmetric() for psd_clip_loss, the distributed loss and PSDLoss.
"""
from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
REDUCTIONS = ("mean", "sum", "none")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of every backend: float64 stays float64, everything else runs in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _compiling() -> bool:
    return torch.compiler.is_compiling()


class ValueChecks:
    """Boolean facts about device tensors, read back to the host together (one synchronisation).

    check(ok, error): `ok` a 0-dim bool tensor; `error()` builds the exception raised when it is False.
    fact(value): a 0-dim bool tensor whose value the caller wants; returns its index in read().
    """

    def __init__(self):
        self._flags, self._errors = [], []

    def check(self, ok: torch.Tensor, error) -> None:
        self._flags.append(ok)
        self._errors.append(error)

    def fact(self, value: torch.Tensor) -> int:
        self._flags.append(value)
        self._errors.append(None)
        return len(self._flags) - 1

    def read(self) -> list:
        """Every flag as a bool (facts default to True while compiling); raise the first failed check."""
        if not self._flags or _compiling():
            return [True] * len(self._flags)
        bits = torch.stack([f.reshape(()) for f in self._flags]).to(torch.int64)
        weights = torch.ones_like(bits) << torch.arange(len(self._flags), device=bits.device)
        code = int((bits * weights).sum())  # the one host synchronisation
        values = [bool(code >> k & 1) for k in range(len(self._flags))]
        for value, error in zip(values, self._errors):
            if error is not None and not value:
                raise error()
        return values


def matrix(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D (rows x embedding dim), got shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(t.shape)}): need at least one row")
    if t.shape[1] == 0:
        raise ValueError(f"{name} has embedding dim 0 (shape {tuple(t.shape)})")
    return t


def _same_device_dtype(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; move them to one device")
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has {ref.dtype}; cast them to one dtype")


def _scale(name: str, value, like: torch.Tensor, ct: torch.dtype, checks: ValueChecks) -> torch.Tensor:
    """A positive, finite 0-dim scale on `like`'s device (a float becomes a constant tensor)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar (one element), got shape {tuple(value.shape)}")
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {value.dtype}")
        if value.device != like.device:
            raise ValueError(f"{name} is on {value.device} but the embeddings are on {like.device}")
        scale = value.reshape(())
        v = scale.detach()
        checks.check(torch.isfinite(v) & (v > 0), lambda: ValueError(
            f"{name} must be positive and finite (the exponentiated logit scale), got {float(v)}"))
        return scale
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float or a scalar tensor, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be positive and finite (the exponentiated logit scale), got {value}")
    return torch.tensor(float(value), dtype=ct, device=like.device)


def _alpha(name: str, value, rows: int, like: torch.Tensor, ct: torch.dtype, checks: ValueChecks):
    """(alpha as a (rows,) tensor of the accumulation dtype, whether some entry may be > 0).

    The second item is a bool when known on the host, else a 0-dim bool tensor for checks.fact.
    """
    if isinstance(value, torch.Tensor):
        if value.device != like.device:
            raise ValueError(f"{name} is on {value.device} but the embeddings are on {like.device}")
        if value.dim() == 0 or tuple(value.shape) == (1,):
            alpha = value.reshape(()).to(ct).expand(rows)
        elif tuple(value.shape) == (rows,):
            alpha = value.to(ct)
        else:
            raise ValueError(f"{name} must be a scalar or have shape ({rows},) (one per row), "
                             f"got shape {tuple(value.shape)}")
        alpha = alpha.detach()
        checks.check(((alpha >= 0) & (alpha <= 1)).all(), lambda: ValueError(
            f"{name} must lie in [0, 1] (NaN is not allowed), got values in "
            f"[{float(alpha.min())}, {float(alpha.max())}]"))
        return alpha, (alpha > 0).any()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float or a tensor, got {type(value).__name__}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return torch.full((rows,), float(value), dtype=ct, device=like.device), value > 0


def _labels(labels, offset: int, rows: int, cols: int, like: torch.Tensor, checks: ValueChecks) -> torch.Tensor:
    """Positive column per row: explicit labels, or c_i = i + offset."""
    if labels is None:
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise TypeError(f"offset must be an int, got {type(offset).__name__}")
        if offset < 0 or offset + rows > cols:
            raise ValueError(f"offset={offset} puts positives c_i = i + offset outside the {cols} columns "
                             f"for {rows} rows: need 0 <= offset <= {cols - rows}")
        return torch.arange(offset, offset + rows, device=like.device)
    if offset != 0:
        raise ValueError("give either labels or offset, not both")
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor of ints, got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    if labels.shape != (rows,):
        raise ValueError(f"labels must have shape ({rows},) (one positive column per row), got {tuple(labels.shape)}")
    if labels.device != like.device:
        raise ValueError(f"labels is on {labels.device} but the embeddings are on {like.device}")
    checks.check(((labels >= 0) & (labels < cols)).all(), lambda: ValueError(
        f"labels must lie in [0, {cols}) (column indices of y), got values in "
        f"[{int(labels.min())}, {int(labels.max())}]"))
    return labels.long()


def _finite(name: str, t: torch.Tensor) -> None:
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf")


def teacher_pair(teacher_x, teacher_y, x, y, names=("x", "y", "teacher_x", "teacher_y")):
    """Check teacher embeddings against the student's rows and columns; return them detached."""
    nx, ny, ntx, nty = names
    if (teacher_x is None) != (teacher_y is None):
        raise ValueError(f"give both {ntx} and {nty} (a separate teacher) or neither (the student itself)")
    if teacher_x is None:
        return None, None
    teacher_x, teacher_y = matrix(ntx, teacher_x), matrix(nty, teacher_y)
    _same_device_dtype(ntx, teacher_x, nx, x)
    _same_device_dtype(nty, teacher_y, nx, x)
    rows, cols = x.shape[0], y.shape[0]
    if teacher_x.shape[0] != rows or teacher_y.shape[0] != cols or teacher_x.shape[1] != teacher_y.shape[1]:
        raise ValueError(f"teacher shapes must be ({rows}, D') and ({cols}, D') to match {nx} and {ny}: "
                         f"got {ntx} {tuple(teacher_x.shape)} and {nty} {tuple(teacher_y.shape)}")
    return teacher_x.detach(), teacher_y.detach()


def _embeddings(x, y, teacher_x, teacher_y, logit_scale, teacher_scale, reduction, check_finite, names,
                checks: ValueChecks):
    """The checks both call shapes share: student and teacher matrices, scales, reduction."""
    nx, ny, ntx, nty = names
    x, y = matrix(nx, x), matrix(ny, y)
    _same_device_dtype(ny, y, nx, x)
    if y.shape[1] != x.shape[1]:
        raise ValueError(f"{nx} and {ny} must share the embedding dim: {nx} is {tuple(x.shape)}, {ny} is {tuple(y.shape)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    ct = compute_dtype(x.dtype)
    teacher_x, teacher_y = teacher_pair(teacher_x, teacher_y, x, y, names=names)
    scale = _scale("logit_scale", logit_scale, x, ct, checks)
    if teacher_scale is not None:
        teacher_scale = _scale("teacher_scale", teacher_scale, x, ct, checks).detach()
    if check_finite:
        for name, t in zip(names, (x, y, teacher_x, teacher_y)):
            if t is not None:
                _finite(name, t)
    return x, y, teacher_x, teacher_y, scale, teacher_scale, ct


def _any_soft(checks: ValueChecks, *alpha_positive) -> int | bool:
    """Whether some row has alpha > 0 (a soft target): a host bool, or the index of a fact to read.
    Adds no synchronisation of its own: a tensor alpha is range-checked in the same read."""
    if any(a is True for a in alpha_positive):
        return True
    device_facts = [a for a in alpha_positive if isinstance(a, torch.Tensor)]
    if not device_facts:
        return False
    return checks.fact(torch.stack(device_facts).any())


def _resolve(values: list, fact) -> bool:
    return fact if isinstance(fact, bool) else values[fact]


def one_direction(x, y, logit_scale, teacher_x, teacher_y, teacher_scale, alpha, labels, offset,
                  reduction, check_finite) -> dict:
    """Validate psd_loss's arguments: the backend contract's arguments plus `soft_rows` (some alpha > 0)."""
    checks = ValueChecks()
    x, y, teacher_x, teacher_y, scale, teacher_scale, ct = _embeddings(
        x, y, teacher_x, teacher_y, logit_scale, teacher_scale, reduction, check_finite,
        ("x", "y", "teacher_x", "teacher_y"), checks)
    rows, cols = x.shape[0], y.shape[0]
    alpha, positive = _alpha("alpha", alpha, rows, x, ct, checks)
    labels = _labels(labels, offset, rows, cols, x, checks)
    soft = _any_soft(checks, positive)
    values = checks.read()
    return dict(x=x, y=y, scale=scale, alpha=alpha, labels=labels, teacher_x=teacher_x, teacher_y=teacher_y,
                teacher_scale=teacher_scale, reduction=reduction, soft_rows=_resolve(values, soft))


def symmetric(image, text, logit_scale, teacher_image, teacher_text, teacher_scale, alpha_image,
              alpha_text, reduction, check_finite) -> dict:
    """Validate the symmetric loss's arguments (pairs: row i of image and of text) into the
    backend contract's form, plus `soft_rows` (some row of either direction has alpha > 0)."""
    checks = ValueChecks()
    image, text, teacher_image, teacher_text, scale, teacher_scale, ct = _embeddings(
        image, text, teacher_image, teacher_text, logit_scale, teacher_scale, reduction, check_finite,
        ("image_features", "text_features", "teacher_image", "teacher_text"), checks)
    rows = image.shape[0]
    if text.shape[0] != rows:
        raise ValueError(f"image_features and text_features must have the same number of rows (pairs), "
                         f"got {rows} and {text.shape[0]}")
    alpha_image, image_positive = _alpha("alpha_image", alpha_image, rows, image, ct, checks)
    if alpha_text is None:
        alpha_text, text_positive = alpha_image, image_positive
    else:
        alpha_text, text_positive = _alpha("alpha_text", alpha_text, rows, text, ct, checks)
    soft = _any_soft(checks, image_positive, text_positive)
    values = checks.read()
    return dict(image=image, text=text, scale=scale, alpha_image=alpha_image, alpha_text=alpha_text,
                teacher_image=teacher_image, teacher_text=teacher_text, teacher_scale=teacher_scale,
                reduction=reduction, soft_rows=_resolve(values, soft))
