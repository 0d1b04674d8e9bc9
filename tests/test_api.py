"""The public API: backend selection, and PSDLoss as a drop-in for open_clip's losses.

    .venv/bin/python -m pytest tests/test_api.py
"""
import pytest
import torch

import psd_kernels
from psd_kernels import BackendUnavailable, PSDLoss, available_backends, psd_clip_loss, psd_loss
from psd_kernels import backends

F64 = torch.float64


def pair(b=8, d=5, dtype=F64):
    return torch.randn(b, d, dtype=dtype, requires_grad=True), torch.randn(b, d, dtype=dtype, requires_grad=True)


def test_missing_backend_raises_clear_error_and_auto_falls_back(monkeypatch):
    monkeypatch.setitem(backends._MODULES, "cpp", "psd_kernels._not_built_for_this_test")
    x, y = pair()
    with pytest.raises(BackendUnavailable, match="backend 'cpp' is not available"):
        psd_loss(x, y, 2.0, backend="cpp")
    assert "not available" in available_backends("cpu")["cpp"]
    torch.testing.assert_close(psd_loss(x, y, 2.0), psd_loss(x, y, 2.0, backend="reference"))


def test_triton_refuses_cpu_tensors_without_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, y = pair(dtype=torch.float32)
    with pytest.raises(BackendUnavailable, match="triton"):
        psd_loss(x, y, 2.0, backend="triton")


@pytest.mark.parametrize("name", [b for b in psd_kernels.BACKENDS if b != "reference"])
def test_every_available_cpu_backend_agrees_with_reference(name):
    """Each backend built here for CPU float32 matches the reference (skipped, with the reason, where
    it is not: then there is nothing to compare the reference with)."""
    reason = available_backends("cpu", torch.float32)[name]
    if reason is not None:
        pytest.skip(f"backend {name!r} does not run on CPU float32 here: {reason}")
    x, y = pair(13, 7, torch.float32)
    want = psd_clip_loss(x, y, 3.0, alpha_image=0.4, backend="reference")
    torch.testing.assert_close(psd_clip_loss(x, y, 3.0, alpha_image=0.4, backend=name), want,
                               rtol=1e-5, atol=1e-5)


def test_teacher_under_open_clip_distill_names_is_the_same_teacher():
    img, txt = pair()
    t_img, t_txt = torch.randn(8, 3, dtype=F64), torch.randn(8, 3, dtype=F64)
    opts = dict(alpha_max=0.5, backend="reference")
    ours = PSDLoss(**opts)(img, txt, 3.0, teacher_image_features=t_img, teacher_text_features=t_txt,
                           teacher_logit_scale=6.0)
    theirs = PSDLoss(**opts)(img, txt, 3.0, dist_image_features=t_img, dist_text_features=t_txt,
                             dist_logit_scale=6.0, output_dict=True)
    want = psd_clip_loss(img, txt, 3.0, teacher_image=t_img, teacher_text=t_txt, teacher_scale=6.0,
                         alpha_image=0.5, backend="reference")
    torch.testing.assert_close(ours, want, rtol=1e-14, atol=0)
    torch.testing.assert_close(theirs["contrastive_loss"], want, rtol=1e-14, atol=0)


def test_fixed_teacher_scale_option_and_soft_fraction():
    img, txt = pair(10)
    loss_fn = PSDLoss(alpha_max=0.8, schedule="constant", soft_fraction=0.5, seed=1, teacher_scale=9.0,
                      backend="reference")
    got = loss_fn(img, txt, 3.0)
    from psd_kernels.schedule import IMAGE_ROWS, TEXT_ROWS
    a_img = 0.8 * loss_fn.subset.mask(10, 0, IMAGE_ROWS).to(F64)
    a_txt = 0.8 * loss_fn.subset.mask(10, 0, TEXT_ROWS).to(F64)
    assert int((a_img > 0).sum()) == 5 and not torch.equal(a_img, a_txt)
    want = psd_clip_loss(img, txt, 3.0, teacher_scale=9.0, alpha_image=a_img, alpha_text=a_txt, backend="reference")
    torch.testing.assert_close(got, want, rtol=1e-14, atol=0)


