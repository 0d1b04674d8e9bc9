"""One rank of the multi-process checks in tests/test_distributed.py (CPU, gloo).

tests/test_distributed.py starts three of these and compares what they save with the
single-process loss; by hand:

    for r in 0 1 2; do .venv/bin/python tests/distributed_worker.py --rank $r --world 3 \
        --init file:///tmp/psd_store --out /tmp/psd_out --backends reference & done; wait

Every rank runs the same list of cases, in the default group (3 ranks) and in a subgroup
of global ranks 1 and 2 (2 ranks, where a rank's group rank differs from its global rank),
and saves {case name: record} to OUT/rank<r>.pt. A record holds this rank's loss and the
gradients of its features, teacher features and logit scale, and the case's full
(concatenated) inputs; "errors" holds what each bad-input call raised on this rank.
"""
from __future__ import annotations

import argparse
import importlib.util
import itertools
import os
import sys
import zlib
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from psd_kernels import PSDLoss, available_backends
from psd_kernels.distributed import psd_clip_loss_distributed

D, D_TEACHER = 12, 10
# local batch sizes per group size: equal (open_clip's case) and unequal (the last batch of an epoch)
SIZES = {2: [(4, 4), (5, 2)], 3: [(3, 3, 3), (4, 1, 6)]}
MODES = list(itertools.product((True, False), (True, False)))  # (local_loss, gather_with_grad)


def case_dtype(backend: str) -> torch.dtype:
    """float64 proves the math where the backend runs it; float32 otherwise."""
    return torch.float64 if available_backends("cpu", torch.float64)[backend] is None else torch.float32


def case_seed(case: dict) -> int:
    """Inputs depend on the case but not on the backend, so every backend sees the same batch."""
    return zlib.crc32(repr(sorted((k, v) for k, v in case.items() if k != "backend")).encode()) % 10_000


def make_inputs(seed: int, sizes, dtype, alpha_zero=False) -> dict:
    """The full concatenated batch of one case (every rank builds the same one).

    alpha is 0 on every third row and on all of rank 1's rows (a rank whose rows need no
    teacher must still take part in gathering it), or everywhere with alpha_zero.
    """
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)

    def unit(rows, dim):
        t = torch.randn(rows, dim, generator=g, dtype=torch.float64)
        return (t / t.norm(dim=1, keepdim=True)).to(dtype)

    alpha = torch.rand(2, n, generator=g, dtype=torch.float64)
    alpha[:, ::3] = 0.0  # rows outside the soft subset
    alpha[:, sizes[0]:sizes[0] + sizes[1]] = 0.0
    if alpha_zero:
        alpha.zero_()
    return dict(image=unit(n, D), text=unit(n, D), teacher_image=unit(n, D_TEACHER), teacher_text=unit(n, D_TEACHER),
                scale=torch.tensor(11.0 + seed % 5, dtype=torch.float64), teacher_scale=7.5,
                alpha=alpha, weights=torch.rand(2, n, generator=g, dtype=torch.float64), sizes=tuple(sizes))


def local_leaves(inputs: dict, rank: int, teacher: bool, dtype) -> dict:
    """This rank's rows as fresh leaves (teacher leaves require grad, to show they get none)."""
    lo = sum(inputs["sizes"][:rank])
    hi = lo + inputs["sizes"][rank]
    out = {k: inputs[k][lo:hi].clone().requires_grad_(True) for k in ("image", "text")}
    if teacher:
        out.update({k: inputs[k][lo:hi].clone().requires_grad_(True) for k in ("teacher_image", "teacher_text")})
    out["scale"] = inputs["scale"].to(dtype).clone().requires_grad_(True)
    out["alpha"] = inputs["alpha"][:, lo:hi]
    out["weights"] = inputs["weights"][:, lo:hi]
    return out


def record(loss, leaves) -> dict:
    grad = lambda k: None if k not in leaves or leaves[k].grad is None else leaves[k].grad.detach().clone()
    return dict(loss=loss.detach().clone(), image=grad("image"), text=grad("text"), scale=grad("scale"),
                teacher_image=grad("teacher_image"), teacher_text=grad("teacher_text"),
                teacher_given="teacher_image" in leaves)


def objective(loss, leaves, reduction: str, local_loss: bool, inputs: dict):
    """What the rank backpropagates: the loss, or for "none" a weighted sum of its rows."""
    if reduction != "none":
        return loss
    weights = leaves["weights"] if local_loss else inputs["weights"]
    return (loss * weights.to(loss.dtype)).sum()


