"""The PSD loss across ranks: local rows against all-gathered columns (open_clip's semantics).

    loss = psd_clip_loss_distributed(image_features, text_features, logit_scale,
                                     alpha_image=0.3, local_loss=True, gather_with_grad=True)

Rank r of W holds b_r image-text pairs; N = b_0 + ... + b_{W-1} and o_r = b_0 + ... + b_{r-1}
(the row of the concatenated batch where rank r's pairs start). Unequal b_r (the last batch
of an epoch) are supported: every call first all-gathers a few ints per rank (batch size,
dims, dtype, mode), so every rank also learns whether a peer's inputs were rejected and
raises instead of hanging in a collective.

local_loss=True: rows are this rank's b_r pairs, columns all N; positives c_i = o_r + i.
    Two one-direction losses: local images vs all texts, local texts vs all images. Rank r
    returns (reduction "mean") 0.5 * (W / N) * (sum_i l_i(image) + sum_j l_j(text)), so the
    mean over ranks is the single-process loss on the concatenated batch; with equal b_r
    that is the mean over this rank's rows, open_clip's value. "sum": 0.5 * (sum + sum) of
    this rank's rows (the ranks' values add up to the single-process sum); "none": (2, b_r).
local_loss=False: every rank computes the full N x N symmetric loss (the same value on
    every rank, W times the local mode's compute).
gather_with_grad=True: the all-gather is differentiable; its backward sums every rank's
    gradient of the gathered rows and returns each owner its own (a reduce-scatter). A
    rank's feature gradient is then W times the single-process gradient of its rows, and
    DDP's averaging of parameter gradients over ranks restores the single-process gradient.
gather_with_grad=False: gathered copies carry no gradient. Global mode puts this rank's
    own (grad-carrying) tensors back into its slice, as open_clip does: a rank's feature
    gradient is the single-process gradient (DDP's averaging then divides it by W). Local
    mode leaves only the rows with a gradient: the columns' share of the gradient is dropped.
logit_scale gets the gradient of this rank's loss: local mode, the mean over ranks is the
    single-process gradient; global mode, every rank's is.

Teacher embeddings are gathered without gradient, and only when some rank has a row with
alpha > 0 (otherwise every target is one-hot and the teacher is unused). alpha_image / alpha_text are per local
row (or scalars); global mode all-gathers them, so the soft subset each rank drew for its
own rows is the one the global loss uses. Communication does not overlap the loss: the
sweep needs every column before its first tile. Memory per rank beyond the inputs: the
gathered N x D student features (and their gradient in the backward), N x D' teacher
features, O(N) scalars; a fused backend keeps no b_r x N (local) or N x N (global) buffer.

Run its tests with: .venv/bin/python -m pytest tests/test_distributed.py -q
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from psd_kernels import assembly, validation
from psd_kernels.assembly import TEACHER_MODES

_DTYPES = validation.FLOAT_DTYPES


@dataclass(frozen=True)
class Layout:
    """Where each rank's rows sit in the concatenated batch."""

    rank: int
    sizes: tuple

    @property
    def world(self) -> int:
        return len(self.sizes)

    @property
    def offset(self) -> int:
        return sum(self.sizes[:self.rank])

    @property
    def total(self) -> int:
        return sum(self.sizes)


