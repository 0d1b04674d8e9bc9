"""Every bad input raises a clear error that names the argument.

    .venv/bin/python -m pytest tests/test_validation.py
"""
import math

import pytest
import torch

from psd_kernels import PSDLoss, psd_clip_loss, psd_loss

M, N, D = 4, 6, 3


def ok():
    return dict(x=torch.randn(M, D), y=torch.randn(N, D), logit_scale=torch.tensor(3.0))


def call(**changes):
    kw = ok()
    kw.update(changes)
    return psd_loss(kw.pop("x"), kw.pop("y"), kw.pop("logit_scale"), backend="reference", **kw)


CASES = [
    (dict(x=torch.randn(M)), ValueError, "x must be 2-D"),
    (dict(y=torch.randn(2, N, D)), ValueError, "y must be 2-D"),
    (dict(x=[[1.0]]), TypeError, "x must be a torch.Tensor"),
    (dict(y=torch.randn(N, D + 1)), ValueError, "share the embedding dim"),
    (dict(x=torch.randn(0, D)), ValueError, "x is an empty batch"),
    (dict(y=torch.randn(0, D)), ValueError, "y is an empty batch"),
    (dict(x=torch.randn(M, 0), y=torch.randn(N, 0)), ValueError, "embedding dim 0"),
    (dict(y=torch.randn(N, D, dtype=torch.float64)), TypeError, "y has dtype torch.float64"),
    (dict(x=torch.randint(0, 3, (M, D)), y=torch.randint(0, 3, (N, D))), TypeError, "x must be float16"),
    (dict(y=torch.randn(N, D, device="meta")), ValueError, "y is on meta"),
    (dict(teacher_x=torch.randn(M, 5)), ValueError, "give both teacher_x and teacher_y"),
    (dict(teacher_x=torch.randn(M, 5), teacher_y=torch.randn(N, 4)), ValueError, "teacher shapes"),
    (dict(teacher_x=torch.randn(M + 1, 5), teacher_y=torch.randn(N, 5)), ValueError, "teacher shapes"),
    (dict(teacher_x=torch.randn(M, 5).half(), teacher_y=torch.randn(N, 5)), TypeError, "teacher_x has dtype"),
    (dict(teacher_x=torch.randn(M, 5), teacher_y=torch.randn(N, 5, device="meta")), ValueError, "teacher_y is on meta"),
    (dict(alpha=1.5), ValueError, "alpha must lie in"),
    (dict(alpha=-0.1), ValueError, "alpha must lie in"),
    (dict(alpha=torch.full((M,), 0.5).index_put((torch.tensor([2]),), torch.tensor(2.0))), ValueError, "alpha must lie in"),
    (dict(alpha=torch.tensor([0.5, math.nan, 0.1, 0.2])), ValueError, "alpha must lie in"),
    (dict(alpha=torch.rand(M + 1)), ValueError, r"alpha must be a scalar or have shape \(4,\)"),
    (dict(alpha="0.3"), TypeError, "alpha must be a float"),
    (dict(labels=torch.tensor([0, 1, 2, N])), ValueError, r"labels must lie in \[0, 6\)"),
    (dict(labels=torch.tensor([0, -1, 2, 3])), ValueError, r"labels must lie in \[0, 6\)"),
    (dict(labels=torch.tensor([0, 1, 2])), ValueError, r"labels must have shape \(4,\)"),
    (dict(labels=torch.tensor([0.0, 1, 2, 3])), TypeError, "labels must be an integer tensor"),
    (dict(labels=torch.tensor([0, 1, 2, 3]), offset=1), ValueError, "either labels or offset"),
    (dict(offset=N - M + 1), ValueError, "offset=3 puts positives"),
    (dict(logit_scale=0.0), ValueError, "logit_scale must be positive and finite"),
    (dict(logit_scale=torch.tensor(-2.0)), ValueError, "logit_scale must be positive and finite"),
    (dict(logit_scale=torch.tensor(math.inf)), ValueError, "logit_scale must be positive and finite"),
    (dict(logit_scale=float("nan")), ValueError, "logit_scale must be positive and finite"),
    (dict(logit_scale=torch.ones(2)), ValueError, "logit_scale must be a scalar"),
    (dict(teacher_scale=-1.0), ValueError, "teacher_scale must be positive"),
    (dict(reduction="avg"), ValueError, "reduction must be one of"),
]


@pytest.mark.parametrize("changes,error,match", CASES, ids=[c[2][:40] for c in CASES])
def test_bad_input_raises_named_error(changes, error, match):
    with pytest.raises(error, match=match):
        call(**changes)


def test_backend_name_is_checked():
    with pytest.raises(ValueError, match="backend must be one of"):
        psd_loss(torch.randn(2, 2), torch.randn(2, 2), 1.0, backend="cuda")


def test_non_finite_embeddings_rejected_only_when_checked():
    x = torch.randn(M, D)
    x[1, 2] = math.nan
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        call(x=x, check_finite=True)
    assert torch.isnan(call(x=x))  # unchecked: the NaN propagates, as documented
    t = torch.randn(N, 2)
    t[0, 0] = math.inf
    with pytest.raises(ValueError, match="teacher_y contains NaN or Inf"):
        call(teacher_x=torch.randn(M, 2), teacher_y=t, check_finite=True)


