"""--accum-freq with PSD: N micro-batches of b rows give the loss and gradients of one batch of N*b.

    .venv/bin/python -m pytest tests/test_train_accumulation.py -q -s    # -s prints the measured differences

open_clip_train's own train_one_epoch runs the psd-tiny model in float64 twice on the same
N*b rows: with accum_freq=N on micro-batches of b, and with accum_freq=1 on one batch,
through psd_train's feed (the student with the teacher's features, PSDLoss advanced once
per optimizer step). Expected, for every teacher:
  - each of the N loss calls returns the one-batch loss (the same alpha and soft subset);
  - micro-batch j's features, in call j, get the one-batch gradient of those rows;
  - the parameter gradients summed over the N backward calls are the one-batch gradients,
    the logit scale's included (psd_train.feed counts its gradient once per optimizer step:
    without that, every call would backpropagate the whole loss into it, N times in all).
Differences are max |a - b| and max |a - b| / max |b| over each tensor; in float64 they
come from summation order only, so the bound is 1e-10 relative.
"""
import pytest

pytest.importorskip("open_clip_train", reason="needs the training extras: pip install '.[train]'")
import argparse  # noqa: E402
import copy  # noqa: E402
import math  # noqa: E402

import torch  # noqa: E402
from open_clip_train.train import train_one_epoch  # noqa: E402

from psd_kernels import PSDLoss, PSDSigLipLoss  # noqa: E402
from psd_train.demo.model import create_demo_model  # noqa: E402
from psd_train.feed import for_loop  # noqa: E402
from psd_train.teachers import Teacher  # noqa: E402

N, B = 3, 4
RTOL = 1e-10


class _Loader(list):
    """The batches, with the two counts open_clip_train's loop reads from a dataloader."""

    @property
    def num_batches(self):
        return len(self)

    @property
    def num_samples(self):
        return sum(len(images) for images, _ in self)


class _Train:
    def __init__(self, batches):
        self.dataloader = _Loader(batches)

    def set_epoch(self, epoch):
        pass


def _loop_args(accum_freq, batch_size):
    return argparse.Namespace(device="cpu", precision="fp32", accum_freq=accum_freq, batch_size=batch_size,
                              distill=False, skip_scheduler=True, horovod=False, grad_clip_norm=None,
                              log_every_n_steps=1, world_size=1, rank=0, local_rank=0, wandb=False)


SIGLIP_INIT = dict(init_logit_scale=math.log(10), init_logit_bias=-10)  # open_clip_train's for --siglip


@pytest.fixture(scope="module", params=["clip", "siglip"])
def setup(request):
    torch.manual_seed(0)
    kwargs = SIGLIP_INIT if request.param == "siglip" else {}
    student, _, _, tokenizer = create_demo_model(**kwargs)
    student = student.double()
    other, _, _, _ = create_demo_model(**kwargs)  # a differently initialised frozen model (distill teacher)
    for model in (student, other):
        model.output_dict = True  # as open_clip_train creates its models
    images = torch.rand(N * B, 3, 32, 32, dtype=torch.float64)
    texts = tokenizer([f"a {['thin', 'thick', 'small'][i % 3]} digit {i} on the left" for i in range(N * B)])
    return request.param, student, other.double().eval().requires_grad_(False), images, texts


def _teacher(kind, student, other, siglip):
    if kind in ("self", "self_scale5"):
        return None
    if kind == "prev_epoch":  # epoch 1's teacher: the student as it ended epoch 0
        return Teacher("prev_epoch", keep_bias=siglip).for_epoch(student, 1)
    if kind == "ema":
        teacher = Teacher("ema", keep_bias=siglip)
        view = teacher.for_epoch(student, 0)
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():  # an EMA some steps in: near the student, not equal to it
            for p in teacher.model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
        return view
    return Teacher("distill", distill_model=other, keep_bias=siglip).for_epoch(student, 0)