def group_rank_size(process_group=None) -> tuple[int, int]:
    """(rank, world size) in `process_group` (None: the default group); (0, 1) without torch.distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        if process_group is not None:
            raise RuntimeError("process_group was given but torch.distributed is not initialised")
        return 0, 1
    rank = dist.get_rank(process_group)
    if rank < 0:
        raise RuntimeError("this process is not a member of process_group")
    return rank, dist.get_world_size(process_group)


# -- collectives on rows, padded to the largest b_r on the wire ------------------------------
# Newer torch (2.13 and 2.14 have them) names the single-tensor collectives all_gather_single and
# reduce_scatter_single and deprecates all_gather_into_tensor and reduce_scatter_tensor, the only
# names torch 2.8 and 2.9 have: use the new name where it exists.
def _all_gather_single(out, t, group, async_op=False):
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return gather(out, t, group=group, async_op=async_op)


def _reduce_scatter_single(out, t, group, async_op=False):
    scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    return scatter(out, t, group=group, async_op=async_op)


def _pad_rows(t: torch.Tensor, width: int) -> torch.Tensor:
    if t.shape[0] == width:
        return t.contiguous()
    return torch.cat([t, t.new_zeros((width - t.shape[0],) + tuple(t.shape[1:]))])


def all_gather_rows(tensors, layout: Layout, group) -> list:
    """Each tensor's rows from every rank, concatenated in rank order (N x ...); no gradient.

    One all_gather per tensor, issued together; each moves W * max(b_r) rows.
    """
    width = max(layout.sizes)
    outs, works = [], []
    for t in tensors:
        out = t.new_empty((layout.world * width,) + tuple(t.shape[1:]))
        works.append(_all_gather_single(out, _pad_rows(t, width), group, async_op=True))
        outs.append(out)
    for work in works:
        work.wait()
    if all(n == width for n in layout.sizes):
        return outs
    return [torch.cat([out[r * width:r * width + n] for r, n in enumerate(layout.sizes)]) for out in outs]


def reduce_scatter_rows(grads, layout: Layout, group) -> list:
    """For each N x ... gradient: the sum over ranks of this rank's b_r rows (a reduce-scatter)."""
    width = max(layout.sizes)
    outs, works = [], []
    for g in grads:
        if any(n != width for n in layout.sizes):
            g = torch.cat([_pad_rows(chunk, width) for chunk in g.split(list(layout.sizes))])
        out = g.new_empty((width,) + tuple(g.shape[1:]))
        works.append(_reduce_scatter_single(out, g.contiguous(), group, async_op=True))
        outs.append(out)
    for work in works:
        work.wait()
    return [out[:layout.sizes[layout.rank]] for out in outs]


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward: each owner receives the sum over ranks of its rows' gradients."""

    @staticmethod
    def forward(ctx, layout, group, *tensors):
        ctx.layout, ctx.group = layout, group
        return tuple(all_gather_rows(tensors, layout, group))

    @staticmethod
    def backward(ctx, *grads):
        return (None, None, *reduce_scatter_rows(grads, ctx.layout, ctx.group))


def gather_features(tensors, layout: Layout, group, gather_with_grad: bool, local_loss: bool) -> list:
    """All ranks' rows of each tensor with open_clip's gradient semantics (module docstring)."""
    if layout.world == 1:
        return list(tensors)
    if gather_with_grad:
        return list(_GatherWithGrad.apply(layout, group, *tensors))
    gathered = all_gather_rows([t.detach() for t in tensors], layout, group)
    if local_loss:
        return gathered
    lo, hi = layout.offset, layout.offset + layout.sizes[layout.rank]
    return [torch.cat([g[:lo], t, g[hi:]]) for g, t in zip(gathered, tensors)]


# -- the handshake: sizes, and agreement on everything the collectives depend on -------------
_FIELDS = ("ok", "rows", "embedding dim", "dtype", "teacher embedding dim (-1: no teacher)",
           "local_loss", "gather_with_grad", "teacher_mode", "features requiring grad (gather_with_grad)",
           "soft rows (some alpha > 0: the teacher is used)")
_AGREE = range(2, len(_FIELDS) - 1)  # fields every rank must share; the last one is OR-ed


def _handshake(args, error, rank, world, group, local_loss, gather_with_grad, teacher_mode):
    """All-gather one row of ints per rank; raise on every rank when a rank failed or ranks disagree.

    Returns the Layout and whether any rank's rows use the teacher (some alpha > 0).
    """
    if error is None:
        image, teacher = args["image"], args["teacher_image"]
        wants_grad = (gather_with_grad and torch.is_grad_enabled()
                      and (image.requires_grad or args["text"].requires_grad))
        mine = [1, image.shape[0], image.shape[1], _DTYPES.index(image.dtype),
                -1 if teacher is None else teacher.shape[1], int(local_loss), int(gather_with_grad),
                TEACHER_MODES.index(teacher_mode), int(wants_grad), int(args["soft_rows"])]
    else:
        mine = [0] + [-1] * (len(_FIELDS) - 1)
    # a few ints: on the CPU where the group's backend can (gloo, mpi), else on this rank's GPU (nccl)
    backend = str(dist.get_backend(group))
    on_cpu = "gloo" in backend or "mpi" in backend or not torch.cuda.is_available()
    device = torch.device("cpu") if on_cpu else torch.device("cuda", torch.cuda.current_device())
    out = torch.empty(world * len(_FIELDS), dtype=torch.int64, device=device)
    _all_gather_single(out, torch.tensor(mine, dtype=torch.int64, device=device), group)
    table = out.view(world, len(_FIELDS)).tolist()
    if error is not None:
        raise error
    failed = [r for r, row in enumerate(table) if row[0] == 0]
    if failed:
        raise RuntimeError(f"rank(s) {failed} of the process group rejected their loss inputs (the error is "
                           f"raised on those ranks); rank {rank}'s inputs were valid")
    for field in _AGREE:
        values = [row[field] for row in table]
        if len(set(values)) > 1:
            if field == 3:
                values = [str(_DTYPES[v]) for v in values]
            per_rank = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
            raise ValueError(f"{_FIELDS[field]} must be the same on every rank, got {per_rank}")
    return Layout(rank, tuple(row[1] for row in table)), any(row[-1] for row in table)


