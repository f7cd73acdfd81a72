"""DINO: self-distillation with no labels, around any encoder.

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers",
ICCV 2021, arXiv:2104.14294. Notes: 003 ("DINO": an EMA teacher "derived from the
student's past states"; "the teacher predictions are mean-centred and sharpened";
cross-entropy between student and teacher), 004 ("train with no labels").

    g_s = head(encoder_s(x)),  g_t = head(encoder_t(x))         (B, K) logits per view
    P_t = softmax((g_t - c) / tau_t),  P_s = softmax(g_s / tau_s)
    L = mean over (teacher global view a, student view b != a) of  -sum_k P_t^a log P_s^b
    c <- m c + (1 - m) mean_batch(g_t)                   (centring, m = 0.9; all ranks)
    theta_t <- lambda theta_t + (1 - lambda) theta_s     (lambda: cosine 0.996 -> 1)

The teacher sees the 2 global crops, the student all crops (global and local,
the multi-crop of `tessera.ssl.multicrop`). `forward` changes no state: it
returns the batch centre, and the training task calls `update_center(out)` and
`update_teacher` after the optimizer step.

Collapse has two faces (paper, section 5.3): uniform outputs (teacher entropy
-> log K) and one dimension dominating (entropy -> 0, every image the same
output). `DINOOutput` carries the teacher's mean entropy, the entropy of its
batch-mean distribution and the KL between the teacher output and the
centred-and-sharpened centre, so a log shows which one is happening.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from tessera.core.base import TesseraModel, replace_config
from tessera.core.ema import EMAModel
from tessera.core.registry import register_model
from tessera.ssl.encoder import build_encoder, freeze_args, patch_tokens, pooled


@dataclass(frozen=True)
class DINOConfig:
    """DINO hyper-parameters; defaults are the paper's (ViT-S/16, K = 65536).

    Args:
        encoder: a registered encoder (`tessera.list_models(kind="encoder")`).
        encoder_args: its config overrides; ViTs need dynamic_img_size=True for the local crops.
        out_dim: K, the number of prototypes (outputs of the head).
        hidden_dim: width of the head's MLP.
        bottleneck_dim: width of the l2-normalised bottleneck before the last layer.
        head_layers: linear layers of the MLP (3: in -> hidden -> hidden -> bottleneck).
        norm_last_layer: fix the weight-norm scale g of the last layer to 1 (more stable).
        use_bn_in_head: BatchNorm after each hidden layer of the head (the official code's
            `use_bn_in_head`), always on batch statistics, for the EMA teacher too.
        student_temp: tau_s.
        teacher_temp: final tau_t (after the warm-up, `teacher_temperature`).
        warmup_teacher_temp: tau_t at the start of the warm-up.
        center_momentum: m of the centre's EMA.
        teacher_momentum: lambda at the start of training (cosine to 1, `teacher_momentum`).
        local_crop_size: side of the local crops (example inputs; the crops come from the data).
        num_local_crops: local crops per image (example inputs).
    """

    encoder: str = "vit_small_patch16_224"
    encoder_args: dict[str, Any] = field(default_factory=lambda: {"dynamic_img_size": True})
    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    head_layers: int = 3
    norm_last_layer: bool = True
    use_bn_in_head: bool = False
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    center_momentum: float = 0.9
    teacher_momentum: float = 0.996
    local_crop_size: int = 96
    num_local_crops: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoder_args", freeze_args(dict(self.encoder_args)))
        for name in ("out_dim", "hidden_dim", "bottleneck_dim", "local_crop_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.head_layers < 1:
            raise ValueError(f"head_layers must be >= 1, got {self.head_layers}")
        if self.num_local_crops < 0:
            raise ValueError(f"num_local_crops must be >= 0, got {self.num_local_crops}")
        for name in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("center_momentum", "teacher_momentum"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


# --------------------------------------------------------------------------- schedules


def teacher_temperature(epoch: float, warmup_epochs: float, start: float = 0.04, end: float = 0.07) -> float:
    """tau_t: linear from `start` to `end` over `warmup_epochs`, then constant (DINO: 30 epochs)."""
    if warmup_epochs <= 0 or epoch >= warmup_epochs:
        return end
    return start + (end - start) * epoch / warmup_epochs


def teacher_momentum(step: int, total_steps: int, base: float = 0.996) -> float:
    """lambda = 1 - (1 - base)(cos(pi k / K) + 1) / 2: a cosine from `base` at step 0 to 1 at the end."""
    progress = min(1.0, step / max(1, total_steps))
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1) / 2


# --------------------------------------------------------------------------- pure losses


def sharpen_and_centre(teacher_logits: Tensor, center: Tensor, temp: float) -> Tensor:
    """P_t = softmax((g_t - c) / tau_t), (B, K)."""
    return F.softmax((teacher_logits.float() - center) / temp, dim=-1)


def sinkhorn_knopp(teacher_logits: Tensor, temp: float, iterations: int = 3) -> Tensor:
    """Teacher targets by Sinkhorn-Knopp (SwAV, DINOv2): equal mass per prototype over the batch.

    Q = exp(g_t / tau_t), normalised alternately so that its K rows each sum to
    1/K and its B columns each to 1/B (over all ranks), then scaled so each sample sums to 1.

    Args:
        teacher_logits: (B, K).
    Returns:
        (B, K) target distributions.
    """
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    logits = teacher_logits.float() / temp
    Q = torch.exp(logits - logits.max()).t()  # (K, B); a global shift cancels in the normalisation
    B, K = Q.shape[1] * world, Q.shape[0]
    total = Q.sum()
    _all_reduce(total)
    Q = Q / total
    for _ in range(iterations):
        rows = Q.sum(dim=1, keepdim=True)  # (K, 1)
        _all_reduce(rows)
        Q = Q / rows / K
        Q = Q / Q.sum(dim=0, keepdim=True) / B
    return (Q * B).t()


def _all_reduce(t: Tensor) -> None:
    """Sum over ranks in place, only when a process group is up (guarded: single-process runs skip it)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)


