"""The sigmoid (SigLIP) loss's public API: psd_siglip_loss and PSDSigLipLoss, one process.

    .venv/bin/python -m pytest tests/test_siglip_api.py -q

* alpha = 0 is open_clip's SigLipLoss in value and in every gradient (features, logit_scale
  before exp, logit_bias) in float64 to 1e-10, for every CPU backend with the sigmoid loss;
* the function's reductions, teachers and alphas against the float64 reference's own function;
* the module: open_clip's constructor and forward, output_dict, DistillClipLoss's teacher names,
  a fixed teacher scale and bias, the step in state_dict, the alpha schedule reaching the loss;
* every malformed input raises an error that names the argument.
"""
from __future__ import annotations

import math

import pytest
import torch

from psd_kernels import PSDSigLipLoss, psd_siglip_loss
from psd_kernels.backends import available_backends
from psd_kernels.backends.siglip_reference import siglip_loss_reference

B, D = 9, 7
TOL = dict(rtol=1e-10, atol=1e-10)


def siglip_cpu_backends() -> list:
    """The backends that run the sigmoid loss on CPU in float64 (the reference, the C++ op when built)."""
    return [name for name, why_not in available_backends("cpu", torch.float64, "siglip_rows").items() if why_not is None]


def batch(b=B, d=D, dtype=torch.float64):
    image = torch.nn.functional.normalize(torch.randn(b, d, dtype=dtype), dim=1).requires_grad_(True)
    text = torch.nn.functional.normalize(torch.randn(b, d, dtype=dtype), dim=1).requires_grad_(True)
    logit_scale = torch.tensor(math.log(10.0), dtype=dtype, requires_grad=True)
    logit_bias = torch.tensor(-10.0 + 7.5, dtype=dtype, requires_grad=True)
    return image, text, logit_scale, logit_bias


