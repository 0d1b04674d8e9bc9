"""The Triton kernel launches the public API makes, recorded without a GPU.

    launches = record(arch=90, sms=132, calls_=calls("bfloat16"))

Each Call runs psd_kernels.psd_loss / psd_clip_loss / psd_siglip_loss (backend="triton") and its backward on
meta tensors: the host code of psd_kernels.backends.triton.launcher runs unchanged (shapes, strides, chunks,
grids, column splits), while the launches themselves are intercepted. A meta tensor's
data_ptr() is its byte offset, so a launch's pointers keep the alignment they have on a GPU
(the CUDA caching allocator returns blocks aligned to 512 bytes); its integer arguments are
the real ones. During a recording the device looks like sm_<arch> with `sms` SMs to the host
code and to the prune functions.

Both reductions that launch different kernels are recorded: "none", and "mean", which takes a
backend's fused weighted path where it has one (psd_kernels.backends.triton.launcher.clip_weighted_loss: for
the symmetric loss with a teacher of statistics of its own, the one forward sweep with column
partials and the gradient tiles with the cross terms, CROSS, formed in the forward). "sum"
launches exactly what "mean" does (only the host-side weight differs), so it is not recorded.
Products whose output tiles are too few for the SMs split K over a third grid axis; the host
decides that from the recorded device's SM count, so the recording sees it. The symmetric calls
are recorded once more under PSD_TRITON_COLUMN_STATS=second_pass (the launcher's switch to a second
forward sweep instead of column partials; the variable is restored after each call): a self
teacher then launches the forward with LABELS_DIAG=1, COL_STATS=0, TEACHER=0, which no other call
does. Launches that several calls make specialise identically; psd_kernels.tools.compile_check
compiles each specialisation once.

A Call names its teacher by the kernel's teacher case and the teacher mode
(psd_kernels.vocabulary): the within-modality call passes no teacher, so the assembly gives each
direction the student's own embeddings of the other side as a separate teacher (D' = D).

For an autotuned kernel every config its prune function keeps is recorded (the autotuner
could pick any of them). Each launch is then specialised with Triton's own binder for the
target, as JITFunction.run does before it compiles: ints that are multiples of 16 and pointers
aligned to 16 bytes get tt.divisibility = 16, ints equal to 1 become constants. The result,
a Launch, holds exactly what triton.compile receives, plus the number of programs in the grid.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import math
import os

import torch

from psd_kernels.backends.triton.launcher import COLUMN_STATS
from psd_kernels.vocabulary import DTYPES, OPS, TEACHER_CASES, TEACHER_MODES

BATCHES = (1000, 4097, 32768, 65536)
DIMS = (64, 100, 256, 500, 512, 768, 1024, 1152, 1280, 1536)
# The teacher case of a within-modality call (module docstring).
WITHIN_MODALITY_CASE = "separate"


@dataclasses.dataclass(frozen=True)
class Call:
    """One call of the public API and its backward, as recorded: the symmetric loss (clip) or one
    direction, B rows and columns."""

    dtype: str                   # a psd_kernels.vocabulary.DTYPES name the Triton kernels take
    b: int
    d: int
    teacher: str                 # the kernel's teacher case: self, self_scaled or separate (width dt)
    dt: int = 0
    symmetric: bool = True
    offset: bool = False         # inputs that start 2 bytes into an allocation (not 16-byte aligned)
    reduction: str = "none"      # "none" (per-row upstream gradients) or "mean" (the fused path; "sum" launches the same)
    column_stats: str = COLUMN_STATS[0]  # PSD_TRITON_COLUMN_STATS during the call
    mode: str = TEACHER_MODES[0]  # the teacher mode: cross, or within_modality (teacher "separate", dt = d)
    op: str = OPS[0]             # psd_clip_loss (symmetric or one direction) or psd_siglip_loss

    def __str__(self):
        width = f"D={self.d}" + (f" D'={self.dt}" if self.teacher == "separate" else "")
        kind = "siglip" if self.op == OPS[1] else "clip" if self.symmetric else "one-direction"
        return (f"{kind} B={self.b} {width} {self.teacher} {self.dtype}"
                + (f" {self.mode}" if self.mode != TEACHER_MODES[0] else "")
                + (" offset" if self.offset else "") + (f" {self.reduction}" if self.reduction != "none" else "")
                + (f" COLUMN_STATS={self.column_stats}" if self.column_stats != COLUMN_STATS[0] else ""))


@dataclasses.dataclass(frozen=True)
class Launch:
    """One specialised kernel instance as triton.compile receives it, and its grid."""

    source: str                  # "module:name" of the @triton.jit function
    signature: tuple             # ((argument name, Triton type or "constexpr"), ...)
    constexprs: tuple            # ((argument name, value), ...): constexprs, ints specialised to 1
    attrs: tuple                 # argument names with tt.divisibility = 16
    options: tuple               # sorted (name, value) of the backend options (num_warps, num_stages, ...)
    programs: int = dataclasses.field(compare=False, default=0)

    def key(self) -> tuple:
        """What decides the compiled code: equal keys compile to the same kernel."""
        return (self.source, self.signature, self.constexprs, self.attrs, self.options)

    @property
    def fn(self):
        """The JIT function (resolved by name, so a Launch pickles into worker processes)."""
        from triton.runtime.jit import JITFunction
        module, name = self.source.split(":")
        obj = getattr(importlib.import_module(module), name)
        while not isinstance(obj, JITFunction):
            obj = obj.fn
        return obj

    def constexpr(self, name, default=None):
        return dict(self.constexprs).get(name, default)

    def option(self, name):
        return dict(self.options)[name]


def _teachers(teachers, modes) -> list:
    """(teacher case, mode) pairs: each case in the cross mode, and the within-modality call where
    its teacher case is among `teachers`."""
    pairs = [(teacher, "cross") for teacher in teachers] if "cross" in modes else []
    if "within_modality" in modes and WITHIN_MODALITY_CASE in teachers:
        pairs.append((WITHIN_MODALITY_CASE, "within_modality"))
    return pairs


def calls(dtype: str, batches=BATCHES, dims=DIMS, teachers=TEACHER_CASES, modes=TEACHER_MODES) -> list:
    """The matrix for one dtype: every B, D, teacher case and mode, symmetric and one-direction,
    aligned and offset inputs, reductions "none" and "mean"; a separate teacher at D' = D and, at
    D = 512, at every other D' (the within-modality teacher at D' = D only). The symmetric calls
    once more under PSD_TRITON_COLUMN_STATS=second_pass (two forward sweeps without column
    partials; "mean" then launches what "none" does); the one-direction loss does not read the switch.
    The sigmoid loss (psd_siglip_loss) at the same B, D, teacher cases and widths, aligned and
    offset, "none" (a loss-only sweep, then the gradient tiles per chunk) and "mean" (loss and
    gradient tiles in one sweep)."""
    out = []
    for b in batches:
        for d in dims:
            for teacher, mode in _teachers(teachers, modes):
                widths = [0]
                if teacher == "separate":
                    widths = [d] + ([dt for dt in dims if dt != d] if d == 512 and mode == "cross" else [])
                for dt in widths:
                    for symmetric in (True, False):
                        for offset in (False, True):
                            for reduction in ("none", "mean"):
                                for column_stats in COLUMN_STATS if symmetric else COLUMN_STATS[:1]:
                                    out.append(Call(dtype, b, d, teacher, dt, symmetric, offset, reduction,
                                                    column_stats, mode))
                            if mode == TEACHER_MODES[0]:  # the sigmoid loss: images against texts
                                out += [Call(dtype, b, d, teacher, dt, offset=offset, reduction=reduction, op=OPS[1])
                                        for offset in (False, True) for reduction in ("none", "mean")]
    return out


def _meta(rows: int, cols: int, dtype, offset: bool, requires_grad: bool) -> torch.Tensor:
    """A rows x cols meta tensor, starting one element into its allocation when `offset`."""
    start = 1 if offset else 0
    t = torch.empty(rows * cols + start, device="meta", dtype=dtype)[start:].view(rows, cols)
    return t.requires_grad_(requires_grad)


@contextlib.contextmanager
def _column_stats(value: str):
    """PSD_TRITON_COLUMN_STATS=value for the duration (the environment is restored afterwards)."""
    saved = os.environ.get("PSD_TRITON_COLUMN_STATS")
    os.environ["PSD_TRITON_COLUMN_STATS"] = value
    try:
        yield
    finally:
        if saved is None:
            del os.environ["PSD_TRITON_COLUMN_STATS"]
        else:
            os.environ["PSD_TRITON_COLUMN_STATS"] = saved


def run_call(call: Call) -> None:
    """`call` and its backward under its PSD_TRITON_COLUMN_STATS (every launch goes to the active
    recording)."""
    with _column_stats(call.column_stats):
        _run_call(call)


def _run_call(call: Call) -> None:
    import psd_kernels
    dtype = DTYPES[call.dtype]
    x, y = (_meta(call.b, call.d, dtype, call.offset, True) for _ in range(2))
    kwargs = {}
    scale = torch.tensor(20.0, device="meta").requires_grad_()
    if call.mode == "within_modality":  # the student's own embeddings of the other side: no teacher passed
        if call.symmetric:
            kwargs["teacher_mode"] = "within_modality"
        else:  # as the assembly's image rows: caption-caption targets
            kwargs.update(teacher_x=y.detach(), teacher_y=y.detach())
    elif call.teacher == "self_scaled":
        kwargs["teacher_scale"] = 7.5
    elif call.teacher == "separate":
        tx, ty = (_meta(call.b, call.dt, dtype, call.offset, False) for _ in range(2))
        kwargs.update(teacher_scale=12.0, **dict(zip(("teacher_image", "teacher_text") if call.symmetric
                                                     else ("teacher_x", "teacher_y"), (tx, ty))))
    if call.op == OPS[1]:
        bias = torch.tensor(-10.0, device="meta").requires_grad_()
        if call.teacher == "self_scaled":
            kwargs["teacher_bias"] = -2.0
        loss = psd_kernels.psd_siglip_loss(x, y, scale, bias, alpha_image=0.3, reduction=call.reduction,
                                           backend="triton", **kwargs)
    elif call.symmetric:
        loss = psd_kernels.psd_clip_loss(x, y, scale, alpha_image=0.3, reduction=call.reduction, backend="triton",
                                         **kwargs)
    else:
        loss = psd_kernels.psd_loss(x, y, scale, alpha=0.3, reduction=call.reduction, backend="triton", **kwargs)
    loss.sum().backward()


class _Binders:
    """Triton's binder per (JIT function, arch): argument values -> signature, constexprs, attrs."""

    def __init__(self):
        self._cache = {}

    def specialise(self, fn, arch: int, args, kwargs, grid) -> Launch:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import make_backend
        from triton.runtime.jit import create_function_from_signature
        key = (fn, arch)
        if key not in self._cache:
            backend = make_backend(GPUTarget("cuda", arch, 32))
            self._cache[key] = backend, create_function_from_signature(fn.signature, fn.params, backend)
        backend, binder = self._cache[key]
        bound_args, specialization, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = _pack(fn, backend, kwargs, bound_args, specialization, options)
        names = fn.arg_names
        if callable(grid):
            grid = grid(bound_args)
        return Launch(
            source=f"{fn.fn.__module__}:{fn.fn.__name__}",
            signature=tuple(signature.items()),
            constexprs=tuple((names[path[0]], value) for path, value in sorted(constexprs.items())),
            attrs=tuple(names[path[0]] for path, value in sorted(attrs.items()) if ["tt.divisibility", 16] in value),
            options=tuple(sorted((k, v) for k, v in options.__dict__.items() if _hashable(v))),
            programs=math.prod(grid))


