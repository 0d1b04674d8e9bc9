"""Input checks and normalisation for the public loss functions.

Every error names the argument and what was expected. Shape, dtype and device checks
are free (metadata only) and always run. Value checks on tensors (scale > 0 and finite,
alpha in [0, 1], labels in range) and the one fact the assembly needs from the values
(does any row have alpha > 0; if none does, every target is one-hot and the teacher is
unused) need a few numbers from the device: each scale, alpha's min and max, the labels'
min and max. They are gathered into one small tensor and read back together (host_read):
at most ONE host synchronisation per call, none when every checked value is a Python
number. They are skipped while torch.compile traces (soft rows are then assumed). `check_finite=True` also scans
the embeddings for NaN/Inf: one extra full read of every embedding tensor and one more
synchronisation, so it is off by default.

Each public call validates each argument exactly once: one_direction() for psd_loss,
symmetric() for psd_clip_loss, the distributed loss and PSDLoss, siglip() for the sigmoid loss.
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


def host_read(t: torch.Tensor) -> list:
    """The values of a small device tensor as Python floats: the one host synchronisation."""
    return t.tolist()


class ValueChecks:
    """Small values of device tensors (a scale, alpha's min and max, ...), read back together.

    want(t): queue the elements of a small tensor; returns the slice of read() they come back in.
    check(ok, error): after the read, ok(values) -> bool; error(values) builds the exception.
    read() returns every queued value as a float, raising the first failed check's error.
    While torch.compile traces nothing is read: the checks are skipped and read() returns None.
    """

    def __init__(self):
        self._parts, self._checks, self._size = [], [], 0

    def want(self, t: torch.Tensor) -> slice:
        t = t.detach().reshape(-1)
        self._parts.append(t)
        self._size += t.numel()
        return slice(self._size - t.numel(), self._size)

    def check(self, ok, error) -> None:
        self._checks.append((ok, error))

    def read(self):
        if not self._parts or _compiling():
            return None
        values = host_read(torch.cat([p.to(torch.float64) for p in self._parts]))
        for ok, error in self._checks:
            if not ok(values):
                raise error(values)
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


def _scalar(name: str, value, like: torch.Tensor, ct: torch.dtype, checks: ValueChecks, ok, expected: str):
    """A 0-dim tensor on `like`'s device from a float (a constant) or a one-element floating tensor
    (read back with the call's other value checks), whose value passes ok(v): else ValueError naming
    `expected`."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar (one element), got shape {tuple(value.shape)}")
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {value.dtype}")
        if value.device != like.device:
            raise ValueError(f"{name} is on {value.device} but the embeddings are on {like.device}")
        scalar = value.reshape(())
        at = checks.want(scalar)
        checks.check(lambda v: ok(v[at][0]), lambda v: ValueError(f"{name} must be {expected}, got {v[at][0]}"))
        return scalar
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float or a scalar tensor, got {type(value).__name__}")
    if not ok(value):
        raise ValueError(f"{name} must be {expected}, got {value}")
    return torch.tensor(float(value), dtype=ct, device=like.device)


def _scale(name: str, value, like: torch.Tensor, ct: torch.dtype, checks: ValueChecks) -> torch.Tensor:
    """A positive, finite 0-dim scale on `like`'s device (a float becomes a constant tensor)."""
    return _scalar(name, value, like, ct, checks, lambda v: math.isfinite(v) and v > 0,
                   "positive and finite (the exponentiated logit scale)")


def _alpha(name: str, value, rows: int, like: torch.Tensor, ct: torch.dtype, checks: ValueChecks):
    """(alpha as a (rows,) tensor of the accumulation dtype, whether some entry is > 0).

    The second item is a bool when known on the host, else the slice of the checks' read that
    holds (min, max) of alpha. `value` may also be a function (rows, embeddings) -> alpha, called
    once the embeddings are validated (PSDLoss draws its soft subset that way).
    """
    if callable(value):
        value = value(rows, like)
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
        at = checks.want(torch.stack(torch.aminmax(alpha)))  # NaN propagates, and fails both bounds
        checks.check(lambda v: v[at][0] >= 0 and v[at][1] <= 1, lambda v: ValueError(
            f"{name} must lie in [0, 1] (NaN is not allowed), got values in [{v[at][0]}, {v[at][1]}]"))
        return alpha, at
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
    at = checks.want(torch.stack(torch.aminmax(labels)))
    checks.check(lambda v: v[at][0] >= 0 and v[at][1] < cols, lambda v: ValueError(
        f"labels must lie in [0, {cols}) (column indices of y), got values in [{int(v[at][0])}, {int(v[at][1])}]"))
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


def _any_soft(values, *alpha_positive) -> bool:
    """Whether some row has alpha > 0 (a soft target), from host facts or the read (min, max) of
    alpha; while compiling (nothing read) soft rows are assumed."""
    for known in alpha_positive:
        if known is True:
            return True
        if isinstance(known, slice):
            if values is None or values[known][1] > 0:
                return True
    return False


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
    values = checks.read()
    return dict(x=x, y=y, scale=scale, alpha=alpha, labels=labels, teacher_x=teacher_x, teacher_y=teacher_y,
                teacher_scale=teacher_scale, reduction=reduction, soft_rows=_any_soft(values, positive))


def _pairs(image, text, logit_scale, teacher_image, teacher_text, teacher_scale, alpha_image, alpha_text,
           reduction, check_finite, checks: ValueChecks):
    """The checks of every loss on pairs (row i of image and of text): (args, alpha facts, ct)."""
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
    args = dict(image=image, text=text, scale=scale, alpha_image=alpha_image, alpha_text=alpha_text,
                teacher_image=teacher_image, teacher_text=teacher_text, teacher_scale=teacher_scale,
                reduction=reduction)
    return args, (image_positive, text_positive), ct


def symmetric(image, text, logit_scale, teacher_image, teacher_text, teacher_scale, alpha_image,
              alpha_text, reduction, check_finite) -> dict:
    """Validate the symmetric loss's arguments (pairs: row i of image and of text) into the
    backend contract's form, plus `soft_rows` (some row of either direction has alpha > 0)."""
    checks = ValueChecks()
    args, positive, _ = _pairs(image, text, logit_scale, teacher_image, teacher_text, teacher_scale, alpha_image,
                               alpha_text, reduction, check_finite, checks)
    return dict(args, soft_rows=_any_soft(checks.read(), *positive))


def _bias(name: str, value, like: torch.Tensor, ct: torch.dtype, checks: ValueChecks) -> torch.Tensor:
    """A finite 0-dim bias on `like`'s device (a float becomes a constant tensor)."""
    return _scalar(name, value, like, ct, checks, math.isfinite, "finite")


def siglip(image, text, logit_scale, logit_bias, teacher_image, teacher_text, teacher_scale, teacher_bias,
           alpha_image, alpha_text, reduction, check_finite) -> dict:
    """Validate the sigmoid (SigLIP) loss's arguments into the backend contract's form (the pairs'
    checks, plus the bias: None becomes a constant 0, the teacher's stays None for the student's,
    detached) and `soft_rows` (some image or text has alpha > 0)."""
    checks = ValueChecks()
    args, positive, ct = _pairs(image, text, logit_scale, teacher_image, teacher_text, teacher_scale,
                                alpha_image, alpha_text, reduction, check_finite, checks)
    like = args["image"]
    args["bias"] = _bias("logit_bias", 0.0 if logit_bias is None else logit_bias, like, ct, checks)
    if teacher_bias is not None:
        teacher_bias = _bias("teacher_bias", teacher_bias, like, ct, checks).detach()
    args["teacher_bias"] = teacher_bias
    return dict(args, soft_rows=_any_soft(checks.read(), *positive))