def cross_view_loss(student_logits: list[Tensor], teacher_probs: list[Tensor], student_temp: float) -> Tensor:
    """DINO's loss: mean over (teacher view a, student view b), b != a, of H(P_t^a, P_s^b).

    Args:
        student_logits: one (B, K) per student view, the teacher's views first (same order).
        teacher_probs: one (B, K) target per teacher view.
    """
    total, terms = 0.0, 0
    log_p = [F.log_softmax(s.float() / student_temp, dim=-1) for s in student_logits]
    for a, q in enumerate(teacher_probs):
        for b, lp in enumerate(log_p):
            if a == b:
                continue  # the identical view
            total = total + torch.sum(-q * lp, dim=-1).mean()
            terms += 1
    if terms == 0:
        raise ValueError("DINO needs at least two views (two global crops, or one global + local crops)")
    return total / terms


def entropy(p: Tensor) -> Tensor:
    """H(p) = -sum p log p per row, (..., K) -> (...) in nats."""
    return -(p * torch.log(p.clamp_min(1e-12))).sum(dim=-1)


# --------------------------------------------------------------------------- network


class WeightNormLinear(nn.Module):
    """y = g * (v / ||v||) x, row-wise: the weight-normalised last layer of the DINO head (no bias).

    With `learn_scale=False` g is fixed to 1 (DINO's `norm_last_layer=True`).
    """

    def __init__(self, in_dim: int, out_dim: int, learn_scale: bool = False) -> None:
        super().__init__()
        self.v = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.kaiming_uniform_(self.v, a=math.sqrt(5))  # nn.Linear's default, as the official head
        self.g = nn.Parameter(torch.ones(out_dim, 1)) if learn_scale else None

    def forward(self, x: Tensor) -> Tensor:
        """(..., in_dim) -> (..., out_dim)."""
        w = F.normalize(self.v, dim=1)
        if self.g is not None:
            w = w * self.g
        return F.linear(x, w)


