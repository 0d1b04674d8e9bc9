"""The reference against the hand-written formulas of docs/loss.md, in float64.

    .venv/bin/python -m pytest tests/test_reference.py
"""
import pytest
import torch

from exact import one_direction
from psd_kernels import psd_clip_loss, psd_loss
from psd_kernels.backends import reference
from psd_kernels.vocabulary import TEACHER_CASES

F64 = torch.float64


def make_case(m, n, d, teacher, per_row_alpha=True, explicit_labels=True, dt=3):
    x = torch.randn(m, d, dtype=F64, requires_grad=True)
    y = torch.randn(n, d, dtype=F64, requires_grad=True)
    s = torch.tensor(2.5, dtype=F64, requires_grad=True)
    alpha = torch.rand(m, dtype=F64) if per_row_alpha else torch.tensor(0.4, dtype=F64)
    labels = torch.randint(0, n, (m,)) if explicit_labels else None
    kw = {}
    if teacher == "self_scaled":
        kw["teacher_scale"] = 7.0
    if teacher == "separate":
        kw.update(teacher_x=torch.randn(m, dt, dtype=F64), teacher_y=torch.randn(n, dt, dtype=F64),
                  teacher_scale=4.0)
    return x, y, s, alpha, labels, kw


def exact_of(x, y, s, alpha, labels, kw, g=None):
    m = x.shape[0]
    alpha = alpha.expand(m) if alpha.dim() == 0 else alpha
    labels = torch.arange(m) if labels is None else labels
    tx, ty = kw.get("teacher_x"), kw.get("teacher_y")
    return one_direction(x.detach().numpy(), y.detach().numpy(), float(s.detach()), alpha.numpy(), labels.numpy(),
                         None if tx is None else tx.numpy(), None if ty is None else ty.numpy(),
                         kw.get("teacher_scale"), g)