def functional_cases(backends, group_size):
    for backend, sizes, (local_loss, gwg), teacher, mode in itertools.product(
            backends, SIZES[group_size], MODES, (False, True), ("cross", "within_modality")):
        yield dict(kind="functional", backend=backend, sizes=sizes, local_loss=local_loss, gather_with_grad=gwg,
                   teacher=teacher, teacher_mode=mode, reduction="mean")
    for backend, reduction, local_loss in itertools.product(backends, ("sum", "none"), (True, False)):
        yield dict(kind="functional", backend=backend, sizes=SIZES[group_size][1], local_loss=local_loss,
                   gather_with_grad=True, teacher=True, teacher_mode="cross", reduction=reduction)
    for backend in backends:  # a teacher no row uses is not gathered, on any rank
        yield dict(kind="functional", backend=backend, sizes=SIZES[group_size][1], local_loss=True,
                   gather_with_grad=True, teacher=True, teacher_mode="cross", reduction="mean", alpha_zero=True)


def run_functional(case, inputs, rank, group):
    dtype = case_dtype(case["backend"])
    leaves = local_leaves(inputs, rank, case["teacher"], dtype)
    loss = psd_clip_loss_distributed(
        leaves["image"], leaves["text"], leaves["scale"], teacher_image=leaves.get("teacher_image"),
        teacher_text=leaves.get("teacher_text"), teacher_scale=inputs["teacher_scale"],
        alpha_image=leaves["alpha"][0], alpha_text=leaves["alpha"][1], teacher_mode=case["teacher_mode"],
        local_loss=case["local_loss"], gather_with_grad=case["gather_with_grad"], process_group=group,
        reduction=case["reduction"], backend=case["backend"])
    objective(loss, leaves, case["reduction"], case["local_loss"], inputs).backward()
    return record(loss, leaves)


def module_cases(backends, group_size):
    """PSDLoss over two training steps: its own alpha schedule and per-rank soft subsets."""
    for backend, (local_loss, gwg), mode in itertools.product(backends, MODES, ("cross", "within_modality")):
        yield dict(kind="module", backend=backend, sizes=SIZES[group_size][1], local_loss=local_loss,
                   gather_with_grad=gwg, teacher=True, teacher_mode=mode, alpha_max=0.6, soft_fraction=0.5,
                   seed=3, steps=2)


def run_module(case, inputs, rank, group, group_size):
    dtype = case_dtype(case["backend"])
    loss_fn = PSDLoss(alpha_max=case["alpha_max"], schedule="constant", soft_fraction=case["soft_fraction"],
                      seed=case["seed"], teacher_mode=case["teacher_mode"], backend=case["backend"],
                      local_loss=case["local_loss"], gather_with_grad=case["gather_with_grad"], rank=rank,
                      world_size=group_size, process_group=group)
    steps = []
    for _ in range(case["steps"]):
        leaves = local_leaves(inputs, rank, True, dtype)
        loss = loss_fn(leaves["image"], leaves["text"], leaves["scale"], dist_image_features=leaves["teacher_image"],
                       dist_text_features=leaves["teacher_text"], dist_logit_scale=inputs["teacher_scale"])
        loss.backward()
        steps.append(record(loss, leaves))
    return dict(steps=steps, final_step=loss_fn.state_dict()["_extra_state"]["step"])


def openclip_cases(group_size):
    """PSDLoss with alpha_max = 0 next to open_clip's ClipLoss, every mode, equal batches (none
    without open_clip_torch: test_alpha_zero_is_open_clip_clip_loss skips)."""
    if importlib.util.find_spec("open_clip") is None:
        return
    for local_loss, gwg in MODES:
        yield dict(kind="openclip", backend="reference", sizes=SIZES[group_size][0], local_loss=local_loss,
                   gather_with_grad=gwg, teacher=False)