class DINOHead(nn.Module):
    """MLP (GELU) -> l2-normalise -> weight-normalised linear to K prototypes."""

    def __init__(
        self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
        layers: int = 3, norm_last_layer: bool = True, use_bn: bool = False,
    ) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (layers - 1) + [bottleneck_dim]
        mlp: list[nn.Module] = []
        for i in range(layers):
            mlp.append(nn.Linear(dims[i], dims[i + 1]))
            if i < layers - 1:
                if use_bn:
                    # Batch statistics always (no running averages): the teacher, an EMA copy that
                    # runs in eval mode, standardises its batch as the official (train-mode) teacher does.
                    mlp.append(nn.BatchNorm1d(dims[i + 1], track_running_stats=False))
                mlp.append(nn.GELU())
        self.mlp = nn.Sequential(*mlp)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, learn_scale=not norm_last_layer)

    def forward(self, x: Tensor) -> Tensor:
        """(..., in_dim) -> logits (..., K)."""
        lead = x.shape[:-1]  # BatchNorm1d wants (N, C): flatten the leading dimensions
        z = self.mlp(x.reshape(-1, x.shape[-1]))
        z = z.reshape(*lead, z.shape[-1])
        return self.last_layer(F.normalize(z, dim=-1))


@dataclass
class NetworkOutput:
    """One network pass: the pooled embedding (B, C), patch tokens (B, N, C), head logits (B, K)."""

    embedding: Tensor
    patches: Tensor
    logits: Tensor


