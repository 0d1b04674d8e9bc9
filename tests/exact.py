"""The PSD loss and its gradients written out by hand in numpy float64 (docs/loss.md, term by term).

Independent of torch's softmax and autograd, so the reference is checked against the
formulas themselves rather than against another implementation of them.
"""
import numpy as np


def softmax_rows(a):
    e = np.exp(a - a.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def one_direction(x, y, s, alpha, labels, tx=None, ty=None, ts=None, g=None):
    """Row losses l_i and dL/dx, dL/dy, dL/ds for L = sum_i g_i l_i."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m, n = x.shape[0], y.shape[0]
    g = np.ones(m) if g is None else np.asarray(g, np.float64)
    ts = s if ts is None else ts
    d = x @ y.T
    S = s * d
    T = ts * (d if tx is None else np.asarray(tx, np.float64) @ np.asarray(ty, np.float64).T)
    P, R = softmax_rows(S), softmax_rows(T)
    lse = np.log(np.exp(S - S.max(1, keepdims=True)).sum(1)) + S.max(1)
    loss = np.empty(m)
    Q = np.zeros((m, n))
    for i in range(m):
        c = labels[i]
        # l_i = LSE_j(S_ij) - (1 - alpha_i) S_{i,c_i} - alpha_i sum_j R_ij S_ij
        loss[i] = lse[i] - (1 - alpha[i]) * S[i, c] - alpha[i] * (R[i] * S[i]).sum()
        Q[i] = alpha[i] * R[i]
        Q[i, c] += 1 - alpha[i]
    G = g[:, None] * (P - Q)
    return loss, s * G @ y, s * G.T @ x, (G * d).sum()