def open_clip_loss_module():
    """open_clip/loss.py on its own (it imports only torch): the package's __init__ would
    import torchvision and the model code, seconds per rank that this check does not need."""
    path = Path(importlib.util.find_spec("open_clip").origin).with_name("loss.py")
    spec = importlib.util.spec_from_file_location("open_clip_loss", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_openclip(case, inputs, rank, group_size):
    ClipLoss = open_clip_loss_module().ClipLoss

    dtype = case_dtype(case["backend"])
    out = {}
    options = dict(local_loss=case["local_loss"], gather_with_grad=case["gather_with_grad"], rank=rank,
                   world_size=group_size)
    for name, loss_fn in (("psd", PSDLoss(backend=case["backend"], **options)), ("open_clip", ClipLoss(**options))):
        leaves = local_leaves(inputs, rank, False, dtype)
        loss = loss_fn(leaves["image"], leaves["text"], leaves["scale"])
        loss.backward()
        out[name] = record(loss, leaves)
    return out


def run_errors(inputs, rank, group_size, backend):
    """Bad input on one rank: every rank must raise (no hang), then a valid call still works."""
    dtype = case_dtype(backend)
    last = group_size - 1
    out = {}

    def attempt(name, fn):
        try:
            fn()
            out[name] = None
        except Exception as exc:  # the test checks type and message
            out[name] = (type(exc).__name__, str(exc))

    def call(image_dim=D, alpha=0.5, teacher=False):
        leaves = local_leaves(inputs, rank, teacher, dtype)
        image = leaves["image"] if image_dim == D else torch.randn(leaves["image"].shape[0], image_dim, dtype=dtype)
        return psd_clip_loss_distributed(image, leaves["text"] if image_dim == D else image.clone(), leaves["scale"],
                                         teacher_image=leaves.get("teacher_image"),
                                         teacher_text=leaves.get("teacher_text"), alpha_image=alpha, backend=backend)

    attempt("alpha_out_of_range", lambda: call(alpha=1.5 if rank == 1 else 0.5))
    attempt("image_not_2d", lambda: PSDLoss(rank=rank, world_size=group_size, backend=backend)(
        torch.randn(4, dtype=dtype) if rank == 1 else local_leaves(inputs, rank, False, dtype)["image"],
        local_leaves(inputs, rank, False, dtype)["text"], inputs["scale"].to(dtype)))
    attempt("dim_mismatch", lambda: call(image_dim=6 if rank == last else D))
    attempt("teacher_on_one_rank", lambda: call(teacher=rank == 0))
    attempt("wrong_rank", lambda: PSDLoss(rank=(rank + 1) % group_size, world_size=group_size)(
        inputs["image"][:2], inputs["text"][:2], 10.0))
    attempt("grad_on_some_ranks", lambda: psd_clip_loss_distributed(
        *(t.detach().requires_grad_(rank != 0) for t in (inputs["image"][:2], inputs["text"][:2])), 10.0,
        backend=backend))
    out["valid_after_errors"] = call().detach().clone()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--init", required=True, help="init_method, e.g. file:///tmp/store")
    parser.add_argument("--out", required=True)
    parser.add_argument("--backends", required=True, help="comma-separated CPU backends to check")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds a collective may wait")
    args = parser.parse_args(argv)
    backends = args.backends.split(",")
    dist.init_process_group("gloo", init_method=args.init, rank=args.rank, world_size=args.world,
                            timeout=timedelta(seconds=args.timeout))
    torch.set_num_threads(1)
    sub_ranks = [1, 2]
    subgroup = dist.new_group(sub_ranks)  # every rank must take part in creating it
    groups = [("world", None, args.rank, args.world)]
    if args.rank in sub_ranks:
        groups.append(("sub", subgroup, sub_ranks.index(args.rank), len(sub_ranks)))
    results = {}
    for label, group, rank, size in groups:
        cases = [*functional_cases(backends, size), *module_cases(backends, size), *openclip_cases(size)]
        for i, case in enumerate(cases):
            name = f"{label}/{i}"
            inputs = make_inputs(case_seed(case), case["sizes"], case_dtype(case["backend"]),
                                 case.get("alpha_zero", False))
            if case["kind"] == "functional":
                out = run_functional(case, inputs, rank, group)
            elif case["kind"] == "module":
                out = run_module(case, inputs, rank, group, size)
            else:
                out = run_openclip(case, inputs, rank, size) if group is None else None
                if out is None:
                    continue  # open_clip's ClipLoss knows only the default group
            results[name] = dict(case=case, rank=rank, group_size=size, out=out, inputs=inputs)
    errors = run_errors(make_inputs(99, SIZES[args.world][0], case_dtype(backends[0])), args.rank, args.world,
                        backends[0])
    os.makedirs(args.out, exist_ok=True)
    torch.save(dict(results=results, errors=errors), os.path.join(args.out, f"rank{args.rank}.pt"))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
