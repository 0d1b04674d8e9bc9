"""alpha = 0 is open_clip's ClipLoss: loss and gradients (features and logit_scale).

    .venv/bin/python -m pytest tests/test_clip_equivalence.py
"""
import pytest
import torch
import torch.nn.functional as F

open_clip_loss = pytest.importorskip("open_clip.loss", reason="open_clip_torch is not installed")

from psd_kernels import PSDLoss, psd_clip_loss, psd_loss  # noqa: E402


def grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("b,d", [(1, 4), (7, 3), (97, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_global_layout_matches_clip_loss(b, d, dtype):
    img = F.normalize(torch.randn(b, d, dtype=dtype), dim=-1).requires_grad_(True)
    txt = F.normalize(torch.randn(b, d, dtype=dtype), dim=-1).requires_grad_(True)
    logit_scale = torch.tensor(2.3, dtype=dtype, requires_grad=True)  # the learned log-scale
    inputs = (img, txt, logit_scale)
    want = open_clip_loss.ClipLoss()(img, txt, logit_scale.exp())
    want_grads = grads(want, inputs)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)
    for got in (psd_clip_loss(img, txt, logit_scale.exp(), backend="reference"),
                PSDLoss(backend="reference")(img, txt, logit_scale.exp())):
        torch.testing.assert_close(got, want, **tol)
        for g, w in zip(grads(got, inputs), want_grads):
            torch.testing.assert_close(g, w, **tol)


@pytest.mark.parametrize("rank,world_size", [(0, 2), (1, 2), (2, 3)])
def test_local_loss_label_layout_matches_clip_loss(rank, world_size):
    """Local rows against gathered columns, positives at rank * b + i (open_clip's labels)."""
    b, d = 5, 8
    img_all = torch.randn(b * world_size, d, dtype=torch.float64, requires_grad=True)
    txt_all = torch.randn(b * world_size, d, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
    img, txt = img_all[rank * b:(rank + 1) * b], txt_all[rank * b:(rank + 1) * b]
    clip = open_clip_loss.ClipLoss(local_loss=True, rank=rank, world_size=world_size)
    labels = clip.get_ground_truth(img.device, b)
    # open_clip's local_loss logits: local rows against all gathered columns
    want = 0.5 * (F.cross_entropy(scale * img @ txt_all.T, labels) + F.cross_entropy(scale * txt @ img_all.T, labels))
    inputs = (img_all, txt_all, scale)
    want_grads = grads(want, inputs)
    for kw in ({"offset": rank * b}, {"labels": labels}):
        got = 0.5 * (psd_loss(img, txt_all, scale, backend="reference", **kw)
                     + psd_loss(txt, img_all, scale, backend="reference", **kw))
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        for g, w in zip(grads(got, inputs), want_grads):
            torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def test_output_dict_and_logit_bias_like_clip_loss():
    img, txt = torch.randn(6, 4), torch.randn(6, 4)
    scale = torch.tensor(5.0)
    want = open_clip_loss.ClipLoss()(img, txt, scale, output_dict=True)
    got = PSDLoss(backend="reference")(img, txt, scale, logit_bias=torch.tensor(-3.0), output_dict=True)
    assert set(got) == set(want) == {"contrastive_loss"}
    torch.testing.assert_close(got["contrastive_loss"], want["contrastive_loss"])
