"""Distributed PSD loss (psd_kernels.distributed, PSDLoss with world_size > 1) on CPU with gloo.

    .venv/bin/python -m pytest tests/test_distributed.py -q

One launch of three worker processes (tests/distributed_worker.py) covers a group of 3
(the default group) and a group of 2 (global ranks 1 and 2 via process_group), equal and
unequal local batches, every (local_loss, gather_with_grad) mode, both teacher modes, and
every backend available on CPU. Each rank's loss and gradients are compared with the
exact single-process loss on the concatenated batch (psd_kernels.backends.reference, float64),
with the averaging factors psd_kernels.distributed documents. Let O be the single-process
objective and c = 1/W for reduction "mean" in local mode (the ranks' losses average to O),
c = 1 otherwise (they add up to O):

    local mode:  c * sum_r loss_r = O;   c * sum_r dloss_r/ds = dO/ds
    global mode: loss_r = O;             dloss_r/ds = dO/ds on every rank
    features of rank r, gather_with_grad:        W * dO/dx_r (global), dO/dx_r / c (local)
    features of rank r, no gather_with_grad:     dO/dx_r (global); local: dO'/dx_r / c, where
                                                 O' detaches the columns (open_clip drops them)
    teacher features: no gradient on any rank.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from psd_kernels import PSDLoss, SoftSubset, available_backends, psd_clip_loss
from psd_kernels.backends import reference
from psd_kernels.distributed import psd_clip_loss_distributed
from psd_kernels.schedule import IMAGE_ROWS, TEXT_ROWS

WORKER = Path(__file__).with_name("distributed_worker.py")
WORLD = 3
WORKER_TIMEOUT_S = 300  # the workers together; a hung collective fails after 60 s inside them
pytestmark = pytest.mark.timeout(WORKER_TIMEOUT_S + 60)


def cpu_backends() -> list:
    return [name for name, why_not in available_backends("cpu").items() if why_not is None]


@pytest.fixture(autouse=True)
def one_thread():
    """The matrices here are tiny: one intra-op thread beats OpenMP hand-offs (5x on 2 busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Run the three workers once; return each rank's saved results."""
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is not available")
    out = tmp_path_factory.mktemp("psd_distributed")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    logs = [open(out / f"log{r}.txt", "w") for r in range(WORLD)]
    procs = [subprocess.Popen([sys.executable, str(WORKER), "--rank", str(r), "--world", str(WORLD),
                               "--init", f"file://{out}/store", "--out", str(out),
                               "--backends", ",".join(cpu_backends()), "--timeout", "60"],
                              stdout=logs[r], stderr=subprocess.STDOUT, env=env) for r in range(WORLD)]
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
    if any(p.returncode != 0 for p in procs):
        text = "\n".join(f"--- rank {r} (exit {p.returncode}) ---\n" + (out / f"log{r}.txt").read_text()[-3000:]
                         for r, p in enumerate(procs))
        pytest.fail(f"distributed workers failed or timed out after {WORKER_TIMEOUT_S} s:\n{text}")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def cases(ranks, kind):
    """{case name: [each group member's record, in group-rank order]} for one kind of case."""
    grouped = {}
    for data in ranks:
        for name, rec in data["results"].items():
            if rec["case"]["kind"] == kind:
                grouped.setdefault(name, {})[rec["rank"]] = rec
    assert grouped, f"the workers ran no {kind} case"
    return {name: [members[r] for r in sorted(members)] for name, members in grouped.items()}


# -- the single-process reference on the concatenated batch --------------------------------------
def reference_rows(inputs, case, alpha, detach_columns):
    """Per-row losses (2, N) of the exact loss in float64, with differentiable leaves."""
    f64 = lambda t: t.detach().to(torch.float64)
    image, text = f64(inputs["image"]).requires_grad_(True), f64(inputs["text"]).requires_grad_(True)
    scale = f64(inputs["scale"]).requires_grad_(True)
    cols_image, cols_text = (image.detach(), text.detach()) if detach_columns else (image, text)
    teacher_scale = torch.tensor(inputs["teacher_scale"], dtype=torch.float64)
    t_image, t_text = ((f64(inputs["teacher_image"]), f64(inputs["teacher_text"])) if case["teacher"]
                       else (None, None))
    if case["teacher_mode"] == "cross":
        image_teacher, text_teacher = (t_image, t_text), (t_text, t_image)
    else:  # within-modality: caption-caption targets for image rows, image-image for text rows
        t_image = image.detach() if t_image is None else t_image
        t_text = text.detach() if t_text is None else t_text
        image_teacher, text_teacher = (t_text, t_text), (t_image, t_image)
    labels = torch.arange(image.shape[0])
    alpha = alpha.to(torch.float64)
    rows = torch.stack([
        reference.psd_rows(image, cols_text, scale, alpha[0], labels, *image_teacher, teacher_scale),
        reference.psd_rows(text, cols_image, scale, alpha[1], labels, *text_teacher, teacher_scale)])
    return rows, (image, text, scale)


def reduce(rows, reduction):
    if reduction == "mean":
        return 0.5 * rows.mean(dim=1).sum()
    if reduction == "sum":
        return 0.5 * rows.sum()
    return rows


def objective(rows, reduction, weights):
    return (rows * weights).sum() if reduction == "none" else reduce(rows, reduction)


_REFERENCE = {}  # backends share their inputs (distributed_worker.case_seed): compute each reference once


def reference_loss_and_grads(inputs, case, alpha, reduction, key):
    if key not in _REFERENCE:
        weights = inputs["weights"].to(torch.float64)
        rows, leaves = reference_rows(inputs, case, alpha,
                                      detach_columns=case["local_loss"] and not case["gather_with_grad"])
        grads = torch.autograd.grad(objective(rows, reduction, weights), leaves)
        _REFERENCE[key] = reduce(rows, reduction).detach(), grads
    return _REFERENCE[key]


def check_against_reference(members, inputs, case, alpha, reduction, where, step=0):
    """Every group member's loss and gradients against the single-process loss (module docstring)."""
    world = len(members)
    sizes = inputs["sizes"]
    dtype = inputs["image"].dtype
    tol = dict(rtol=1e-9, atol=1e-11) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-5)
    key = (repr(sorted((k, v) for k, v in case.items() if k != "backend")), str(dtype), step)
    expected_loss, grads = reference_loss_and_grads(inputs, case, alpha, reduction, key)
    c = 1.0 / world if reduction == "mean" else 1.0
    f64 = lambda t: t.to(torch.float64)
    losses = [f64(m["loss"]) for m in members]
    if case["local_loss"]:
        if reduction == "none":
            close(torch.cat(losses, dim=1), expected_loss, tol, f"{where}: rows")
        else:
            close(c * sum(losses), expected_loss, tol, f"{where}: loss")
        close(c * sum(f64(m["scale"]) for m in members), grads[2], tol, f"{where}: logit_scale gradient, summed")
        factor = 1.0 / c
    else:
        for r, m in enumerate(members):
            close(losses[r], expected_loss, tol, f"{where}: rank {r} loss")
            close(f64(m["scale"]), grads[2], tol, f"{where}: rank {r} logit_scale gradient")
        factor = float(world) if case["gather_with_grad"] else 1.0
    for r, m in enumerate(members):
        lo, hi = sum(sizes[:r]), sum(sizes[:r + 1])
        for key, grad in (("image", grads[0]), ("text", grads[1])):
            close(f64(m[key]), factor * grad[lo:hi], tol, f"{where}: rank {r} {key} gradient")
        assert m["teacher_image"] is None and m["teacher_text"] is None, f"{where}: a teacher got a gradient"