def test_within_modality_teacher_is_two_one_direction_losses():
    img, txt = pair(9)
    t_img, t_txt = torch.randn(9, 4, dtype=F64), torch.randn(9, 4, dtype=F64)
    loss_fn = PSDLoss(alpha_max=0.3, schedule="constant", teacher_mode="within_modality", backend="reference")
    got = loss_fn(img, txt, 2.0, teacher_image_features=t_img, teacher_text_features=t_txt)
    want = 0.5 * (psd_loss(img, txt, 2.0, teacher_x=t_txt, teacher_y=t_txt, alpha=0.3, backend="reference")
                  + psd_loss(txt, img, 2.0, teacher_x=t_img, teacher_y=t_img, alpha=0.3, backend="reference"))
    torch.testing.assert_close(got, want, rtol=1e-14, atol=0)
    own = loss_fn(img, txt, 2.0)  # default teacher: the student's own features, detached
    want_own = 0.5 * (psd_loss(img, txt, 2.0, teacher_x=txt, teacher_y=txt, alpha=0.3, backend="reference")
                      + psd_loss(txt, img, 2.0, teacher_x=img, teacher_y=img, alpha=0.3, backend="reference"))
    torch.testing.assert_close(own, want_own, rtol=1e-14, atol=0)


def test_alpha_zero_step_is_clip_whatever_the_teacher():
    img, txt = pair()
    loss_fn = PSDLoss(alpha_max=0.5, ramp_steps=100, backend="reference")  # alpha(0) = 0
    got = loss_fn(img, txt, 3.0, teacher_image_features=torch.randn(8, 2, dtype=F64),
                  teacher_text_features=torch.randn(8, 2, dtype=F64))
    torch.testing.assert_close(got, psd_clip_loss(img, txt, 3.0, backend="reference"), rtol=1e-14, atol=0)


def test_public_names():
    assert set(psd_kernels.__all__) >= {"PSDLoss", "psd_loss", "psd_clip_loss", "available_backends"}


def test_teacher_shapes_are_checked_even_when_alpha_is_zero():
    img, txt = pair()
    with pytest.raises(ValueError, match="teacher shapes"):
        PSDLoss(alpha_max=0.5, ramp_steps=100)(img, txt, 3.0, teacher_image_features=torch.randn(7, 2, dtype=F64),
                                               teacher_text_features=torch.randn(8, 2, dtype=F64))


def cpu_backends():
    return [name for name, why_not in available_backends("cpu").items() if why_not is None]


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("separate_teacher", [False, True])
def test_psd_clip_loss_within_modality_is_two_one_direction_calls(backend, reduction, separate_teacher):
    """teacher_mode="within_modality": image rows against caption-caption targets, caption rows
    against image-image targets; loss and every gradient equal the two psd_loss calls."""
    dtype = F64 if backend != "triton" else torch.float32
    b, d = 11, 5
    img, txt = (torch.randn(b, d, dtype=dtype, requires_grad=True) for _ in range(2))
    scale = torch.tensor(4.0, dtype=dtype, requires_grad=True)
    t_img, t_txt = (torch.randn(b, 3, dtype=dtype) for _ in range(2)) if separate_teacher else (None, None)
    a_img, a_txt = torch.rand(b, dtype=dtype), torch.rand(b, dtype=dtype)
    got = psd_clip_loss(img, txt, scale, teacher_image=t_img, teacher_text=t_txt, teacher_scale=6.0,
                        alpha_image=a_img, alpha_text=a_txt, teacher_mode="within_modality", reduction=reduction,
                        backend=backend)
    weights = torch.rand(got.shape, dtype=got.dtype)
    got_grads = torch.autograd.grad((got * weights).sum(), (img, txt, scale))
    own_img = img.detach() if t_img is None else t_img
    own_txt = txt.detach() if t_txt is None else t_txt
    one = dict(teacher_scale=6.0, reduction="none", backend="reference")
    rows = torch.stack([
        psd_loss(img.double(), txt.double(), scale.double(), teacher_x=own_txt.double(), teacher_y=own_txt.double(),
                 alpha=a_img.double(), **one),
        psd_loss(txt.double(), img.double(), scale.double(), teacher_x=own_img.double(), teacher_y=own_img.double(),
                 alpha=a_txt.double(), **one)])
    want = {"none": rows, "sum": 0.5 * rows.sum(), "mean": 0.5 * rows.mean(dim=1).sum()}[reduction]
    want_grads = torch.autograd.grad((want * weights.double()).sum(), (img, txt, scale))
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == F64 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.double(), want, **tol)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g.double(), w.double(), **tol)


def test_teacher_mode_is_checked():
    with pytest.raises(ValueError, match="teacher_mode must be one of"):
        psd_clip_loss(torch.randn(3, 2), torch.randn(3, 2), 1.0, teacher_mode="mutual")