@pytest.mark.parametrize("changes,error,match", [
    (dict(text_features=torch.randn(M + 1, D)), ValueError, "same number of rows"),
    (dict(alpha_text=torch.rand(M + 2)), ValueError, "alpha_text must be a scalar or have shape"),
    (dict(alpha_image=2.0), ValueError, "alpha_image must lie in"),
    (dict(teacher_image=torch.randn(M, 2)), ValueError, "give both teacher_image and teacher_text"),
    (dict(image_features=torch.randn(M)), ValueError, "image_features must be 2-D"),
])
def test_symmetric_bad_input(changes, error, match):
    kw = dict(image_features=torch.randn(M, D), text_features=torch.randn(M, D), logit_scale=2.0)
    kw.update(changes)
    with pytest.raises(error, match=match):
        psd_clip_loss(kw.pop("image_features"), kw.pop("text_features"), kw.pop("logit_scale"),
                      backend="reference", **kw)


@pytest.mark.parametrize("kwargs,match", [
    (dict(teacher_mode="mutual"), "teacher_mode must be one of"),
    (dict(teacher_scale=0.0), "teacher_scale must be positive"),
    (dict(rank=2, world_size=2), "0 <= rank < world_size"),
    (dict(soft_fraction=-0.5), "soft_fraction must lie in"),
])
def test_psdloss_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PSDLoss(**kwargs)


def test_psdloss_rejects_teacher_under_both_names_and_vector_bias():
    img, txt = torch.randn(M, D), torch.randn(M, D)
    with pytest.raises(ValueError, match="teacher_image_features or its open_clip name dist_image_features"):
        PSDLoss(alpha_max=0.5)(img, txt, 2.0, teacher_image_features=img, dist_image_features=img,
                                teacher_text_features=txt)
    with pytest.raises(ValueError, match="logit_bias must be a scalar"):
        PSDLoss()(img, txt, 2.0, logit_bias=torch.zeros(M, M))


# -- validation runs once per call, and reads the device at most once --------------------------
class CountScalarReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts aten::_local_scalar_dense: what .item(), float(t), int(t) and bool(t) of a tensor run
    (a host synchronisation on a GPU)."""

    def __init__(self):
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads += 1
        return func(*args, **(kwargs or {}))


class DeviceReads:
    """Every read of device values during a call: validation's batched host_read calls, and any
    other scalar read (which would be a second synchronisation)."""

    def __init__(self, monkeypatch):
        from psd_kernels import validation
        self.batched = []
        original = validation.host_read

        def counting(t):
            self.batched.append(t.numel())
            return original(t)

        monkeypatch.setattr(validation, "host_read", counting)
        self.scalar = CountScalarReads()

    def __enter__(self):
        self.scalar.__enter__()
        return self

    def __exit__(self, *exc):
        self.scalar.__exit__(*exc)

    @property
    def total(self) -> int:
        return len(self.batched) + self.scalar.reads


def count_matrix_checks(monkeypatch):
    from psd_kernels import validation
    seen = []
    original = validation.matrix

    def counting(name, t):
        seen.append(name)
        return original(name, t)

    monkeypatch.setattr(validation, "matrix", counting)
    return seen


@pytest.mark.parametrize("teacher_mode", ["cross", "within_modality"])
def test_psdloss_call_validates_each_input_once_and_reads_the_device_once(monkeypatch, teacher_mode):
    b, d = 8, 4
    img, txt = torch.randn(b, d, requires_grad=True), torch.randn(b, d, requires_grad=True)
    t_img, t_txt = torch.randn(b, 3), torch.randn(b, 3)
    scale = torch.tensor(5.0, requires_grad=True)
    loss_fn = PSDLoss(alpha_max=0.4, schedule="constant", soft_fraction=0.5, teacher_mode=teacher_mode,
                      backend="reference")
    seen = count_matrix_checks(monkeypatch)
    with DeviceReads(monkeypatch) as reads:
        loss = loss_fn(img, txt, scale, teacher_image_features=t_img, teacher_text_features=t_txt,
                       teacher_logit_scale=torch.tensor(3.0))
    assert sorted(seen) == ["image_features", "teacher_image", "teacher_text", "text_features"]
    # one read: both scales and (min, max) of both alphas; nothing else reads a device value
    assert reads.batched == [6] and reads.total == 1
    loss.backward()


def test_reads_are_skipped_when_every_checked_value_is_a_python_number(monkeypatch):
    with DeviceReads(monkeypatch) as reads:
        psd_clip_loss(torch.randn(5, 3), torch.randn(5, 3), 4.0, alpha_image=0.3, backend="reference")
        psd_loss(torch.randn(5, 3), torch.randn(6, 3), 4.0, alpha=0.0, offset=1, backend="reference")
    assert reads.total == 0


def test_one_read_for_all_value_checks_of_psd_loss(monkeypatch):
    with DeviceReads(monkeypatch) as reads:
        psd_loss(torch.randn(4, 3), torch.randn(6, 3), torch.tensor(2.0), alpha=torch.rand(4),
                 labels=torch.tensor([0, 5, 2, 1]), teacher_scale=torch.tensor(3.0), backend="reference")
    assert reads.batched == [6] and reads.total == 1  # scale, teacher scale, alpha (min, max), labels (min, max)