def close(actual, expected, tol, where):
    torch.testing.assert_close(actual, expected, **tol, msg=lambda detail: f"{where}\n{detail}")


def describe(name, case):
    keys = ("backend", "sizes", "local_loss", "gather_with_grad", "teacher", "teacher_mode", "reduction")
    return f"{name} " + ", ".join(f"{k}={case[k]}" for k in keys if k in case)


# -- tests -----------------------------------------------------------------------------------
def test_functional_matches_single_process(ranks):
    for name, members in cases(ranks, "functional").items():
        case, inputs = members[0]["case"], members[0]["inputs"]
        assert len(members) == members[0]["group_size"] == len(inputs["sizes"])
        check_against_reference([m["out"] for m in members], inputs, case, inputs["alpha"], case["reduction"],
                                describe(name, case))


def test_within_modality_on_ranks_is_psd_clip_loss_on_the_whole_batch(ranks):
    """teacher_mode="within_modality": the ranks' losses and feature gradients (groups of 2 and 3)
    equal psd_clip_loss(teacher_mode="within_modality") on the concatenated batch, float64."""
    group_sizes = set()
    for name, members in cases(ranks, "functional").items():
        case, inputs = members[0]["case"], members[0]["inputs"]
        if case["teacher_mode"] != "within_modality" or not case["gather_with_grad"]:
            continue
        leaf = lambda key: inputs[key].detach().to(torch.float64).requires_grad_(True)
        image, text = leaf("image"), leaf("text")
        teacher = dict(teacher_image=inputs["teacher_image"].double(), teacher_text=inputs["teacher_text"].double()) \
            if case["teacher"] else {}
        whole = psd_clip_loss(image, text, inputs["scale"], teacher_scale=inputs["teacher_scale"],
                              alpha_image=inputs["alpha"][0], alpha_text=inputs["alpha"][1],
                              teacher_mode="within_modality", backend="reference", **teacher)
        whole.backward()
        outs, world, sizes = [m["out"] for m in members], len(members), inputs["sizes"]
        tol = dict(rtol=1e-9, atol=1e-11) if outs[0]["loss"].dtype == torch.float64 else dict(rtol=2e-4, atol=2e-5)
        where = describe(name, case)
        if case["local_loss"]:  # the ranks' losses average to the whole batch's
            close(sum(o["loss"].double() for o in outs) / world, whole.detach(), tol, f"{where}: loss")
        else:
            for r, o in enumerate(outs):
                close(o["loss"].double(), whole.detach(), tol, f"{where}: rank {r} loss")
        for r, o in enumerate(outs):  # gather_with_grad: W times the whole batch's gradient of its rows
            lo, hi = sum(sizes[:r]), sum(sizes[:r + 1])
            close(o["image"].double(), world * image.grad[lo:hi], tol, f"{where}: rank {r} image gradient")
            close(o["text"].double(), world * text.grad[lo:hi], tol, f"{where}: rank {r} text gradient")
        group_sizes.add(world)
    assert group_sizes == {2, 3}, f"within-modality cases ran in groups of {sorted(group_sizes)}"