def _pack(fn, backend, kwargs, bound_args, specialization, options):
    """(options, signature, constexprs, attrs) of a bound launch, as JITFunction.run hands them to
    the compiler: its _pack_args where Triton has it (3.6 and newer), else the same steps, which
    Triton 3.4 and 3.5 write inline in run()."""
    if hasattr(fn, "_pack_args"):
        return fn._pack_args(backend, kwargs, bound_args, specialization, options)
    from triton._utils import find_paths_if, get_iterable_path
    options = backend.parse_options(kwargs)
    sigvals = [x[0] for x in specialization]
    signature = {param.name: value for param, value in zip(fn.params, sigvals)}
    constexprs = find_paths_if(sigvals, lambda _, val: val == "constexpr")
    constexprs = {path: get_iterable_path(list(bound_args.values()), path) for path in constexprs}
    attrvals = [x[1] for x in specialization]
    attrs = find_paths_if(attrvals, lambda _, x: isinstance(x, str))
    attrs = {k: backend.parse_attr(get_iterable_path(attrvals, k)) for k in attrs}
    return options, signature, constexprs, attrs


def _hashable(value) -> bool:
    try:
        hash(value)
        return True
    except TypeError:
        return False


@contextlib.contextmanager
def _recording(arch: int, sms: int, sink):
    """Intercept every Triton launch (autotuned: once per kept config) into sink(fn, args, kwargs, grid),
    with the host code and prune functions seeing sm_<arch> with `sms` SMs."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    from psd_kernels import validation
    from psd_kernels.backends.triton import kernels as triton_kernels
    from psd_kernels.backends.triton import launcher as triton_psd

    def autotuned(self, *args, **kwargs):
        self.nargs = dict(zip(self.arg_names, args))
        kept = self.prune_configs(kwargs)
        self.nargs = None
        self.best_config = kept[0]
        for config in kept:
            self.fn.run(*args, **kwargs, **config.all_kwargs())

    def launched(self, *args, grid, warmup, **kwargs):
        sink(self, args, kwargs, grid)

    saved = [(Autotuner, "run", autotuned), (JITFunction, "run", launched),
             (triton_psd, "supports", lambda device, dtype: None), (triton_psd, "_autotune", lambda: True),
             (triton_psd, "_num_sms", lambda device: sms),
             # meta tensors hold no values: every checked number (scale, alpha, label) reads as 1
             (validation, "host_read", lambda t: [1.0] * t.numel()),
             (triton_kernels, "_arch", lambda operand: arch)]
    saved = [(owner, name, getattr(owner, name), new) for owner, name, new in saved]
    try:
        for owner, name, _, new in saved:
            setattr(owner, name, new)
        yield
    finally:
        for owner, name, old, _ in saved:
            setattr(owner, name, old)


def record(arch: int, sms: int, calls_) -> list:
    """[(call, Launch), ...] for every launch each call makes on sm_<arch> with `sms` SMs."""
    binders = _Binders()
    out, current = [], []

    def sink(fn, args, kwargs, grid):
        out.append((current[-1], binders.specialise(fn, arch, args, kwargs, grid)))

    with _recording(arch, sms, sink):
        for call in calls_:
            current.append(call)
            run_call(call)
    return out
