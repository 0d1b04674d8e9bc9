"""One rank of tests/test_siglip_distributed.py (CPU, gloo): the sigmoid loss across ranks.

    for r in 0 1 2; do .venv/bin/python tests/siglip_distributed_worker.py --rank $r --world 3 \
        --init file:///tmp/psd_store --out /tmp/psd_out --backends reference & done; wait

Every rank builds the same full batch (float64) and computes, on its own slice:
* "open_clip/<impl>/<backend>": open_clip's SigLipLoss(rank, world, dist_impl=impl) and
  PSDSigLipLoss with the same arguments at alpha 0: the loss and the gradients of this rank's
  image and text features, logit_scale (the parameter, before exp) and logit_bias;
* "soft/<sizes>/<teacher>/<backend>": PSDSigLipLoss with alpha > 0 on some rows (a self teacher
  at another scale and bias, or separate teacher features), equal and unequal local batches;
  its loss and gradients, and the full inputs, to compare with the single-process loss;
* "errors": what a bad input on rank 1 raised on each rank.
It saves {name: record} to OUT/rank<r>.pt.
"""
from __future__ import annotations

import argparse
from datetime import timedelta
from pathlib import Path

import open_clip
import torch
import torch.distributed as dist

from psd_kernels import PSDSigLipLoss
from psd_kernels.schedule import IMAGE_ROWS, TEXT_ROWS

D, D_TEACHER = 12, 9
DIST_IMPLS = ("bidir", "shift", "reduce", "gather")


def full_batch(seed: int, n: int) -> dict:
    g = torch.Generator().manual_seed(seed)

    def unit(rows, dim):
        t = torch.randn(rows, dim, generator=g, dtype=torch.float64)
        return t / t.norm(dim=1, keepdim=True)

    return dict(image=unit(n, D), text=unit(n, D), teacher_image=unit(n, D_TEACHER), teacher_text=unit(n, D_TEACHER),
                logit_scale=torch.tensor(2.3, dtype=torch.float64), logit_bias=torch.tensor(-4.0, dtype=torch.float64))


def local(batch: dict, sizes, rank: int) -> dict:
    lo = sum(sizes[:rank])
    hi = lo + sizes[rank]
    out = {k: (v[lo:hi].clone() if v.dim() == 2 else v.clone()) for k, v in batch.items()}
    for key in ("image", "text", "logit_scale", "logit_bias"):
        out[key].requires_grad_(True)
    return out


def loss_and_grads(loss_fn, x: dict, **teacher) -> dict:
    loss = loss_fn(x["image"], x["text"], x["logit_scale"].exp(), x["logit_bias"], **teacher)
    grads = torch.autograd.grad(loss, [x["image"], x["text"], x["logit_scale"], x["logit_bias"]])
    return dict(loss=loss.detach(), **dict(zip(("image", "text", "logit_scale", "logit_bias"), grads)))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--init", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--backends", nargs="+", default=["reference"])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=args.init, rank=args.rank, world_size=args.world,
                            timeout=timedelta(seconds=120))
    rank, world = args.rank, args.world
    records = {}
    equal = [3] * world
    batch = full_batch(world, sum(equal))
    for backend in args.backends:
        for impl in DIST_IMPLS:
            x = local(batch, equal, rank)
            theirs = loss_and_grads(open_clip.loss.SigLipLoss(rank=rank, world_size=world, dist_impl=impl), x)
            x = local(batch, equal, rank)
            ours = loss_and_grads(PSDSigLipLoss(rank=rank, world_size=world, dist_impl=impl, backend=backend), x)
            records[f"open_clip/{impl}/{backend}"] = dict(open_clip=theirs, psd=ours)
        unequal = [2 + (3 * r) % 5 for r in range(world)]   # e.g. 2, 5, 3, 6: the last batch of an epoch
        for sizes in (equal, unequal):
            full = full_batch(100 + world + sum(sizes), sum(sizes))
            for teacher in ("self_scaled", "separate"):
                x = local(full, sizes, rank)
                loss_fn = PSDSigLipLoss(rank=rank, world_size=world, alpha_max=0.6, schedule="constant",
                                        soft_fraction=0.5, seed=7, backend=backend)
                kwargs = dict(teacher_logit_scale=20.0, teacher_logit_bias=-2.0)
                if teacher == "separate":
                    kwargs.update(teacher_image_features=x["teacher_image"], teacher_text_features=x["teacher_text"])
                # this rank's per-row alphas as the loss draws them at this step (the same draw)
                drawn = {f"alpha_{name}": loss_fn._row_alpha(0.6, stream, sizes[rank], x["image"])
                         for name, stream in (("image", IMAGE_ROWS), ("text", TEXT_ROWS))}
                result = dict(loss_and_grads(loss_fn, x, **kwargs), **drawn)
                records[f"soft/{'-'.join(map(str, sizes))}/{teacher}/{backend}"] = dict(psd=result, sizes=sizes,
                                                                                         batch=full)
    errors = {}
    bad = local(batch, equal, rank)
    if rank == 1:
        bad["text"] = bad["text"][:, :-1]  # a width that does not match the images
    try:
        loss_and_grads(PSDSigLipLoss(rank=rank, world_size=world), bad)
    except Exception as exc:  # noqa: BLE001 - recorded for the test to read
        errors["bad_width_on_rank_1"] = f"{type(exc).__name__}: {exc}"
    records["errors"] = errors
    Path(args.out).mkdir(parents=True, exist_ok=True)
    torch.save(records, Path(args.out) / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