def module_alpha(case, sizes, step, rank_of=lambda r: r):
    """alpha_max on each rank's own soft subset (drawn from its own stream), concatenated."""
    subset = SoftSubset(case["soft_fraction"], case["seed"])
    return torch.stack([torch.cat([subset.mask(n, step, stream, rank_of(r)).to(torch.float64) * case["alpha_max"]
                                   for r, n in enumerate(sizes)]) for stream in (IMAGE_ROWS, TEXT_ROWS)])


def test_psdloss_matches_single_process(ranks):
    streams_matter = False
    for name, members in cases(ranks, "module").items():
        case, inputs = members[0]["case"], members[0]["inputs"]
        for step in range(case["steps"]):
            alpha = module_alpha(case, inputs["sizes"], step)
            # the check could tell a shared stream apart: rank 0's stream on every rank draws other rows
            streams_matter |= not torch.equal(alpha, module_alpha(case, inputs["sizes"], step, rank_of=lambda r: 0))
            check_against_reference([m["out"]["steps"][step] for m in members], inputs, case, alpha, "mean",
                                    f"{describe(name, case)} step {step}", step=step)
        assert all(m["out"]["final_step"] == case["steps"] for m in members), f"{name}: step counter"
    assert streams_matter, "no case draws soft subsets that differ between ranks"


