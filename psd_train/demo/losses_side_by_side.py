"""The demo's first step: what the fused losses buy, measured on the spot beside open_clip's.

    .venv/bin/python -m psd_train.demo.losses_side_by_side             # B = 4096, D = 512, a few seconds
    .venv/bin/python -m psd_train.demo.losses_side_by_side --batch 8192

At one batch (B pairs of D-dim fp32 features on this CPU), forward + backward of
* the softmax loss with a separate teacher: psd_clip_loss (alpha 0.5) beside open_clip's
  ClipLoss + DistillClipLoss (the same math, materialised: contrastive + distill is twice
  the PSD loss with alpha 0.5 and the same teacher);
* the sigmoid loss: psd_siglip_loss beside open_clip's SigLipLoss (alpha 0: the same loss).
Each call runs once untimed at B / 8 (kernels loaded), then once timed; time is wall clock and
memory the peak extra resident memory of the call (psd_kernels.tools.peak_memory). The losses
are checked to agree. The fused losses never hold the B x B matrix; open_clip's hold several.
"""
from __future__ import annotations

import argparse
import time

import torch

from psd_kernels import psd_clip_loss, psd_siglip_loss
from psd_kernels.tools.peak_memory import PeakMemory, release_freed_memory_to_os

SCALE, BIAS, TEACHER_SCALE = 1.0 / 0.07, -10.0, 20.0


def _inputs(batch: int, dim: int, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)

    def unit(rows):
        return torch.nn.functional.normalize(torch.randn(rows, dim, generator=gen), dim=1)

    return {"image": unit(batch).requires_grad_(), "text": unit(batch).requires_grad_(),
            "teacher_image": unit(batch), "teacher_text": unit(batch),
            "scale": torch.tensor(SCALE, requires_grad=True), "bias": torch.tensor(BIAS, requires_grad=True)}


def _pairs():
    """(row label, psd's loss, open_clip's loss, factor: open_clip's value / psd's) of each comparison."""
    from open_clip.loss import DistillClipLoss, SigLipLoss

    distill, siglip = DistillClipLoss(), SigLipLoss()

    def psd_softmax(x):
        return psd_clip_loss(x["image"], x["text"], x["scale"], teacher_image=x["teacher_image"],
                             teacher_text=x["teacher_text"], teacher_scale=TEACHER_SCALE, alpha_image=0.5)

    def open_clip_softmax(x):
        contrastive, dist = distill(x["image"], x["text"], x["scale"], x["teacher_image"], x["teacher_text"],
                                    torch.tensor(TEACHER_SCALE))
        return contrastive + dist

    def psd_sigmoid(x):
        return psd_siglip_loss(x["image"], x["text"], x["scale"], x["bias"])

    def open_clip_sigmoid(x):
        return siglip(x["image"], x["text"], x["scale"], x["bias"])

    return [("softmax loss, separate teacher", psd_softmax, "ClipLoss + DistillClipLoss", open_clip_softmax, 2.0),
            ("sigmoid (SigLIP) loss", psd_sigmoid, "SigLipLoss", open_clip_sigmoid, 1.0)]


def _measure(loss_fn, batch: int, dim: int) -> dict:
    loss_fn(_inputs(max(8, batch // 8), dim)).backward()  # untimed: the kernels load
    x = _inputs(batch, dim)
    memory = PeakMemory(torch.device("cpu"))
    memory.start()
    start = time.perf_counter()
    loss = loss_fn(x)
    loss.backward()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "mib": memory.peak() / 2 ** 20, "loss": float(loss.detach())}


def measure(batch: int = 4096, dim: int = 512) -> list[dict]:
    """One row per comparison: psd's and open_clip's time (s) and peak extra memory (MiB)."""
    release_freed_memory_to_os()
    rows = []
    for label, psd_fn, peer, peer_fn, factor in _pairs():
        ours, theirs = _measure(psd_fn, batch, dim), _measure(peer_fn, batch, dim)
        if abs(theirs["loss"] / factor - ours["loss"]) > 1e-3 * max(1.0, abs(ours["loss"])):
            raise AssertionError(f"{label}: psd's loss {ours['loss']:.6f} and {peer}'s {theirs['loss']:.6f} "
                                 f"(/ {factor:g}) differ")
        rows.append({"loss": label, "peer": peer, "batch": batch, "dim": dim, "psd_s": ours["seconds"],
                     "psd_mib": ours["mib"], "open_clip_s": theirs["seconds"], "open_clip_mib": theirs["mib"]})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| loss (B x D, fp32, forward + backward) | psd | open_clip | psd's time / open_clip's | "
             "psd's memory / open_clip's |", "|---|---|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['loss']} ({r['batch']} x {r['dim']}) | {r['psd_s']:.2f} s, {r['psd_mib']:.0f} MiB | "
                     f"{r['peer']}: {r['open_clip_s']:.2f} s, {r['open_clip_mib']:.0f} MiB | "
                     f"{r['psd_s'] / r['open_clip_s']:.2f} | "
                     f"{r['psd_mib'] / max(r['open_clip_mib'], 1e-9):.1%} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=512)
    args = parser.parse_args(argv)
    print(table(measure(args.batch, args.dim)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