def _run(kind, mode, setup, accum):
    loss_kind, base, other, images, texts = setup
    student = copy.deepcopy(base)
    options = dict(alpha_max=0.5, schedule="constant", soft_fraction=0.5, step_per_forward=False,
                   teacher_scale=5.0 if kind == "self_scale5" else None)
    if loss_kind == "siglip":
        loss_fn = PSDSigLipLoss(teacher_bias=-3.0 if kind == "self_scale5" else None, **options)
    else:
        loss_fn = PSDLoss(teacher_mode=mode, **options)
    calls, grads = [], {}

    def before(module, args, kwargs):
        call = {"step": module.step}
        for name in ("image_features", "text_features"):
            kwargs[name].register_hook(lambda g, name=name, call=call: call.__setitem__(name, g.clone()))
        calls.append(call)

    def after(module, args, output):
        calls[-1]["loss"] = output["contrastive_loss"].detach().clone()

    loss_fn.register_forward_pre_hook(before, with_kwargs=True)
    loss_fn.register_forward_hook(after)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.0)
    optimizer.register_step_pre_hook(
        lambda *a: grads.update({n: p.grad.clone() for n, p in student.named_parameters()}))
    optimizer.register_step_post_hook(lambda *a: loss_fn.advance())
    rows = B if accum else N * B
    batches = [(images[i:i + rows], texts[i:i + rows]) for i in range(0, N * B, rows)]
    teacher = _teacher(kind, student, other, loss_kind == "siglip")
    teacher_rows = []
    if teacher is not None:
        teacher.register_forward_hook(lambda module, inputs, out: teacher_rows.append(len(inputs[0])))
    model, loss = for_loop(student, teacher, loss_fn, accum_freq=N if accum else 1)
    train_one_epoch(model, {"train": _Train(batches)}, loss, 0, optimizer, None, None, None,
                    _loop_args(N if accum else 1, rows))
    assert loss_fn.step == 1
    if teacher is not None:  # the teacher saw every row once: no second forward in the gradient pass
        assert teacher_rows == [rows] * len(batches)
    return calls, grads


def _diff(a, b):
    abs_diff = (a - b).abs().max().item()
    return abs_diff, abs_diff / b.abs().max().item()


@pytest.mark.parametrize("kind, mode", [("self", "cross"), ("self_scale5", "cross"), ("ema", "cross"),
                                        ("prev_epoch", "within_modality"), ("distill", "within_modality")])
def test_accumulation_matches_one_batch(kind, mode, setup):
    if setup[0] == "siglip" and mode != "cross":
        mode = "cross"  # the sigmoid loss has one teacher mode
    accum_calls, accum_grads = _run(kind, mode, setup, accum=True)
    (one,), one_grads = _run(kind, mode, setup, accum=False)
    assert len(accum_calls) == N
    assert [c["step"] for c in accum_calls] == [0] * N  # one alpha and one soft subset for the step

    loss_rel = max(_diff(c["loss"], one["loss"])[1] for c in accum_calls)
    feature = {}
    for name in ("image_features", "text_features"):
        # call j's gradient reaches the student through micro-batch j's rows only
        assembled = torch.cat([c[name][j * B:(j + 1) * B] for j, c in enumerate(accum_calls)])
        feature[name] = _diff(assembled, one[name])
    params = {n: _diff(g, one_grads[n]) for n, g in accum_grads.items()}
    scale_ratio = (accum_grads["logit_scale"] / one_grads["logit_scale"]).item()
    worst_param = max(params.values(), key=lambda d: d[1])
    assert one_grads["logit_scale"].abs().item() > 0  # a scale gradient to compare
    if setup[0] == "siglip":  # a bias gradient to compare, counted once like the scale's
        assert one_grads["logit_bias"].abs().max().item() > 0 and "logit_bias" in params
    print(f"\n[accumulation {kind}/{mode}, N={N} x b={B}, float64] loss: max rel diff {loss_rel:.1e}; "
          f"feature grads: image {feature['image_features'][0]:.1e} abs / {feature['image_features'][1]:.1e} rel, "
          f"text {feature['text_features'][0]:.1e} / {feature['text_features'][1]:.1e}; parameter grads "
          f"({len(params)} tensors): worst {worst_param[0]:.1e} abs / {worst_param[1]:.1e} rel; "
          f"logit_scale: {params['logit_scale'][1]:.1e} rel, grad ratio {scale_ratio:.12f} (expected 1)")
    assert loss_rel <= RTOL
    for name, (_, rel) in {**feature, **params}.items():  # the logit scale's included
        assert rel <= RTOL, name
