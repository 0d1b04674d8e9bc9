"""The sigmoid (SigLIP) reference against the hand-written formulas of docs/siglip_loss.md and
against open_clip's SigLipLoss, in float64.

    .venv/bin/python -m pytest tests/test_siglip_reference.py
"""
import math

import pytest
import torch

from psd_kernels.backends.siglip_reference import siglip_loss_reference as sigmoid_loss
from psd_kernels.vocabulary import TEACHER_CASES

F64 = torch.float64


def softplus(v):
    return max(v, 0.0) + math.log1p(math.exp(-abs(v)))


def sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))


def hand(x, y, s, b, alpha_rows, alpha_cols, labels, tx=None, ty=None, ts=None, tb=None, g=None):
    """Row losses and dL/dx, dL/dy, dL/ds, dL/db of L = sum_i g_i row_i, one pair at a time with math.*.

    row_i = sum_j softplus(l_ij) - q_ij l_ij,  l_ij = s <x_i, y_j> + b,
    q_ij = (1 - a_ij) [j = c_i] + a_ij sigmoid(t_ij),  a_ij = (alpha_rows_i + alpha_cols_j) / 2,
    d row_i / d l_ij = sigmoid(l_ij) - q_ij.
    """
    x, y = x.tolist(), y.tolist()
    m, n, dim = len(x), len(y), len(x[0])
    g = [1.0] * m if g is None else g.tolist()
    ts = s if ts is None else ts
    tb = b if tb is None else tb
    rows, ds, db = [0.0] * m, 0.0, 0.0
    dx, dy = [[0.0] * dim for _ in range(m)], [[0.0] * dim for _ in range(n)]
    for i in range(m):
        for j in range(n):
            d = sum(x[i][k] * y[j][k] for k in range(dim))
            logit = s * d + b
            d_t = d if tx is None else sum(tx[i][k] * ty[j][k] for k in range(len(tx[0])))
            a = (alpha_rows[i] + alpha_cols[j]) / 2
            q = (1 - a) * (1.0 if j == labels[i] else 0.0) + a * sigmoid(ts * d_t + tb)
            rows[i] += softplus(logit) - q * logit
            grad = g[i] * (sigmoid(logit) - q)
            for k in range(dim):
                dx[i][k] += s * grad * y[j][k]
                dy[j][k] += s * grad * x[i][k]
            ds += grad * d
            db += grad
    as64 = lambda v: torch.tensor(v, dtype=F64)  # noqa: E731
    return as64(rows), as64(dx), as64(dy), as64(ds), as64(db)


def make_case(m, n, d, teacher, alpha="per_pair", dt=4):
    """Inputs in float64 with gradients on x, y, s, b; the teacher's keywords for `teacher`."""
    x = torch.randn(m, d, dtype=F64, requires_grad=True)
    y = torch.randn(n, d, dtype=F64, requires_grad=True)
    s = torch.tensor(2.5, dtype=F64, requires_grad=True)
    b = torch.tensor(-1.25, dtype=F64, requires_grad=True)
    if alpha == "per_pair":
        kw = dict(alpha_rows=torch.rand(m, dtype=F64), alpha_cols=torch.rand(n, dtype=F64))
    else:
        kw = dict(alpha_rows=0.4, alpha_cols=0.4)
    kw["labels"] = torch.randint(0, n, (m,))
    if teacher == "self_scaled":
        kw.update(teacher_scale=7.0, teacher_bias=-3.0)
    if teacher == "separate":
        kw.update(teacher_x=torch.randn(m, dt, dtype=F64), teacher_y=torch.randn(n, dt, dtype=F64),
                  teacher_scale=4.0, teacher_bias=0.5)
    return x, y, s, b, kw


def hand_of(x, y, s, b, kw, g=None):
    m, n = x.shape[0], y.shape[0]
    ar = [float(kw["alpha_rows"])] * m if not torch.is_tensor(kw["alpha_rows"]) else kw["alpha_rows"].tolist()
    ac = [float(kw["alpha_cols"])] * n if not torch.is_tensor(kw["alpha_cols"]) else kw["alpha_cols"].tolist()
    tx, ty = kw.get("teacher_x"), kw.get("teacher_y")
    b = float(b.detach()) if torch.is_tensor(b) else b
    return hand(x.detach(), y.detach(), float(s.detach()), b, ar, ac, kw["labels"].tolist(),
                None if tx is None else tx.tolist(), None if ty is None else ty.tolist(),
                kw.get("teacher_scale"), kw.get("teacher_bias"), g)


