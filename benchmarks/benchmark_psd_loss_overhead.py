"""Per-call overhead of the public loss API over the fused C++ op it calls, on CPU.

    .venv/bin/python benchmarks/benchmark_psd_loss_overhead.py                   # this tree
    .venv/bin/python benchmarks/benchmark_psd_loss_overhead.py --tree OLD --tree . # before/after, one run

Three callers run forward + backward of the symmetric loss (separate teacher, alpha 0.3 on
a soft subset of half the rows) on the same B x D float32 inputs:

    op            torch.ops.psd.forward_backward on prepared arguments: the kernel alone
    psd_clip_loss the public function (validation, backend choice, autograd)
    PSDLoss       the nn.Module (schedule, soft-subset draw, then the same path)

overhead = median(caller) - median(op), in microseconds. Repetitions of the callers are
interleaved (op, function, module, op, ...) so drift of this shared machine hits all three
alike. With several --tree arguments each tree is measured in its own child process
(PYTHONPATH=tree), alternating between trees for --rounds rounds, so a before/after
comparison is side by side in one run; the printed medians pool every round.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

CALLERS = ("op", "psd_clip_loss", "PSDLoss")


def _inputs(batch: int, dim: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)

    def unit(*shape):
        t = torch.randn(*shape, generator=g)
        return t / t.norm(dim=1, keepdim=True)

    return dict(image=unit(batch, dim).requires_grad_(), text=unit(batch, dim).requires_grad_(),
                t_image=unit(batch, dim), t_text=unit(batch, dim),
                scale=torch.tensor(1 / 0.07, requires_grad=True), t_scale=torch.tensor(20.0))


def _callers(batch: int, inp: dict) -> dict:
    """caller name -> a function running forward + backward once."""
    import psd_kernels  # noqa: F401  (loads torch.ops.psd)
    from psd_kernels import PSDLoss, psd_clip_loss

    alpha = torch.zeros(batch)
    alpha[: batch // 2] = 0.3
    labels = torch.arange(batch)
    weights = torch.full((batch,), 0.5 / batch)
    image, text, scale = inp["image"], inp["text"], inp["scale"]
    module = PSDLoss(alpha_max=0.3, schedule="constant", soft_fraction=0.5)

    def op():
        torch.ops.psd.forward_backward(image.detach(), text.detach(), scale.detach(), alpha, labels, alpha,
                                       inp["t_image"], inp["t_text"], inp["t_scale"], weights, weights)

    def function():
        psd_clip_loss(image, text, scale, teacher_image=inp["t_image"], teacher_text=inp["t_text"],
                      teacher_scale=inp["t_scale"], alpha_image=alpha).backward()

    def loss_module():
        module(image, text, scale, teacher_image_features=inp["t_image"], teacher_text_features=inp["t_text"],
               teacher_logit_scale=inp["t_scale"]).backward()

    return {"op": op, "psd_clip_loss": function, "PSDLoss": loss_module}


def measure(batch: int, dim: int, reps: int, warmup: int = 2) -> dict:
    """caller -> list of per-call seconds, interleaved over `reps` rounds."""
    inp = _inputs(batch, dim)
    callers = _callers(batch, inp)
    for fn in callers.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in callers}
    for _ in range(reps):
        for name, fn in callers.items():
            for t in (inp["image"], inp["text"], inp["scale"]):
                t.grad = None
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def _child(args) -> int:
    out = {str(b): measure(b, args.dim, args.reps) for b in args.batch}
    print("RESULT " + json.dumps(out))
    return 0


def _run_tree(tree: str, args) -> dict:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--dim", str(args.dim), "--reps", str(args.reps),
           "--batch", *map(str, args.batch)] + (["--threads", str(args.threads)] if args.threads else [])
    proc = subprocess.run(cmd, env=env, cwd=os.path.abspath(tree), capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"measuring tree {tree} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", action="append", default=None,
                        help="a source tree to measure (repeatable; default: this process's imports)")
    parser.add_argument("--batch", type=int, nargs="+", default=[256, 4096])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--reps", type=int, default=20, help="interleaved repetitions per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds alternating between trees")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        return _child(args)
    trees = args.tree or [None]
    pooled = {tree: {str(b): {c: [] for c in CALLERS} for b in args.batch} for tree in trees}
    for _ in range(args.rounds):
        for tree in trees:
            result = _run_tree(tree, args) if tree else {str(b): measure(b, args.dim, args.reps) for b in args.batch}
            for b, per_caller in result.items():
                for caller, values in per_caller.items():
                    pooled[tree][b][caller] += values
    print(f"CPU, float32, D={args.dim}, separate teacher, alpha 0.3 on half the rows; forward + backward; "
          f"{args.rounds} rounds x {args.reps} interleaved reps; torch threads {torch.get_num_threads()}")
    print(f"{'tree':<24} {'B':>6} {'caller':<14} {'median ms':>10} {'overhead us':>12}")
    for tree in trees:
        for b in map(str, args.batch):
            med = {c: statistics.median(v) for c, v in pooled[tree][b].items()}
            for caller in CALLERS:
                over = "" if caller == "op" else f"{(med[caller] - med['op']) * 1e6:12.0f}"
                print(f"{tree or '(this)':<24} {b:>6} {caller:<14} {med[caller] * 1e3:10.3f} {over:>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
