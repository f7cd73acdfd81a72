"""DeiT's distillation objectives against values computed by hand (plain Python math)."""

import math

import pytest
import torch

from tessera.losses import hard_distillation_loss, smooth_teacher_labels, soft_distillation_loss


def _log_softmax(z):
    m = max(z)
    lse = m + math.log(sum(math.exp(v - m) for v in z))
    return [v - lse for v in z]


def _ce(z, q):
    """-sum_k q_k log softmax(z)_k for a target distribution q."""
    return -sum(qk * lk for qk, lk in zip(q, _log_softmax(z)))


CLS = [[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]]
DIST = [[0.0, 0.0, 1.0], [2.0, 1.0, -1.0]]
TEACHER = [[0.1, 5.0, 0.2], [0.0, 0.3, 4.0]]
Y = [0, 2]


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_smoothed_teacher_label():
    y_t = smooth_teacher_labels(t(TEACHER), eps=0.1)
    torch.testing.assert_close(y_t, torch.tensor([[0.05, 0.9, 0.05], [0.05, 0.05, 0.9]]))
    torch.testing.assert_close(smooth_teacher_labels(t(TEACHER), eps=0.0), torch.tensor([[0.0, 1, 0], [0, 0, 1]]))


def test_hard_distillation_by_hand():
    # First sample worked out in full: CE(cls, 0) = log(e + e^2 + e^3) - 1,
    # CE(dist, y_t) with y_t = (0.05, 0.9, 0.05) = log(2 + e) - 0.05 * 1.
    first = 0.5 * (math.log(math.e + math.e**2 + math.e**3) - 1) + 0.5 * (math.log(2 + math.e) - 0.05)
    assert abs(first - 1.9545253) < 1e-6
    eps, K = 0.1, 3
    expected = 0.0
    for c, d, te, y in zip(CLS, DIST, TEACHER, Y):
        k_t = te.index(max(te))
        y_t = [1 - eps if k == k_t else eps / (K - 1) for k in range(K)]
        expected += 0.5 * _ce(c, [float(k == y) for k in range(K)]) + 0.5 * _ce(d, y_t)
    expected /= 2
    loss = hard_distillation_loss(t(CLS), t(DIST), torch.tensor(Y), t(TEACHER), eps=0.1)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_soft_distillation_by_hand():
    T, alpha = 2.0, 0.3
    expected = 0.0
    for c, d, te, y in zip(CLS, DIST, TEACHER, Y):
        log_pt = _log_softmax([v / T for v in te])
        log_ps = _log_softmax([v / T for v in d])
        kl = sum(math.exp(a) * (a - b) for a, b in zip(log_pt, log_ps))
        expected += (1 - alpha) * _ce(c, [float(k == y) for k in range(3)]) + alpha * T * T * kl
    expected /= 2
    loss = soft_distillation_loss(t(CLS), t(DIST), torch.tensor(Y), t(TEACHER), temperature=T, alpha=alpha)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # alpha = 0 is plain cross-entropy on the CLS head; a student equal to the teacher has no KL.
    ce = torch.nn.functional.cross_entropy(t(CLS), torch.tensor(Y))
    torch.testing.assert_close(soft_distillation_loss(t(CLS), t(DIST), torch.tensor(Y), t(TEACHER), alpha=0.0), ce)
    same = soft_distillation_loss(t(CLS), t(TEACHER), torch.tensor(Y), t(TEACHER), alpha=1.0)
    assert same.abs().item() < 1e-12


def test_soft_targets_and_no_teacher_gradient():
    cls_logits = t(CLS).requires_grad_()
    teacher = t(TEACHER).requires_grad_()
    y = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.2, 0.8]], dtype=torch.float64)  # e.g. mixup targets
    loss = hard_distillation_loss(cls_logits, t(DIST), y, teacher) + soft_distillation_loss(cls_logits, t(DIST), y, teacher)
    loss.backward()
    assert teacher.grad is None and cls_logits.grad is not None
    # With a distribution as y the CE term is -sum_k y_k log softmax(Z_cls)_k.
    y_t = [[0.05, 0.9, 0.05], [0.05, 0.05, 0.9]]
    expected = sum(0.5 * _ce(c, q) + 0.5 * _ce(d, qt) for c, d, q, qt in zip(CLS, DIST, y.tolist(), y_t)) / 2
    assert hard_distillation_loss(t(CLS), t(DIST), y, t(TEACHER)).item() == pytest.approx(expected, abs=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"\(B, K\) logits"):
        hard_distillation_loss(torch.zeros(3), torch.zeros(3), torch.tensor([0]), torch.zeros(3))
    with pytest.raises(ValueError, match="like cls_logits"):
        hard_distillation_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.tensor([0, 1]), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="eps"):
        smooth_teacher_labels(torch.zeros(2, 3), eps=1.0)
    with pytest.raises(ValueError, match="temperature"):
        soft_distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 1]), torch.zeros(2, 3), temperature=0)
    with pytest.raises(ValueError, match="class indices"):
        hard_distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0.0, 1.0]), torch.zeros(2, 3))