# (a) the hand-written formulas


@pytest.mark.parametrize("teacher", TEACHER_CASES)
@pytest.mark.parametrize("alpha", ["per_pair", "scalar"])
@pytest.mark.parametrize("m,n", [(5, 7), (1, 1), (7, 5)])
def test_matches_hand_formula_and_its_gradients(teacher, alpha, m, n):
    x, y, s, b, kw = make_case(m, n, 3, teacher, alpha)
    g = torch.randn(m, dtype=F64)  # a random upstream gradient per row
    rows = sigmoid_loss(x, y, s, b, reduction="none", **kw)
    (rows * g).sum().backward()
    loss, dx, dy, ds, db = hand_of(x, y, s, b, kw, g)
    torch.testing.assert_close(rows.detach(), loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, dx, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(y.grad, dy, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(s.grad, ds, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(b.grad, db, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("teacher", TEACHER_CASES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reductions_match_hand_formula(teacher, reduction):
    x, y, s, b, kw = make_case(5, 7, 3, teacher)
    loss = sigmoid_loss(x, y, s, b, reduction=reduction, **kw)
    loss.backward()
    w = 1 / 5 if reduction == "mean" else 1.0  # "mean" divides by M, the rows (open_clip's local batch)
    rows, dx, dy, ds, db = hand_of(x, y, s, b, kw, torch.full((5,), w, dtype=F64))
    torch.testing.assert_close(loss.detach(), rows.sum() * w, rtol=1e-12, atol=1e-12)
    for got, want in [(x.grad, dx), (y.grad, dy), (s.grad, ds), (b.grad, db)]:
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_no_bias_is_bias_zero_for_student_and_self_teacher():
    x, y, s, _, kw = make_case(5, 7, 3, "self")
    without = sigmoid_loss(x, y, s, None, reduction="none", **kw)
    zero = sigmoid_loss(x, y, s, 0.0, reduction="none", **kw)
    torch.testing.assert_close(without, zero, rtol=0, atol=0)
    rows, *_ = hand_of(x, y, s, 0.0, kw)
    torch.testing.assert_close(without.detach(), rows, rtol=1e-12, atol=1e-12)


def test_self_teacher_defaults_to_the_students_scale_and_bias():
    x, y, s, b, kw = make_case(5, 7, 3, "self")
    implicit = sigmoid_loss(x, y, s, b, reduction="none", **kw)
    explicit = sigmoid_loss(x, y, s, b, reduction="none", teacher_x=x.detach().clone(), teacher_y=y.detach().clone(),
                            teacher_scale=s.detach().clone(), teacher_bias=b.detach().clone(), **kw)
    torch.testing.assert_close(implicit, explicit, rtol=1e-14, atol=0)


def test_alpha_rule_is_the_mean_of_row_and_column_alpha():
    """a_ij = (alpha_rows_i + alpha_cols_j) / 2: one soft row and one soft column each give a_ij = alpha / 2
    where only one of them is soft, alpha where both are, 0 where neither is."""
    m, n = 4, 6
    x, y, s, b, kw = make_case(m, n, 3, "separate")
    kw["alpha_rows"] = torch.tensor([0.0, 0.8, 0.0, 0.0], dtype=F64)
    kw["alpha_cols"] = torch.tensor([0.0, 0.0, 0.0, 0.8, 0.0, 0.0], dtype=F64)
    rows = sigmoid_loss(x, y, s, b, reduction="none", **kw)
    torch.testing.assert_close(rows.detach(), hand_of(x, y, s, b, kw)[0], rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # row 0 and the columns other than 3 are hard there
        hard = sigmoid_loss(x, y, s, b, reduction="none", **{**kw, "alpha_rows": 0.0, "alpha_cols": 0.0})
        assert not torch.allclose(rows[0], hard[0]) and not torch.allclose(rows[1], hard[1])
        kw_no_col3 = {**kw, "alpha_cols": 0.0}
        only_row = sigmoid_loss(x, y, s, b, reduction="none", **kw_no_col3)
        torch.testing.assert_close(only_row[[0, 2, 3]], hard[[0, 2, 3]], rtol=0, atol=0)


def test_alpha_cols_defaults_to_alpha_rows():
    x, y, s, b, kw = make_case(6, 6, 3, "self_scaled")
    given = sigmoid_loss(x, y, s, b, **{**kw, "alpha_cols": kw["alpha_rows"]})
    default = sigmoid_loss(x, y, s, b, **{**kw, "alpha_cols": None})
    torch.testing.assert_close(given, default, rtol=0, atol=0)
    x, y, s, b, kw = make_case(5, 7, 3, "self")
    with pytest.raises(ValueError, match="alpha_cols"):
        sigmoid_loss(x, y, s, b, **{**kw, "alpha_cols": None})


def test_transposing_the_batch_leaves_the_loss_unchanged():
    """The rule is symmetric in meaning: texts as rows, images as columns, each side's alpha kept, gives the same sum."""
    bsz = 7
    x, y, s, b, kw = make_case(bsz, bsz, 3, "separate")
    perm = torch.randperm(bsz)
    kw["labels"] = perm
    forward = sigmoid_loss(x, y, s, b, reduction="sum", **kw)
    back = sigmoid_loss(y, x, s, b, reduction="sum", alpha_rows=kw["alpha_cols"], alpha_cols=kw["alpha_rows"],
                        labels=torch.argsort(perm), teacher_x=kw["teacher_y"], teacher_y=kw["teacher_x"],
                        teacher_scale=kw["teacher_scale"], teacher_bias=kw["teacher_bias"])
    torch.testing.assert_close(forward, back, rtol=1e-13, atol=0)


def test_offset_puts_the_positives_at_the_ranks_columns():
    x, y, s, b, kw = make_case(3, 8, 3, "self")
    kw.pop("labels")
    by_offset = sigmoid_loss(x, y, s, b, offset=4, reduction="none", **kw)
    by_labels = sigmoid_loss(x, y, s, b, labels=torch.arange(3) + 4, reduction="none", **kw)
    torch.testing.assert_close(by_offset, by_labels, rtol=0, atol=0)
    with pytest.raises(ValueError, match="offset"):
        sigmoid_loss(x, y, s, b, offset=6, **kw)


def test_rejects_half_a_teacher_and_unknown_reduction():
    x, y, s, b, kw = make_case(3, 4, 3, "self")
    with pytest.raises(ValueError, match="teacher_x and teacher_y"):
        sigmoid_loss(x, y, s, b, teacher_x=x.detach(), **kw)
    with pytest.raises(ValueError, match="reduction"):
        sigmoid_loss(x, y, s, b, reduction="avg", **kw)


# (b) gradcheck


def frozen_teacher(x, y, s, b, kw):
    """The self teacher written as a separate one: the same values, held constant while gradcheck
    moves x, y, s and b (a self teacher would move with them; its gradient is stopped, not zero)."""
    kw = dict(kw)
    kw.setdefault("teacher_x", x.detach().clone())
    kw.setdefault("teacher_y", y.detach().clone())
    kw.setdefault("teacher_scale", s.detach().clone())
    kw.setdefault("teacher_bias", b.detach().clone())
    return kw


@pytest.mark.parametrize("teacher", TEACHER_CASES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck(teacher, reduction):
    x, y, s, b, kw = make_case(4, 5, 3, teacher)
    kw = frozen_teacher(x, y, s, b, kw)
    assert torch.autograd.gradcheck(lambda *a: sigmoid_loss(*a, reduction=reduction, **kw), (x, y, s, b))


# (c) alpha = 0 is open_clip's SigLipLoss


def siglip_case(bsz, dim, scale_init, bias_init):
    img = torch.nn.functional.normalize(torch.randn(bsz, dim, dtype=F64), dim=-1).requires_grad_()
    txt = torch.nn.functional.normalize(torch.randn(bsz, dim, dtype=F64), dim=-1).requires_grad_()
    t = torch.tensor(scale_init, dtype=F64, requires_grad=True)  # the model's parameter: s = exp(t)
    b = torch.tensor(bias_init, dtype=F64, requires_grad=True)
    return img, txt, t, b


def grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("bsz", [1, 7, 97])
@pytest.mark.parametrize("dim", [3, 100])
@pytest.mark.parametrize("init", [(math.log(10), -10.0), (math.log(100), -2.0)])  # SigLIP's init, a later state
@pytest.mark.parametrize("teacher", [None, "self_scaled", "separate"])
def test_alpha_zero_is_open_clip_siglip(bsz, dim, init, teacher):
    open_clip_loss = pytest.importorskip("open_clip.loss")
    img, txt, t, b = siglip_case(bsz, dim, *init)
    kw = {}
    if teacher == "self_scaled":  # a teacher at weight zero changes nothing
        kw = dict(teacher_scale=3.0, teacher_bias=1.0)
    if teacher == "separate":
        kw = dict(teacher_x=torch.randn(bsz, 5, dtype=F64), teacher_y=torch.randn(bsz, 5, dtype=F64))
    ours = sigmoid_loss(img, txt, t.exp(), b, alpha_rows=0.0, **kw)
    theirs = open_clip_loss.SigLipLoss()(img, txt, t.exp(), b)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)
    for got, want in zip(grads(ours, (img, txt, t, b)), grads(theirs, (img, txt, t, b))):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_alpha_zero_without_bias_is_open_clip_siglip_without_bias():
    open_clip_loss = pytest.importorskip("open_clip.loss")
    img, txt, t, _ = siglip_case(7, 3, math.log(10), 0.0)
    ours = sigmoid_loss(img, txt, t.exp(), None)
    theirs = open_clip_loss.SigLipLoss()(img, txt, t.exp(), None)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)
    for got, want in zip(grads(ours, (img, txt, t)), grads(theirs, (img, txt, t))):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_open_clip_ranks_are_local_rows_against_all_columns(world):
    """docs/siglip_loss.md, across ranks: open_clip's rank r computes _loss(own images, own texts) plus
    _loss(own images, rank k's texts, negative_only) for every k != r, whatever dist_impl moves the texts;
    that is rows = rank r's images, columns = all texts, positives at offset r b. Every dist_impl returns
    each text's gradient summed over the ranks that used it: the gradient of sum_r L_r, simulated here
    in one process."""
    open_clip_loss = pytest.importorskip("open_clip.loss")
    bsz = 5
    img, txt, t, b = siglip_case(bsz * world, 4, math.log(10), -10.0)
    siglip = open_clip_loss.SigLipLoss()
    img_r, txt_r = img.split(bsz), txt.split(bsz)
    theirs = [siglip._loss(img_r[r], txt_r[r], t.exp(), b)
              + sum(siglip._loss(img_r[r], txt_r[k], t.exp(), b, negative_only=True) for k in range(world) if k != r)
              for r in range(world)]
    ours = [sigmoid_loss(img_r[r], txt, t.exp(), b, offset=r * bsz) for r in range(world)]
    torch.testing.assert_close(torch.stack(ours), torch.stack(theirs), rtol=0, atol=1e-10)
    for got, want in zip(grads(sum(ours), (img, txt, t, b)), grads(sum(theirs), (img, txt, t, b))):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


# (d) the teacher gets no gradient


@pytest.mark.parametrize("teacher", ["self_scaled", "separate"])
def test_teacher_tensors_get_no_gradient(teacher):
    x, y, s, b, kw = make_case(5, 7, 3, teacher)
    kw["teacher_scale"] = torch.tensor(kw["teacher_scale"], dtype=F64, requires_grad=True)
    kw["teacher_bias"] = torch.tensor(kw["teacher_bias"], dtype=F64, requires_grad=True)
    if teacher == "separate":
        kw["teacher_x"].requires_grad_()
        kw["teacher_y"].requires_grad_()
    sigmoid_loss(x, y, s, b, **kw).backward()
    for name in ("teacher_x", "teacher_y", "teacher_scale", "teacher_bias"):
        if name in kw:
            assert kw[name].grad is None, name
    assert all(v.grad is not None for v in (x, y, s, b))


# dtypes


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtypes_accumulate_in_float32_and_return_gradients_in_the_input_dtype(dtype):
    x = torch.randn(5, 8, dtype=dtype, requires_grad=True)
    y = torch.randn(7, 8, dtype=dtype, requires_grad=True)
    s = torch.tensor(3.0, requires_grad=True)
    b = torch.tensor(-2.0, requires_grad=True)
    loss = sigmoid_loss(x, y, s, b, alpha_rows=0.3, offset=1)
    loss.backward()
    assert loss.dtype == torch.float32
    assert x.grad.dtype == y.grad.dtype == dtype and s.grad.dtype == b.grad.dtype == torch.float32
    want = sigmoid_loss(x.detach().double(), y.detach().double(), 3.0, -2.0, alpha_rows=0.3, offset=1)
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-5)