def test_alpha_zero_is_open_clip_clip_loss(ranks):
    pytest.importorskip("open_clip", reason="needs the training extras: pip install '.[train]'")
    for name, members in cases(ranks, "openclip").items():
        for r, m in enumerate(members):
            ours, theirs = m["out"]["psd"], m["out"]["open_clip"]
            for key in ("loss", "image", "text", "scale"):
                close(ours[key], theirs[key], dict(rtol=1e-9, atol=1e-11),
                      f"{describe(name, m['case'])}: rank {r} {key}")


def test_bad_input_on_one_rank_raises_on_every_rank(ranks):
    errors = [data["errors"] for data in ranks]
    # the rank with the bad input raises exactly the single-process error
    with pytest.raises(ValueError) as alpha_error:
        psd_clip_loss(torch.randn(3, 4), torch.randn(3, 4), 10.0, alpha_image=1.5)
    with pytest.raises(ValueError) as shape_error:
        PSDLoss()(torch.randn(4), torch.randn(4, 4), 10.0)
    for case, single in (("alpha_out_of_range", alpha_error.value), ("image_not_2d", shape_error.value)):
        for r, errs in enumerate(errors):
            if r == 1:
                assert errs[case] == ("ValueError", str(single)), f"{case}: rank 1 raised {errs[case]}"
            else:
                kind, message = errs[case]
                assert kind == "RuntimeError" and "rank(s) [1]" in message, f"{case}: rank {r} raised {errs[case]}"
    # disagreement between ranks: the same clear error on every rank
    for case, words in (("dim_mismatch", "embedding dim must be the same on every rank"),
                        ("teacher_on_one_rank", "teacher embedding dim"),
                        ("wrong_rank", "PSDLoss was built with rank="),
                        ("grad_on_some_ranks", "features requiring grad (gather_with_grad) must be the same")):
        for r, errs in enumerate(errors):
            kind, message = errs[case]
            assert kind == "ValueError" and words in message, f"{case}: rank {r} raised {errs[case]}"
    # the process group is still usable afterwards
    assert all(torch.isfinite(errs["valid_after_errors"]) for errs in errors)


@pytest.mark.parametrize("local_loss", [True, False])
@pytest.mark.parametrize("teacher_mode", ["cross", "within_modality"])
def test_without_process_group_is_the_single_process_loss(local_loss, teacher_mode):
    """No torch.distributed: psd_clip_loss_distributed is the loss on this batch (world of one)."""
    g = torch.Generator().manual_seed(7)
    image, text, t_image, t_text = (torch.randn(5, d, generator=g, dtype=torch.float64) for d in (6, 6, 4, 4))
    alpha = torch.rand(5, generator=g, dtype=torch.float64)
    got = psd_clip_loss_distributed(image, text, 9.0, teacher_image=t_image, teacher_text=t_text,
                                    teacher_scale=4.0, alpha_image=alpha, teacher_mode=teacher_mode,
                                    local_loss=local_loss, backend="reference")
    case = dict(teacher=True, teacher_mode=teacher_mode)
    inputs = dict(image=image, text=text, teacher_image=t_image, teacher_text=t_text,
                  scale=torch.tensor(9.0, dtype=torch.float64), teacher_scale=4.0)
    rows, _ = reference_rows(inputs, case, torch.stack([alpha, alpha]), detach_columns=False)
    torch.testing.assert_close(got, reduce(rows, "mean").detach(), rtol=1e-12, atol=1e-12)