def psd_clip_loss_distributed(image_features, text_features, logit_scale, *, teacher_image=None,
                              teacher_text=None, teacher_scale=None, alpha_image=0.0, alpha_text=None,
                              teacher_mode="cross", local_loss=True, gather_with_grad=True,
                              process_group=None, reduction="mean", backend="auto",
                              check_finite=False) -> torch.Tensor:
    """Symmetric PSD loss of this rank's pairs against every rank's (see the module docstring).

    Arguments are psd_kernels.psd_clip_loss's for this rank's b_r pairs (alpha per local
    row), plus:
        teacher_mode: "cross" (the teacher's image-text matrix seen from both sides) or
            "within_modality" (image rows get caption-caption targets, caption rows
            image-image targets; default teacher: the gathered student features, detached).
        local_loss, gather_with_grad: open_clip's options; the defaults are open_clip's
            --local-loss --gather-with-grad, the setting whose gradients are exact.
        process_group: the ranks that share the batch; None is the default (world) group.

    Every rank of the group must call this with the same options and dims (it raises on
    every rank otherwise) and, with gather_with_grad, must run the backward: the gradient
    exchange is a collective. Without torch.distributed it is psd_clip_loss on this batch.
    Teacher tensors get no gradient. Host synchronisations per call: one for the value
    checks (psd_kernels.validation) and, with more than one rank, one for the handshake.
    """
    rank, world = group_rank_size(process_group)
    if world == 1:
        return assembly.symmetric_loss(image_features, text_features, logit_scale, teacher_image, teacher_text,
                                       teacher_scale, alpha_image, alpha_text, teacher_mode, reduction, backend,
                                       check_finite)
    return clip_loss_in_group(image_features, text_features, logit_scale, teacher_image, teacher_text,
                              teacher_scale, alpha_image, alpha_text, teacher_mode, local_loss, gather_with_grad,
                              process_group, rank, world, reduction, backend, check_finite)


def clip_loss_in_group(image_features, text_features, logit_scale, teacher_image, teacher_text, teacher_scale,
                       alpha_image, alpha_text, teacher_mode, local_loss, gather_with_grad, process_group, rank,
                       world, reduction="mean", backend="auto", check_finite=False) -> torch.Tensor:
    """psd_clip_loss_distributed for this process as `rank` of `world` > 1 in `process_group`:
    the handshake, the gathers and the loss. PSDLoss calls this directly with more than one rank."""
    args, module, error = None, None, None
    try:
        args, module = assembly.symmetric_inputs(image_features, text_features, logit_scale, teacher_image,
                                                 teacher_text, teacher_scale, alpha_image, alpha_text, teacher_mode,
                                                 reduction, backend, check_finite)
    except Exception as exc:  # re-raised after the handshake, so no peer waits in a collective
        error = exc

    layout, soft_rows = _handshake(args, error, rank, world, process_group, local_loss, gather_with_grad,
                                   teacher_mode)
    image, text = args["image"], args["text"]
    all_image, all_text = gather_features([image, text], layout, process_group, gather_with_grad, local_loss)
    t_image, t_text = (args["teacher_image"], args["teacher_text"]) if soft_rows else (None, None)
    all_t_image, all_t_text = (None, None) if t_image is None else \
        all_gather_rows([t_image, t_text], layout, process_group)
    common = dict(scale=args["scale"], teacher_scale=args["teacher_scale"], reduction=reduction,
                  soft_rows=soft_rows, teacher_mode=teacher_mode)
    if local_loss:
        # this rank's rows against all N columns; mean: (W / N) * sum over local rows, so the
        # mean over ranks is the single-process mean
        return assembly.clip_loss(module, image, text, alpha_image=args["alpha_image"],
                                  alpha_text=args["alpha_text"], teacher_image=t_image, teacher_text=t_text,
                                  columns=(all_image, all_text, all_t_image, all_t_text), offset=layout.offset,
                                  n_mean=layout.total / layout.world, **common)
    alpha_i, alpha_t = all_gather_rows([args["alpha_image"], args["alpha_text"]], layout, process_group)
    return assembly.clip_loss(module, all_image, all_text, alpha_image=alpha_i, alpha_text=alpha_t,
                              teacher_image=all_t_image, teacher_text=all_t_text, **common)


