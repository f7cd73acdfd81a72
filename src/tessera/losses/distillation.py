"""DeiT's distillation objectives (Touvron et al., arXiv:2012.12877, section 4).

The student has two outputs: Z_cls from the CLS token's head, trained on the
true label y, and Z_dist from the distillation token's head, trained to follow
a teacher's logits Z_t (notes, seed 003, "Knowledge distillation", "DEIT").
Models without a distillation token pass the same logits twice.

Hard distillation (the notes' form, with the teacher's label epsilon-smoothed):

    L_hard = 1/2 CE(Z_cls, y) + 1/2 CE(Z_dist, y_t),
    y_t = (1 - eps) on argmax Z_t, eps / (K - 1) on each other class

Soft distillation (Hinton et al.'s KL between temperature-softened distributions):

    L_soft = (1 - alpha) CE(Z_cls, y) + alpha T^2 KL(softmax(Z_t / T) || softmax(Z_dist / T))

The T^2 factor keeps the gradient scale of the soft term independent of T.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_logits(name: str, logits: Tensor, like: Tensor | None = None) -> None:
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"{name} must be (B, K) logits with K >= 2 classes, got shape {tuple(logits.shape)}")
    if like is not None and logits.shape != like.shape:
        raise ValueError(f"{name} has shape {tuple(logits.shape)}, expected {tuple(like.shape)} like cls_logits")


def _cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Mean CE against class indices (B,) or a distribution per sample (B, K) (mixup, smoothing)."""
    if target.ndim == 1:
        if target.shape[0] != logits.shape[0] or target.is_floating_point():
            raise ValueError(
                f"target must be (B={logits.shape[0]},) class indices or (B, K) probabilities, "
                f"got {target.dtype} of shape {tuple(target.shape)}"
            )
        return F.cross_entropy(logits, target)
    if target.shape != logits.shape:
        raise ValueError(f"target of shape {tuple(target.shape)} does not fit logits {tuple(logits.shape)}")
    return -(target * logits.log_softmax(dim=-1)).sum(dim=-1).mean()


def smooth_teacher_labels(teacher_logits: Tensor, eps: float = 0.1) -> Tensor:
    """The teacher's hard decision as a target distribution.

    Args:
        teacher_logits: Z_t, shape (B, K).
        eps: mass taken from the teacher's class and shared equally by the other K - 1.

    Returns:
        y_t, shape (B, K): 1 - eps on argmax Z_t, eps / (K - 1) elsewhere.
    """
    _check_logits("teacher_logits", teacher_logits)
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"eps must be in [0, 1), got {eps}")
    B, K = teacher_logits.shape
    y_t = teacher_logits.new_full((B, K), eps / (K - 1), dtype=torch.float32)
    return y_t.scatter_(1, teacher_logits.argmax(dim=-1, keepdim=True), 1.0 - eps)


def hard_distillation_loss(
    cls_logits: Tensor,
    dist_logits: Tensor,
    target: Tensor,
    teacher_logits: Tensor,
    eps: float = 0.1,
) -> Tensor:
    """L = 1/2 CE(Z_cls, y) + 1/2 CE(Z_dist, y_t), y_t the eps-smoothed teacher argmax.

    Args:
        cls_logits: Z_cls, (B, K), the CLS token's head.
        dist_logits: Z_dist, (B, K), the distillation token's head.
        target: y, class indices (B,) or a distribution (B, K).
        teacher_logits: Z_t, (B, K); no gradient flows into the teacher.
        eps: smoothing of the teacher's label (DeiT's epsilon, 0.1; 0 = plain argmax).

    Returns:
        The scalar loss.
    """
    _check_logits("cls_logits", cls_logits)
    _check_logits("dist_logits", dist_logits, cls_logits)
    _check_logits("teacher_logits", teacher_logits, cls_logits)
    y_t = smooth_teacher_labels(teacher_logits.detach(), eps).to(dist_logits.dtype)
    return 0.5 * _cross_entropy(cls_logits, target) + 0.5 * _cross_entropy(dist_logits, y_t)


def soft_distillation_loss(
    cls_logits: Tensor,
    dist_logits: Tensor,
    target: Tensor,
    teacher_logits: Tensor,
    temperature: float = 3.0,
    alpha: float = 0.1,
) -> Tensor:
    """L = (1 - alpha) CE(Z_cls, y) + alpha T^2 KL(softmax(Z_t/T) || softmax(Z_dist/T)).

    The KL is summed over classes and averaged over the batch (the paper's
    per-sample KL). DeiT's released code divides the summed KL by B * K
    instead, which is this value divided by K; scale alpha if matching it.

    Args:
        cls_logits: Z_cls, (B, K).
        dist_logits: Z_dist, (B, K).
        target: y, class indices (B,) or a distribution (B, K).
        teacher_logits: Z_t, (B, K); no gradient flows into the teacher.
        temperature: T (the paper's tau = 3.0).
        alpha: weight of the distillation term (the paper's lambda = 0.1).

    Returns:
        The scalar loss.
    """
    _check_logits("cls_logits", cls_logits)
    _check_logits("dist_logits", dist_logits, cls_logits)
    _check_logits("teacher_logits", teacher_logits, cls_logits)
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    T = temperature
    log_p_student = (dist_logits / T).log_softmax(dim=-1)
    log_p_teacher = (teacher_logits.detach() / T).log_softmax(dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return (1.0 - alpha) * _cross_entropy(cls_logits, target) + alpha * T * T * kl
