"""DINOv2's objective: DINO + iBOT masked-patch distillation + KoLeo, optional Sinkhorn-Knopp.

Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision",
arXiv:2304.07193 (section 4); iBOT: Zhou et al., arXiv:2111.07832. Notes: 003
("DINOv2: masked modeling is added (only to student)").

    DINO term   on the class token, as `tessera.ssl.dino`
    iBOT term   student sees global crops with random patches masked (mask token),
                teacher sees them whole; for each masked patch i:
                -sum_k P_t(patch_i) log P_s(masked patch_i), averaged per image
    KoLeo       -mean_i log min_{j != i} ||f_i - f_j||  on the l2-normalised student
                class tokens of each global crop (spreads the features in a batch)
    L = L_DINO + w_iBOT L_iBOT + w_KoLeo L_KoLeo          (w: 1.0, 0.1)

Teacher targets are centred (a running centre per head, as DINO) or, with
`centering="sinkhorn_knopp"`, balanced by three Sinkhorn-Knopp iterations (the
released models). The DINOv2 backbone details (layer scale, register tokens)
are fields of the ViT config; `tessera.ssl.dinov2_convert` loads transformers'
`Dinov2Model` weights into it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from tessera.core.base import replace_config
from tessera.core.registry import register_model
from tessera.ssl.dino import (
    DINO,
    TINY_ENCODER,
    TINY_HEAD,
    DINOConfig,
    DINOHead,
    DINOOutput,
    cross_view_loss,
    sharpen_and_centre,
    sinkhorn_knopp,
)
from tessera.ssl.masking import check_mask, check_mask_ratio, random_ratio_mask


@dataclass(frozen=True)
class DINOv2Config(DINOConfig):
    """DINOv2 hyper-parameters (defaults: the paper's ViT-S/14 recipe) on top of `DINOConfig`.

    Args:
        ibot_weight: weight of the iBOT masked-patch term.
        koleo_weight: weight of the KoLeo regulariser.
        centering: "centering" (DINO's running centre) or "sinkhorn_knopp".
        mask_ratio_min: smallest share of patches masked in a masked image.
        mask_ratio_max: largest share.
        mask_probability: share of the global crops that get a mask.
        separate_patch_head: a second head for the patch tokens (DINOv2 default: shared).
    """

    ibot_weight: float = 1.0
    koleo_weight: float = 0.1
    centering: Literal["centering", "sinkhorn_knopp"] = "sinkhorn_knopp"
    mask_ratio_min: float = 0.1
    mask_ratio_max: float = 0.5
    mask_probability: float = 0.5
    separate_patch_head: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.centering not in ("centering", "sinkhorn_knopp"):
            raise ValueError(f"centering must be 'centering' or 'sinkhorn_knopp', got {self.centering!r}")
        check_mask_ratio(self.mask_ratio_min, "mask_ratio_min")
        check_mask_ratio(self.mask_ratio_max, "mask_ratio_max")
        if self.mask_ratio_min > self.mask_ratio_max:
            raise ValueError(f"mask_ratio_min {self.mask_ratio_min} > mask_ratio_max {self.mask_ratio_max}")
        if not 0.0 <= self.mask_probability <= 1.0:
            raise ValueError(f"mask_probability must be in [0, 1], got {self.mask_probability}")
        if self.ibot_weight < 0 or self.koleo_weight < 0:
            raise ValueError(f"loss weights must be >= 0, got {self.ibot_weight}, {self.koleo_weight}")


def koleo_loss(features: Tensor, eps: float = 1e-8) -> Tensor:
    """KoLeo (Kozachenko-Leonenko entropy estimator): -mean_i log ||f_i - f_nn(i)|| on l2-normalised f.

    Args:
        features: (B, C), B >= 2.
    """
    f = F.normalize(features.float(), dim=-1, eps=eps)
    with torch.no_grad():
        dots = f @ f.t()
        dots.fill_diagonal_(-2.0)  # never one's own neighbour
        nn_idx = dots.argmax(dim=1)
    dist = F.pairwise_distance(f, f[nn_idx], p=2, eps=eps)
    return -torch.log(dist + eps).mean()


def ibot_loss(student_logits: Tensor, teacher_probs: Tensor, mask: Tensor, student_temp: float) -> Tensor:
    """iBOT's masked-patch cross-entropy, averaged over each image's masked patches, then over images.

    Args:
        student_logits: (M, K) for the M masked patches (in `mask`'s row-major order).
        teacher_probs: (M, K) targets for the same patches.
        mask: (B, N) bool, M True entries.
    """
    ce = torch.sum(-teacher_probs * F.log_softmax(student_logits.float() / student_temp, dim=-1), dim=-1)  # (M,)
    per_image = mask.sum(dim=1, keepdim=True).clamp(min=1).expand_as(mask)[mask]  # (M,) count of its image
    return (ce / per_image).sum() / mask.shape[0]


@dataclass
class DINOv2Output(DINOOutput):
    """`DINOOutput` plus the iBOT and KoLeo terms and the patch centre of the batch.

    Attributes:
        ibot_loss: the masked-patch term (0 when nothing is masked).
        koleo_loss: the KoLeo term.
        batch_patch_center: mean teacher patch logits over the masked patches (1, K).
        mask: the student's (V_g B, N_patches) mask.
    """

    ibot_loss: Tensor | None = None
    koleo_loss: Tensor | None = None
    batch_patch_center: Tensor | None = None
    mask: Tensor | None = None


class DINOv2(DINO):
    """DINO + iBOT + KoLeo (`DINOv2Config`); the student's encoder has a mask token.

    `forward(global_views, local_views=None, mask=None, teacher_temp=None)`;
    mask: (V_g B, N_patches) bool for the student's global views, None draws one.
    """

    family = "dinov2"
    uses_mask_token = True

    def __init__(self, config: DINOv2Config) -> None:
        super().__init__(config)
        self.register_buffer("patch_center", torch.zeros(1, config.out_dim))

    def _patch_head(self, dim: int) -> DINOHead | None:
        c = self.config
        if not c.separate_patch_head:
            return None
        return DINOHead(dim, c.out_dim, c.hidden_dim, c.bottleneck_dim, c.head_layers, c.norm_last_layer, c.use_bn_in_head)

    def example_inputs(self, batch_size: int = 2) -> tuple[Tensor, Tensor, Tensor]:
        """Global and local crops and a fixed mask (first image of each global view masked)."""
        g, l = super().example_inputs(batch_size)
        N = self.num_patches(g.shape[-2:])
        mask = torch.zeros(2 * batch_size, N, dtype=torch.bool)
        mask[::batch_size, ::3] = True
        return g, l, mask

    def num_patches(self, size: tuple[int, int]) -> int:
        """Patches of an (H, W) crop."""
        P = self.encoder.patch_size
        return (size[0] // P) * (size[1] // P)

    def random_mask(self, batch: int, size: tuple[int, int], device: Any = None) -> Tensor:
        """iBOT masks for `batch` global crops: `mask_probability` of them masked at a random ratio."""
        c = self.config
        return random_ratio_mask(
            batch, self.num_patches(size), (c.mask_ratio_min, c.mask_ratio_max), c.mask_probability, device=device
        )

    def teacher_targets(self, teacher_logits: Tensor, temp: float, center: Tensor | None = None) -> Tensor:
        """P_t by centring (with `center`, default the class-token centre) or Sinkhorn-Knopp."""
        if self.config.centering == "sinkhorn_knopp":
            return sinkhorn_knopp(teacher_logits, temp)
        return sharpen_and_centre(teacher_logits, self.center if center is None else center, temp)

    def forward(
        self,
        global_views: Tensor,
        local_views: Tensor | None = None,
        mask: Tensor | None = None,
        teacher_temp: float | None = None,
    ) -> DINOv2Output:
        """L_DINO + w_iBOT L_iBOT + w_KoLeo L_KoLeo on a multi-crop batch (see the module docstring)."""
        self._check_views(global_views, local_views)
        c = self.config
        tau_t = c.teacher_temp if teacher_temp is None else float(teacher_temp)
        Vg, B = global_views.shape[:2]
        size = tuple(global_views.shape[-2:])
        P = self.encoder.patch_size
        grid = (size[0] // P, size[1] // P)
        if mask is None:
            mask = self.random_mask(Vg * B, size, device=global_views.device)
        else:
            mask = check_mask(mask, Vg * B, grid)

        with torch.no_grad():
            t_out = self._run(self.teacher, global_views)  # the teacher sees the unmasked crops
            t_patch_logits = self.teacher.module.project_patches(t_out.patches[mask])  # (M, K)
        s_out = self._run(self.student, global_views, mask)
        student_logits = list(s_out.logits.chunk(Vg))
        if local_views is not None and local_views.shape[0]:
            student_logits += list(self._run(self.student, local_views).logits.chunk(local_views.shape[0]))

        t_probs = self.teacher_targets(t_out.logits, tau_t)
        dino = cross_view_loss(student_logits, list(t_probs.chunk(Vg)), c.student_temp)

        if mask.any():
            t_patch = self.teacher_targets(t_patch_logits, tau_t, self.patch_center)
            s_patch_logits = self.student.project_patches(s_out.patches[mask])
            ibot = ibot_loss(s_patch_logits, t_patch, mask, c.student_temp)
            patch_center = t_patch_logits.float().mean(dim=0, keepdim=True)
        else:
            ibot = s_out.patches.sum() * 0.0
            patch_center = self.patch_center.clone()

        koleo = s_out.embedding.sum() * 0.0
        if B >= 2:
            koleo = sum(koleo_loss(e) for e in s_out.embedding.chunk(Vg)) / Vg

        loss = dino + c.ibot_weight * ibot + c.koleo_weight * koleo
        base = self._output(loss, dino, t_out.logits, t_probs, tau_t)
        return DINOv2Output(
            **vars(base), ibot_loss=ibot.detach(), koleo_loss=koleo.detach(),
            batch_patch_center=patch_center, mask=mask,
        )

    @torch.no_grad()
    def update_center(self, out: DINOOutput) -> None:
        """Both running centres (class token and patches), averaged over ranks when distributed."""
        super().update_center(out)
        if isinstance(out, DINOv2Output) and out.batch_patch_center is not None:
            self._ema_center(self.patch_center, out.batch_patch_center)


# --------------------------------------------------------------------------- registry


def _register(name: str, encoder: str, encoder_args: dict, doc: str, **fixed: Any) -> None:
    base = DINOv2Config(encoder=encoder, encoder_args=encoder_args, **fixed)

    def build(**kw: Any) -> DINOv2:
        return DINOv2(replace_config(base, **kw))

    build.__name__ = name
    build.__doc__ = doc
    # the tiny encoder has the DINOv2 details too: layer scale and one register token
    tiny_encoder = {**TINY_ENCODER, "layer_scale_init": 1e-5, "num_register_tokens": 1}
    register_model(name, kind="wrapper", tiny={"encoder_args": tiny_encoder, **TINY_HEAD})(build)


# The released ViT-S/14 and ViT-B/14 were trained at 224 px (then 518 px) with 98 px local crops,
# layer scale initialised at 1e-5.
_DINOV2_VIT = {"patch_size": 14, "dynamic_img_size": True, "layer_scale_init": 1e-5}
_register(
    "dinov2_vit_small_patch14", "vit_small_patch16_224", _DINOV2_VIT,
    "DINOv2 objective on ViT-S/14 (K = 65536, Sinkhorn-Knopp, 2 x 224 + 8 x 98 crops).", local_crop_size=98,
)
_register(
    "dinov2_vit_base_patch14", "vit_base_patch16_224", _DINOV2_VIT,
    "DINOv2 objective on ViT-B/14.", local_crop_size=98,
)