@pytest.mark.parametrize("teacher", TEACHER_CASES)
@pytest.mark.parametrize("m,n", [(1, 1), (7, 9), (13, 5)])
def test_matches_hand_formula_and_its_gradients(teacher, m, n):
    x, y, s, alpha, labels, kw = make_case(m, n, 6, teacher)
    g = torch.randn(m, dtype=F64)  # random upstream gradient per row
    rows = psd_loss(x, y, s, alpha=alpha, labels=labels, reduction="none", backend="reference", **kw)
    (rows * g).sum().backward()
    loss, dx, dy, ds = exact_of(x, y, s, alpha, labels, kw, g.numpy())
    torch.testing.assert_close(rows.detach(), torch.from_numpy(loss), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, torch.from_numpy(dx), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(y.grad, torch.from_numpy(dy), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(s.grad, torch.tensor(ds, dtype=F64), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reductions_are_sum_and_mean_of_the_rows(reduction):
    x, y, s, alpha, labels, kw = make_case(6, 8, 5, "separate")
    rows = psd_loss(x, y, s, alpha=alpha, labels=labels, reduction="none", backend="reference", **kw)
    reduced = psd_loss(x, y, s, alpha=alpha, labels=labels, reduction=reduction, backend="reference", **kw)
    expected = rows.mean() if reduction == "mean" else rows.sum()
    torch.testing.assert_close(reduced, expected, rtol=1e-14, atol=0)


def frozen_teacher(x, y, s, kw):
    """The self teacher written as a separate one: the same values, held constant."""
    kw = dict(kw)
    kw.setdefault("teacher_x", x.detach().clone())
    kw.setdefault("teacher_y", y.detach().clone())
    if kw.get("teacher_scale") is None:
        kw["teacher_scale"] = s.detach().clone()
    return kw


@pytest.mark.parametrize("teacher", TEACHER_CASES)
@pytest.mark.parametrize("per_row_alpha", [True, False])
@pytest.mark.parametrize("explicit_labels", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck(teacher, per_row_alpha, explicit_labels, reduction):
    """gradcheck with the teacher held fixed (finite differences must not move the teacher).

    A self teacher moves with x and y under finite differences, so its analytic gradient
    (teacher terms constant) is first shown equal to that of the same teacher held fixed,
    which gradcheck then verifies.
    """
    x, y, s, alpha, labels, kw = make_case(4, 5, 3, teacher, per_row_alpha, explicit_labels)
    fixed = frozen_teacher(x, y, s, kw)
    upstream = torch.randn(4, dtype=F64) if reduction == "none" else torch.tensor(1.0, dtype=F64)

    def f(x, y, s, teacher_kw):
        return psd_loss(x, y, s, alpha=alpha, labels=labels, reduction=reduction, backend="reference",
                        **teacher_kw)

    own = torch.autograd.grad((f(x, y, s, kw) * upstream).sum(), (x, y, s))
    held = torch.autograd.grad((f(x, y, s, fixed) * upstream).sum(), (x, y, s))
    for a, b in zip(own, held):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-14)
    assert torch.autograd.gradcheck(lambda x, y, s: f(x, y, s, fixed), (x, y, s))


def test_teacher_gets_no_gradient():
    x, y, s, alpha, labels, kw = make_case(5, 5, 4, "separate")
    kw["teacher_x"].requires_grad_(True)
    kw["teacher_y"].requires_grad_(True)
    psd_loss(x, y, s, alpha=alpha, backend="reference", **kw).backward()
    assert kw["teacher_x"].grad is None and kw["teacher_y"].grad is None
    assert x.grad is not None


@pytest.mark.parametrize("per_row_alpha", [True, False])
def test_self_teacher_same_scale_is_scaled_clip_gradient(per_row_alpha):
    """docs/teachers.md: a self teacher at the same scale gives G = (1 - alpha)(P - onehot)."""
    x, y, s, alpha, _, _ = make_case(9, 9, 5, "self", per_row_alpha)
    psd_loss(x, y, s, alpha=alpha, reduction="sum", backend="reference").backward()
    psd_grads = [t.grad.clone() for t in (x, y, s)]
    for t in (x, y, s):
        t.grad = None
    scale_rows = (1 - alpha).expand(9) if alpha.dim() == 0 else 1 - alpha
    clip_rows = psd_loss(x, y, s, alpha=0.0, reduction="none", backend="reference")
    (clip_rows * scale_rows).sum().backward()
    for got, want in zip(psd_grads, (x.grad, y.grad, s.grad)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("teacher", TEACHER_CASES)
def test_symmetric_uses_teacher_column_softmax(teacher):
    b = 7
    x, y, s, _, _, kw = make_case(b, b, 5, teacher)
    a_img, a_txt = torch.rand(b, dtype=F64), torch.rand(b, dtype=F64)
    loss = psd_clip_loss(x, y, s, alpha_image=a_img, alpha_text=a_txt, backend="reference",
                         teacher_image=kw.get("teacher_x"), teacher_text=kw.get("teacher_y"),
                         teacher_scale=kw.get("teacher_scale"))
    eye = torch.arange(b)
    l_img, *_ = exact_of(x, y, s, a_img, eye, kw)
    # text rows: transposed student logits and the teacher's column softmax
    kw_t = dict(kw)
    if teacher == "separate":
        kw_t["teacher_x"], kw_t["teacher_y"] = kw["teacher_y"], kw["teacher_x"]
    l_txt, *_ = exact_of(y, x, s, a_txt, eye, kw_t)
    torch.testing.assert_close(loss.detach(), torch.tensor(0.5 * (l_img.mean() + l_txt.mean()), dtype=F64),
                               rtol=1e-12, atol=1e-12)
    rows = psd_clip_loss(x, y, s, alpha_image=a_img, alpha_text=a_txt, reduction="none", backend="reference",
                         teacher_image=kw.get("teacher_x"), teacher_text=kw.get("teacher_y"),
                         teacher_scale=kw.get("teacher_scale"))
    assert rows.shape == (2, b)
    torch.testing.assert_close(rows[1].detach(), torch.from_numpy(l_txt), rtol=1e-12, atol=1e-12)


def test_low_precision_inputs_accumulate_in_float32_and_return_input_dtype_grads():
    x = torch.randn(33, 16, dtype=torch.bfloat16, requires_grad=True)
    y = torch.randn(33, 16, dtype=torch.bfloat16, requires_grad=True)
    loss = psd_clip_loss(x, y, torch.tensor(100.0), alpha_image=0.5, backend="reference")
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad.float()).all()
    want = psd_clip_loss(x.detach().double(), y.detach().double(), 100.0, alpha_image=0.5, backend="reference")
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-5)


def test_reference_backend_contract_module_runs_directly():
    x, y = torch.randn(3, 2, dtype=F64), torch.randn(4, 2, dtype=F64)
    out = reference.psd_rows(x, y, torch.tensor(1.0, dtype=F64), torch.zeros(3, dtype=F64),
                             torch.tensor([0, 3, 1]), None, None, None)
    want = torch.nn.functional.cross_entropy(x @ y.T, torch.tensor([0, 3, 1]), reduction="none")
    torch.testing.assert_close(out, want, rtol=1e-14, atol=1e-14)
