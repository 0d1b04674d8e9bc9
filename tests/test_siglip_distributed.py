"""The sigmoid loss across ranks (PSDSigLipLoss with world_size > 1) on CPU with gloo, at W = 2, 3, 4.

    .venv/bin/python -m pytest tests/test_siglip_distributed.py -q

W worker processes (tests/siglip_distributed_worker.py) per world size, for every CPU backend
that has the sigmoid loss:
* alpha = 0: each rank's loss and gradients (its images and texts, logit_scale before exp,
  logit_bias) equal open_clip's SigLipLoss with the same rank, world size and dist_impl, for
  each dist_impl (bidir, shift, reduce, gather), in float64 to 1e-10;
* alpha > 0 with a self teacher at another scale and bias, and with separate teacher features,
  at equal and unequal local batches: with L the single-process loss of the whole batch (mean
  over its N image rows), (1/W) sum_r loss_r = L, (1/W) sum_r dloss_r/dscale = dL/dscale, and
  rank r's image and text gradients are W times dL/d(its rows) (texts are gathered with
  gradient, so every rank's loss reaches them);
* a bad input on one rank raises on every rank instead of hanging.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from psd_kernels import psd_siglip_loss

pytest.importorskip("open_clip", reason="compares with open_clip's SigLipLoss")
from test_siglip_api import siglip_cpu_backends  # noqa: E402

WORKER = Path(__file__).with_name("siglip_distributed_worker.py")
WORLDS = (2, 3, 4)
TOL = dict(rtol=1e-10, atol=1e-10)
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module", params=WORLDS, ids=lambda w: f"W{w}")
def ranks(request, tmp_path_factory):
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    world = request.param
    out = tmp_path_factory.mktemp(f"siglip_w{world}")
    init = f"file://{out / 'store'}"
    procs = [subprocess.Popen([sys.executable, str(WORKER), "--rank", str(r), "--world", str(world), "--init", init,
                               "--out", str(out), "--backends", *siglip_cpu_backends()],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(world)]
    logs = [p.communicate(timeout=500)[0] for p in procs]
    for r, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {r} of {world} failed:\n{log[-4000:]}"
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]


def close(actual, expected, where):
    torch.testing.assert_close(actual, expected, **TOL, msg=lambda detail: f"{where}\n{detail}")


def test_alpha_zero_equals_open_clip_siglip_for_every_dist_impl(ranks):
    names = [name for name in ranks[0] if name.startswith("open_clip/")]
    assert len(names) == 4 * len(siglip_cpu_backends())
    for name in names:
        for r, records in enumerate(ranks):
            theirs, ours = records[name]["open_clip"], records[name]["psd"]
            for key in ("loss", "image", "text", "logit_scale", "logit_bias"):
                close(ours[key], theirs[key], f"W={len(ranks)} rank {r} {name}: {key}")


def single_process(batch: dict, alpha_image, alpha_text, teacher: str):
    """L and its gradients on the concatenated batch (the reference backend, float64)."""
    x = {k: batch[k].clone().requires_grad_(True) for k in ("image", "text", "logit_scale", "logit_bias")}
    kwargs = dict(teacher_scale=20.0, teacher_bias=-2.0)
    if teacher == "separate":
        kwargs.update(teacher_image=batch["teacher_image"], teacher_text=batch["teacher_text"])
    loss = psd_siglip_loss(x["image"], x["text"], x["logit_scale"].exp(), x["logit_bias"], alpha_image=alpha_image,
                           alpha_text=alpha_text, backend="reference", **kwargs)
    grads = torch.autograd.grad(loss, [x["image"], x["text"], x["logit_scale"], x["logit_bias"]])
    return loss.detach(), dict(zip(("image", "text", "logit_scale", "logit_bias"), grads))


def test_soft_targets_on_ranks_are_the_single_process_loss(ranks):
    world = len(ranks)
    names = [name for name in ranks[0] if name.startswith("soft/")]
    assert len(names) == 4 * len(siglip_cpu_backends())  # equal and unequal batches x two teachers
    for name in names:
        members = [records[name]["psd"] for records in ranks]
        sizes, batch = ranks[0][name]["sizes"], ranks[0][name]["batch"]
        alpha_image = torch.cat([torch.as_tensor(m["alpha_image"], dtype=torch.float64).expand(n)
                                 for m, n in zip(members, sizes)])
        alpha_text = torch.cat([torch.as_tensor(m["alpha_text"], dtype=torch.float64).expand(n)
                                for m, n in zip(members, sizes)])
        assert 0 < int((alpha_image > 0).sum()) < len(alpha_image), f"{name}: some rows soft, some hard"
        expected, grads = single_process(batch, alpha_image, alpha_text, name.split("/")[2])
        close(sum(m["loss"] for m in members) / world, expected, f"W={world} {name}: mean of the ranks' losses")
        for key in ("logit_scale", "logit_bias"):
            close(sum(m[key] for m in members) / world, grads[key], f"W={world} {name}: {key} gradient")
        for r, m in enumerate(members):
            lo, hi = sum(sizes[:r]), sum(sizes[:r + 1])
            for key in ("image", "text"):
                close(m[key], world * grads[key][lo:hi], f"W={world} {name}: rank {r} {key} gradient")


def test_a_bad_input_on_one_rank_raises_on_every_rank(ranks):
    for r, records in enumerate(ranks):
        error = records["errors"].get("bad_width_on_rank_1", "")
        if r == 1:
            assert "text_features" in error and "embedding dim" in error, error
        else:
            assert "rank(s) [1]" in error, f"rank {r}: {error!r}"