def grads(loss, *tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("backend", siglip_cpu_backends())
@pytest.mark.parametrize("b, d", [(1, 3), (9, 7), (97, 100)])
def test_alpha_zero_is_open_clip_siglip_loss(backend, b, d):
    open_clip = pytest.importorskip("open_clip")
    image, text, logit_scale, logit_bias = batch(b, d)
    theirs = open_clip.loss.SigLipLoss()(image, text, logit_scale.exp(), logit_bias)
    ours = PSDSigLipLoss(backend=backend)(image, text, logit_scale.exp(), logit_bias)
    torch.testing.assert_close(ours, theirs, **TOL)
    for g_ours, g_theirs in zip(grads(ours, image, text, logit_scale, logit_bias),
                                grads(theirs, image, text, logit_scale, logit_bias)):
        torch.testing.assert_close(g_ours, g_theirs, **TOL)


@pytest.mark.parametrize("backend", siglip_cpu_backends())
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("teacher", ["self", "self_scaled", "separate"])
def test_function_matches_the_reference_function(backend, reduction, teacher):
    image, text, logit_scale, logit_bias = batch()
    kwargs = {}
    if teacher != "self":
        kwargs.update(teacher_scale=20.0, teacher_bias=-3.0)
    if teacher == "separate":
        kwargs.update(teacher_image=torch.randn(B, 5, dtype=torch.float64),
                      teacher_text=torch.randn(B, 5, dtype=torch.float64))
    alpha_image, alpha_text = torch.rand(B, dtype=torch.float64), 0.4
    ours = psd_siglip_loss(image, text, logit_scale.exp(), logit_bias, alpha_image=alpha_image, alpha_text=alpha_text,
                           reduction=reduction, backend=backend, **kwargs)
    ref_kwargs = {k.replace("_image", "_x").replace("_text", "_y"): v for k, v in kwargs.items()}
    theirs = siglip_loss_reference(image, text, logit_scale.exp(), logit_bias, alpha_rows=alpha_image,
                                   alpha_cols=alpha_text, reduction=reduction, **ref_kwargs)
    torch.testing.assert_close(ours, theirs, **TOL)
    upstream = torch.randn_like(ours)
    for g_ours, g_theirs in zip(torch.autograd.grad(ours, (image, text, logit_scale, logit_bias), upstream),
                                torch.autograd.grad(theirs, (image, text, logit_scale, logit_bias), upstream)):
        torch.testing.assert_close(g_ours, g_theirs, **TOL)


def test_module_takes_open_clip_arguments_teachers_and_keeps_its_step():
    image, text, logit_scale, logit_bias = batch()
    loss_fn = PSDSigLipLoss(False, 0, 1, "gather", alpha_max=0.5, schedule="linear", ramp_steps=4,
                            teacher_scale=25.0, teacher_bias=-1.0, backend="reference")
    assert loss_fn.current_alpha() == 0.0
    out = loss_fn(image, text, logit_scale.exp(), logit_bias, output_dict=True)
    assert set(out) == {"contrastive_loss"} and loss_fn.step == 1
    # at step 2 alpha is 0.25: the module's loss is the function's with that alpha, the fixed teacher
    loss_fn.step = 2
    teacher_image, teacher_text = torch.randn(B, 4, dtype=torch.float64), torch.randn(B, 4, dtype=torch.float64)
    ours = loss_fn(image, text, logit_scale.exp(), logit_bias, dist_image_features=teacher_image,
                   dist_text_features=teacher_text)
    expected = psd_siglip_loss(image, text, logit_scale.exp(), logit_bias, teacher_image=teacher_image,
                               teacher_text=teacher_text, teacher_scale=25.0, teacher_bias=-1.0, alpha_image=0.25,
                               backend="reference")
    torch.testing.assert_close(ours, expected, **TOL)
    state = loss_fn.state_dict()
    restored = PSDSigLipLoss(alpha_max=0.5, ramp_steps=4)
    restored.load_state_dict(state)
    assert restored.step == 3
    loss_fn.eval()
    loss_fn(image, text, logit_scale.exp(), logit_bias)
    assert loss_fn.step == 3, "an evaluation forward is not a training step"


def test_self_teacher_at_the_students_scale_and_bias_scales_the_siglip_gradient():
    """t = l gives q = (1 - a) z + a sigmoid(l), so g = (1 - a)(sigmoid(l) - z): SigLIP's gradient times (1 - a)."""
    image, text, logit_scale, logit_bias = batch()
    plain = psd_siglip_loss(image, text, logit_scale.exp(), logit_bias, backend="reference")
    soft = psd_siglip_loss(image, text, logit_scale.exp(), logit_bias, alpha_image=0.3, backend="reference")
    for g_soft, g_plain in zip(grads(soft, image, text, logit_scale, logit_bias),
                               grads(plain, image, text, logit_scale, logit_bias)):
        torch.testing.assert_close(g_soft, 0.7 * g_plain, **TOL)


def call(**changes):
    image, text, logit_scale, logit_bias = (t.detach() for t in batch(4, 3, torch.float32))
    kw = dict(image_features=image, text_features=text, logit_scale=logit_scale.exp(), logit_bias=logit_bias)
    kw.update(changes)
    return psd_siglip_loss(kw.pop("image_features"), kw.pop("text_features"), kw.pop("logit_scale"),
                           kw.pop("logit_bias"), backend="reference", **kw)


CASES = [
    (dict(image_features=torch.randn(4)), ValueError, "image_features must be 2-D"),
    (dict(text_features=torch.randn(5, 3)), ValueError, "same number of rows"),
    (dict(text_features=torch.randn(4, 2)), ValueError, "share the embedding dim"),
    (dict(text_features=torch.randn(4, 3, dtype=torch.float64)), TypeError, "text_features has dtype"),
    (dict(logit_scale=-1.0), ValueError, "logit_scale must be positive and finite"),
    (dict(logit_bias=torch.ones(2)), ValueError, "logit_bias must be a scalar"),
    (dict(logit_bias=math.inf), ValueError, "logit_bias must be finite"),
    (dict(logit_bias=torch.tensor(math.nan)), ValueError, "logit_bias must be finite"),
    (dict(logit_bias="0"), TypeError, "logit_bias must be a float"),
    (dict(teacher_bias=torch.tensor(math.inf)), ValueError, "teacher_bias must be finite"),
    (dict(teacher_scale=0.0), ValueError, "teacher_scale must be positive"),
    (dict(teacher_image=torch.randn(4, 5)), ValueError, "give both teacher_image and teacher_text"),
    (dict(alpha_image=1.5), ValueError, "alpha_image must lie in"),
    (dict(alpha_text=torch.rand(3)), ValueError, r"alpha_text must be a scalar or have shape \(4,\)"),
    (dict(reduction="avg"), ValueError, "reduction must be one of"),
]


@pytest.mark.parametrize("changes, error, match", CASES)
def test_bad_input_raises_named_error(changes, error, match):
    with pytest.raises(error, match=match):
        call(**changes)


def test_module_options_are_checked():
    with pytest.raises(ValueError, match="dist_impl must be one of"):
        PSDSigLipLoss(dist_impl="ring")
    with pytest.raises(ValueError, match="teacher_scale must be positive"):
        PSDSigLipLoss(teacher_scale=-2.0)
    with pytest.raises(TypeError, match="teacher_bias must be a float"):
        PSDSigLipLoss(teacher_bias="x")
    with pytest.raises(ValueError, match="need world_size >= 1"):
        PSDSigLipLoss(rank=2, world_size=2)
    image, text, logit_scale, logit_bias = batch()
    with pytest.raises(ValueError, match="give teacher_logit_bias or its open_clip name dist_logit_bias"):
        PSDSigLipLoss()(image, text, logit_scale.exp(), logit_bias, teacher_logit_bias=1.0, dist_logit_bias=1.0)
    with pytest.raises(RuntimeError, match=r"PSDSigLipLoss\(world_size=2\) needs torch.distributed"):
        PSDSigLipLoss(rank=0, world_size=2)(image, text, logit_scale.exp(), logit_bias)


def test_a_backend_without_the_sigmoid_loss_is_named():
    from psd_kernels.backends import _reason

    class SoftmaxOnly:
        @staticmethod
        def supports(device, dtype):
            return None

    assert _reason(SoftmaxOnly, torch.device("cpu"), torch.float32, "siglip_rows") == \
        "it has no siglip_rows (the sigmoid loss)"