class DINONetwork(nn.Module):
    """Encoder + DINO head (the student; the teacher is its EMA). Optional second head for patches (iBOT)."""

    def __init__(self, encoder: nn.Module, head: DINOHead, patch_head: DINOHead | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.patch_head = patch_head

    def forward(self, x: Tensor, mask: Tensor | None = None) -> NetworkOutput:
        """Images (B, C, H, W) (+ a (B, N_patches) mask) -> embedding, patch tokens, logits."""
        tokens = self.encoder.forward_tokens(x, mask)  # (B, prefix + N, C)
        emb = pooled(self.encoder, tokens)
        return NetworkOutput(emb, patch_tokens(self.encoder, tokens), self.head(emb))

    def project_patches(self, patches: Tensor) -> Tensor:
        """Patch tokens (..., C) -> logits (..., K) through the patch head (iBOT), else the shared head."""
        head = self.patch_head if self.patch_head is not None else self.head
        return head(patches)


# --------------------------------------------------------------------------- the wrapper


@dataclass
class DINOOutput:
    """What one DINO forward gives (diagnostics are detached).

    Attributes:
        loss: the cross-view cross-entropy (plus DINOv2's terms), a scalar.
        dino_loss: the DINO term alone.
        batch_center: mean teacher logits over the batch and global views (1, K),
            for `update_center` (all-reduced there).
        teacher_entropy: mean H(P_t) in nats (log K: uniform collapse).
        teacher_batch_entropy: H(mean P_t) (near 0 with a low `teacher_entropy`: one-hot collapse).
        kl_teacher_center: mean KL(P_t || softmax(c / tau_t)), how far the teacher is from its own centre.
        teacher_temp: the tau_t used.
    """

    loss: Tensor
    dino_loss: Tensor
    batch_center: Tensor
    teacher_entropy: Tensor
    teacher_batch_entropy: Tensor
    kl_teacher_center: Tensor
    teacher_temp: Tensor


class DINO(TesseraModel):
    """Student + EMA teacher + centre (`DINOConfig`).

    `forward(global_views, local_views=None, teacher_temp=None)`:
    global_views (2, B, C, H, W), local_views (V, B, C, h, w).
    After each optimizer step call `update_teacher(momentum)` and `update_center(out)`.
    """

    family = "dino"
    head_keys = ()
    uses_mask_token = False

    def __init__(self, config: DINOConfig) -> None:
        super().__init__(config)
        c = config
        encoder = build_encoder(c.encoder, c.encoder_args, use_mask_token=self.uses_mask_token)
        dim = encoder.feature_info[-1]["num_chs"]
        head = DINOHead(dim, c.out_dim, c.hidden_dim, c.bottleneck_dim, c.head_layers, c.norm_last_layer, c.use_bn_in_head)
        self.student = DINONetwork(encoder, head, self._patch_head(dim))
        # The teacher starts as a copy of the student and never gets gradients.
        self.teacher = EMAModel(self.student, decay=c.teacher_momentum, warmup=False)
        self.register_buffer("center", torch.zeros(1, c.out_dim))

    def _patch_head(self, dim: int) -> DINOHead | None:
        return None

    @property
    def encoder(self) -> nn.Module:
        """The student's encoder (what downstream tasks keep)."""
        return self.student.encoder

    @property
    def teacher_encoder(self) -> nn.Module:
        """The teacher's encoder (DINO evaluates the teacher: its features are better)."""
        return self.teacher.module.encoder

    @property
    def features_encoder(self) -> nn.Module:
        """The encoder downstream evaluation reads: the teacher's (DINO evaluates the teacher)."""
        return self.teacher_encoder

    @property
    def input_size(self) -> tuple[int, int, int]:
        """(C, H, W) of a global crop."""
        return tuple(self.encoder.input_size)

    def example_inputs(self, batch_size: int = 2) -> tuple[Tensor, Tensor]:
        """(2, B, C, H, W) global and (V, B, C, h, w) local crops of random pixels."""
        C, H, W = self.input_size
        s = self.config.local_crop_size
        return torch.randn(2, batch_size, C, H, W), torch.randn(self.config.num_local_crops, batch_size, C, s, s)

    def _check_views(self, global_views: Tensor, local_views: Tensor | None) -> None:
        if not isinstance(global_views, Tensor) or global_views.ndim != 5:
            raise ValueError(
                f"global_views must be a 5-D tensor (V, B, C, H, W), got "
                f"{tuple(getattr(global_views, 'shape', ())) or type(global_views).__name__}"
            )
        if local_views is not None:
            if local_views.ndim != 5 or local_views.shape[1:3] != global_views.shape[1:3]:
                raise ValueError(
                    f"local_views must be (V, B, C, h, w) with the global views' B, C = "
                    f"{tuple(global_views.shape[1:3])}, got {tuple(local_views.shape)}"
                )
        P = self.encoder.patch_size
        for name, v in (("global", global_views), ("local", local_views)):
            if v is not None and v.shape[0] and min(v.shape[-2:]) < P:
                raise ValueError(
                    f"{name} crops of {v.shape[-2]}x{v.shape[-1]} are smaller than one patch ({P}x{P} pixels)"
                )

    def _run(self, net: nn.Module, views: Tensor, mask: Tensor | None = None) -> NetworkOutput:
        """All views of one resolution through `net` as one batch: (V, B, ...) -> outputs of (V B, ...)."""
        return net(views.flatten(0, 1), mask)

    def forward(
        self, global_views: Tensor, local_views: Tensor | None = None, teacher_temp: float | None = None
    ) -> DINOOutput:
        """DINO's loss on a multi-crop batch.

        Args:
            global_views: (V_g, B, C, H, W), V_g = 2 (seen by teacher and student).
            local_views: (V_l, B, C, h, w) smaller crops (student only), or None.
            teacher_temp: tau_t for this step (the warm-up schedule); None: the final one.
        """
        self._check_views(global_views, local_views)
        tau_t = self.config.teacher_temp if teacher_temp is None else float(teacher_temp)
        Vg, B = global_views.shape[:2]
        with torch.no_grad():
            t_out = self._run(self.teacher, global_views)
        s_out = self._run(self.student, global_views)
        student_logits = list(s_out.logits.chunk(Vg))
        if local_views is not None and local_views.shape[0]:
            student_logits += list(self._run(self.student, local_views).logits.chunk(local_views.shape[0]))
        t_probs = self.teacher_targets(t_out.logits, tau_t)  # (V_g B, K)
        dino = cross_view_loss(student_logits, list(t_probs.chunk(Vg)), self.config.student_temp)
        return self._output(dino, dino, t_out.logits, t_probs, tau_t)

    def teacher_targets(self, teacher_logits: Tensor, temp: float) -> Tensor:
        """P_t: centred and sharpened teacher logits (B, K) -> probabilities (B, K)."""
        return sharpen_and_centre(teacher_logits, self.center, temp)

    def _output(self, loss: Tensor, dino: Tensor, t_logits: Tensor, t_probs: Tensor, tau_t: float) -> DINOOutput:
        with torch.no_grad():
            centre_p = F.softmax(self.center.float() / tau_t, dim=-1)  # the centre as a distribution
            kl = (t_probs * (torch.log(t_probs.clamp_min(1e-12)) - torch.log(centre_p.clamp_min(1e-12)))).sum(-1)
            return DINOOutput(
                loss=loss,
                dino_loss=dino.detach(),
                batch_center=t_logits.float().mean(dim=0, keepdim=True),
                teacher_entropy=entropy(t_probs).mean(),
                teacher_batch_entropy=entropy(t_probs.mean(dim=0)),
                kl_teacher_center=kl.mean(),
                teacher_temp=torch.tensor(tau_t),
            )

    # ------------------------------------------------------------- state updates (after the step)

    @torch.no_grad()
    def update_teacher(self, momentum: float | None = None) -> None:
        """theta_t <- lambda theta_t + (1 - lambda) theta_s (lambda: `momentum`, else the config's)."""
        self.teacher.update(self.student, decay=self.config.teacher_momentum if momentum is None else momentum)

    @torch.no_grad()
    def update_center(self, out: DINOOutput) -> None:
        """c <- m c + (1 - m) mean over ranks of `out.batch_center` (all-reduce only when distributed)."""
        self._ema_center(self.center, out.batch_center)

    def _ema_center(self, center: Tensor, batch_center: Tensor) -> None:
        batch_center = batch_center.detach().float().clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_center)
            batch_center /= dist.get_world_size()
        m = self.config.center_momentum
        center.mul_(m).add_(batch_center.to(center), alpha=1 - m)

    def last_layer_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the student head's last layer (frozen, gradients dropped, in the first epoch)."""
        return self.student.head.last_layer.parameters()

    def collapse(self, out: DINOOutput, low: float = 0.1, high: float = 0.9) -> str | None:
        """'uniform' / 'one-hot' when the teacher's entropy leaves (low, high) x log K, else None."""
        log_k = math.log(self.config.out_dim)
        h = float(out.teacher_entropy)
        if h >= high * log_k:
            return "uniform"
        if h <= low * log_k and float(out.teacher_batch_entropy) <= high * log_k:
            return "one-hot"
        return None

    def no_weight_decay(self) -> set[str]:
        """The student encoder's exemptions (position table, tokens)."""
        return {f"student.encoder.{n}" for n in self.encoder.no_weight_decay()}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the student encoder's blocks in backward."""
        self.grad_checkpointing = enable
        self.student.encoder.set_grad_checkpointing(enable)


# --------------------------------------------------------------------------- registry

# Seconds-fast variant for the contract tests: 32 px global, 16 px local crops, K = 64.
TINY_ENCODER = dict(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2, dynamic_img_size=True)
TINY_HEAD = dict(out_dim=64, hidden_dim=32, bottleneck_dim=16, local_crop_size=16, num_local_crops=2)


def _register(name: str, encoder: str, doc: str, **fixed: Any) -> None:
    base = DINOConfig(encoder=encoder, **fixed)

    def build(**kw: Any) -> DINO:
        return DINO(replace_config(base, **kw))

    build.__name__ = name
    build.__doc__ = doc
    register_model(name, kind="wrapper", tiny={"encoder_args": TINY_ENCODER, **TINY_HEAD})(build)


_register("dino_vit_small_patch16_224", "vit_small_patch16_224", "DINO on ViT-S/16 (K = 65536, 2 x 224 + 8 x 96 crops).")
_register("dino_vit_base_patch16_224", "vit_base_patch16_224", "DINO on ViT-B/16 (K = 65536, 2 x 224 + 8 x 96 crops).")
