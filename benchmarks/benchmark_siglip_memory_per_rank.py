"""Peak extra memory per rank of the sigmoid (SigLIP) loss at a fixed local batch, W = 1, 2, 4 (gloo, CPU).

    .venv/bin/python benchmarks/benchmark_siglip_memory_per_rank.py                  # b = 2048, D = 512
    .venv/bin/python benchmarks/benchmark_siglip_memory_per_rank.py --batch 1024 --worlds 1 2

For each world size W, W processes on this machine (gloo, one torch thread each) each hold b
image-text pairs and run forward + backward of one loss, several times; each rank reports its
peak extra RSS over the calls (VmHWM after minus VmRSS before, VmHWM reset through
/proc/self/clear_refs: psd_kernels/tools/peak_memory.py) and the median time; the row is the largest rank.
Providers: psd-siglip (PSDSigLipLoss, backend auto: the C++ op when built) and open_clip's
SigLipLoss with dist_impl bidir (its default) and gather. open_clip keeps a b x b logit block
and its elementwise intermediates per peer for the backward, so its memory grows by O(W b^2);
psd gathers the N x D texts once (and their gradient), O(W b D). Rows (op psd_siglip_loss,
metric memory_per_rank / time, x = W) go to benchmarks/data/psd_siglip_loss_memory_per_rank.csv (and its table to .md) through
benchmarks/rows.py, stamped with the commit.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta

import torch

PROVIDERS = ("psd-siglip", "openclip-siglip[bidir]", "openclip-siglip[gather]")
OP = "psd_siglip_loss"


def rank_main(args) -> None:
    """One rank: its peak extra RSS and median time of forward + backward, as one JSON line."""
    import torch.distributed as dist

    from psd_kernels.tools.peak_memory import PeakMemory

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=args.init, rank=args.rank, world_size=args.world,
                            timeout=timedelta(seconds=600))
    gen = torch.Generator().manual_seed(args.rank)
    image = torch.nn.functional.normalize(torch.randn(args.batch, args.dim, generator=gen), dim=1).requires_grad_()
    text = torch.nn.functional.normalize(torch.randn(args.batch, args.dim, generator=gen), dim=1).requires_grad_()
    logit_scale = torch.tensor(2.3, requires_grad=True)
    logit_bias = torch.tensor(-10.0, requires_grad=True)
    if args.provider == "psd-siglip":
        from psd_kernels import PSDSigLipLoss
        loss_fn = PSDSigLipLoss(rank=args.rank, world_size=args.world)
    else:
        import open_clip
        impl = args.provider.split("[")[1].rstrip("]")
        loss_fn = open_clip.loss.SigLipLoss(rank=args.rank, world_size=args.world, dist_impl=impl)
    memory, peaks, times = PeakMemory(torch.device("cpu")), [], []
    for _ in range(args.reps + 1):   # the first call is a warm-up
        for leaf in (image, text, logit_scale, logit_bias):
            leaf.grad = None
        dist.barrier()
        memory.start()
        start = time.perf_counter()
        loss_fn(image, text, logit_scale.exp(), logit_bias).backward()
        times.append((time.perf_counter() - start) * 1e3)
        peaks.append(memory.peak())
    print("RESULT " + json.dumps({"peak_bytes": max(peaks[1:]), "ms": statistics.median(times[1:])}), flush=True)
    dist.destroy_process_group()


def run_world(provider: str, world: int, args) -> dict:
    """Start `world` ranks; return the largest rank's peak bytes and the median of the ranks' times."""
    with tempfile.TemporaryDirectory() as scratch:
        init = f"file://{os.path.join(scratch, 'store')}"
        procs = [subprocess.Popen([sys.executable, __file__, "--rank", str(r), "--world", str(world), "--init", init,
                                   "--provider", provider, "--batch", str(args.batch), "--dim", str(args.dim),
                                   "--reps", str(args.reps)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(world)]
        results = []
        for r, proc in enumerate(procs):
            out, err = proc.communicate(timeout=1800)
            lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                raise RuntimeError(f"{provider} W={world} rank {r} failed: {err.strip()[-2000:]}")
            results.append(json.loads(lines[-1][len("RESULT "):]))
    return {"peak_bytes": max(r["peak_bytes"] for r in results), "ms": statistics.median(r["ms"] for r in results)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2048, help="pairs per rank, b")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--reps", type=int, default=3, help="timed calls per rank after one warm-up")
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS))
    parser.add_argument("--no-csv", action="store_true")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "data"))
    # one rank (started by main)
    parser.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--world", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--init", help=argparse.SUPPRESS)
    parser.add_argument("--provider", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rank is not None:
        rank_main(args)
        return 0
    from rows import Recorder, version_string

    recorder = Recorder("cpu: gloo ranks on one machine, 1 thread each", version_string())
    config = {"batch_per_rank": args.batch, "dim": args.dim, "dtype": "float32", "alpha": 0.0,
              "method": "largest rank's VmHWM minus VmRSS before the call (clear_refs)"}
    recorder.line(f"b = {args.batch} pairs per rank, D = {args.dim}, fp32, forward + backward, alpha 0")
    recorder.line("| provider | W | peak extra MiB per rank | median ms per call |")
    recorder.line("|---|---:|---:|---:|")
    for provider in args.providers:
        for world in args.worlds:
            result = run_world(provider, world, args)
            mib = result["peak_bytes"] / 2 ** 20
            recorder.row(OP, provider, "full", "memory_per_rank", "MiB", "W", world, mib, mib, mib, config)
            recorder.row(OP, provider, "full", "time", "ms", "W", world, result["ms"], config=config)
            recorder.line(f"| {provider} | {world} | {mib:.1f} | {result['ms']:.0f} |")
    if not args.no_csv:
        print(f"appended rows to {recorder.write(args.out, f'{OP}_memory_per_rank')}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main())