# -- the sigmoid (SigLIP) loss across ranks (docs/siglip_loss.md) ---------------------------------
def psd_siglip_loss_distributed(image_features, text_features, logit_scale, logit_bias=None, *,
                                teacher_image=None, teacher_text=None, teacher_scale=None, teacher_bias=None,
                                alpha_image=0.0, alpha_text=None, process_group=None, reduction="mean",
                                backend="auto", check_finite=False) -> torch.Tensor:
    """Sigmoid loss of this rank's images against every rank's texts (open_clip's SigLipLoss).

    Rows are this rank's b_r images, columns the N gathered texts, positives c_i = o_r + i.
    The texts are all-gathered with gradient (the backward reduce-scatters: rank k's texts get
    the sum over ranks of their gradient, as open_clip's neighbour exchanges give them), teacher
    texts and the texts' alphas without. "mean" divides this rank's sum by N / W: with equal
    b_r that is open_clip's division by the local batch, and with unequal b_r the mean over
    ranks stays the single-process loss of the whole batch. Arguments are psd_siglip_loss's
    plus process_group (None: the default group). Without torch.distributed it is
    psd_siglip_loss on this batch. Every rank must call it with the same options and dims.
    """
    rank, world = group_rank_size(process_group)
    if world == 1:
        return assembly.siglip_batch_loss(image_features, text_features, logit_scale, logit_bias, teacher_image,
                                          teacher_text, teacher_scale, teacher_bias, alpha_image, alpha_text,
                                          reduction, backend, check_finite)
    return siglip_loss_in_group(image_features, text_features, logit_scale, logit_bias, teacher_image, teacher_text,
                                teacher_scale, teacher_bias, alpha_image, alpha_text, process_group, rank, world,
                                reduction, backend, check_finite)


def siglip_loss_in_group(image_features, text_features, logit_scale, logit_bias, teacher_image, teacher_text,
                         teacher_scale, teacher_bias, alpha_image, alpha_text, process_group, rank, world,
                         reduction="mean", backend="auto", check_finite=False) -> torch.Tensor:
    """psd_siglip_loss_distributed for this process as `rank` of `world` > 1 in `process_group`.
    Memory beyond the inputs: the gathered N x D texts (and their gradient), N x D' teacher texts
    when a row is soft, O(N) scalars; a fused backend keeps no b_r x N buffer."""
    args, module, error = None, None, None
    try:
        args, module = assembly.siglip_inputs(image_features, text_features, logit_scale, logit_bias, teacher_image,
                                              teacher_text, teacher_scale, teacher_bias, alpha_image, alpha_text,
                                              reduction, backend, check_finite)
    except Exception as exc:  # re-raised after the handshake, so no peer waits in a collective
        error = exc
    layout, soft_rows = _handshake(args, error, rank, world, process_group, True, True, "cross")
    (all_text,) = gather_features([args["text"]], layout, process_group, gather_with_grad=True, local_loss=True)
    if soft_rows:
        gathered = [args["alpha_text"]] + ([] if args["teacher_text"] is None else [args["teacher_text"]])
        all_alpha_text, *rest = all_gather_rows(gathered, layout, process_group)
        all_teacher_text = rest[0] if rest else None
    else:
        all_alpha_text, all_teacher_text = args["alpha_text"].new_zeros(layout.total), None
    args.update(soft_rows=soft_rows, columns=(all_text, all_teacher_text, all_alpha_text), offset=layout.offset,
                n_mean=layout.total / layout.world)
    return assembly.siglip_loss(module, **args)
