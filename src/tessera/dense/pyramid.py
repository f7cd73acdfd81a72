"""Feature-pyramid heads on hierarchical encoders: FPN and UPerNet (and a linear baseline).

FPN: Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017,
arXiv:1612.03144. UPerNet: Xiao et al., "Unified Perceptual Parsing for Scene
Understanding", ECCV 2018, arXiv:1807.10221, the head Swin uses for ADE20K
(Liu et al. 2021, arXiv:2103.14030). Notes: 000 ("enables dense prediction by
adding FPN on the hierarchical features from each stage of Swin").

The encoder gives one map per stage, c_i of stride s_i (Swin: 4, 8, 16, 32),
each LayerNorm'd over channels (the official Swin segmentation backbone adds
such a norm on every output). Then, with D the decoder width:

    l_i = ConvBNReLU_1x1(c_i)                       lateral, i < top
    l_top = ConvBNReLU_1x1(c_top)                   FPN
    l_top = ConvBNReLU_3x3(cat(c_top, PPM(c_top)))  UPerNet: pyramid pooling (PSPNet)
    l_i  <- l_i + Up(l_{i+1})                       top-down, from the coarsest level
    p_i = ConvBNReLU_3x3(l_i)                       output convs (UPerNet keeps p_top = l_top)
    y = classifier(ConvBNReLU_3x3(cat_i Up(p_i)))   fused prediction at stride s_0

PPM(c) = [Up(ConvBNReLU_1x1(AvgPool_k(c))) for k in pool_scales]. Up is
bilinear (align_corners=False) to the finer map's size; the prediction is
resized to the input. The `linear` decoder is the baseline of the notes'
comparison: a 1x1 conv on the last stage, upsampled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tessera.core.base import replace_config
from tessera.core.registry import register_model
from tessera.dense.common import (
    ConvBNReLU,
    DenseModel,
    NonNegative,
    Task,
    build_encoder,
    check_task,
    maybe_checkpoint,
    normalize_args,
    resize_to,
    resolve_indices,
)

Decoder = Literal["fpn", "upernet", "linear"]


@dataclass(frozen=True)
class PyramidConfig:
    """FPN / UPerNet hyper-parameters; defaults are UPerNet on Swin-T for ADE20K (150 classes, 512 px).

    `layers`: encoder feature indices read (empty: every stage in `feature_info`);
    `channels`: decoder width D; `intermediate_norm`: the encoder's own final
    norm where its `forward_intermediates(norm=True)` applies one (besides the
    per-level LayerNorm of the decoder); `aux_head`: an FCN head (one 3x3
    ConvBNReLU) on level `aux_index` for an auxiliary loss (UPerNet's, weight 0.4).
    """

    encoder: str = "swin_tiny_patch4_window7_224"
    encoder_args: dict = field(default_factory=dict)
    img_size: int | tuple[int, int] = 512
    in_chans: int = 3
    task: Task = "segmentation"
    num_classes: int = 150
    decoder: Decoder = "upernet"
    layers: tuple[int, ...] = ()
    channels: int = 512
    pool_scales: tuple[int, ...] = (1, 2, 3, 6)
    intermediate_norm: bool = False
    aux_head: bool = False
    aux_channels: int = 256
    aux_index: int = 2
    dropout: float = 0.1
    depth_act: Literal["relu", "softplus"] = "softplus"

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoder_args", normalize_args(self.encoder_args))
        check_task(self.task, self.num_classes, self.depth_act)
        if self.decoder not in ("fpn", "upernet", "linear"):
            raise ValueError(f"decoder must be 'fpn', 'upernet' or 'linear', got {self.decoder!r}")
        if self.decoder == "upernet" and not self.pool_scales:
            raise ValueError("decoder='upernet' needs pool_scales (e.g. (1, 2, 3, 6)); use decoder='fpn' for none")
        if any(s < 1 for s in self.pool_scales) or self.channels < 1 or self.aux_channels < 1:
            raise ValueError(
                f"pool_scales, channels and aux_channels must be positive, got "
                f"{self.pool_scales}, {self.channels}, {self.aux_channels}"
            )
        if self.aux_head and self.task != "segmentation":
            raise ValueError("aux_head=True is for segmentation (task='segmentation'); depth has no auxiliary head")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


# --------------------------------------------------------------------------- blocks


class LevelNorm(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, H, W, C) for the LN


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling: [c, Up(ConvBNReLU(AvgPool_k(c))) for k] -> ConvBNReLU 3x3 -> (B, D, h, w)."""

    def __init__(self, in_chans: int, dim: int, pool_scales: tuple[int, ...]) -> None:
        super().__init__()
        self.pool_scales = tuple(pool_scales)
        self.convs = nn.ModuleList(ConvBNReLU(in_chans, dim, 1) for _ in self.pool_scales)
        self.bottleneck = ConvBNReLU(in_chans + len(self.pool_scales) * dim, dim, 3)

    def forward(self, c: Tensor) -> Tensor:
        """(B, C, h, w) -> (B, D, h, w)."""
        pooled = [
            resize_to(conv(F.adaptive_avg_pool2d(c, k)), c.shape[-2:]) for k, conv in zip(self.pool_scales, self.convs)
        ]
        return self.bottleneck(torch.cat([c, *pooled], dim=1))


class PyramidDecoder(nn.Module):
    """Laterals, top-down path, output convs, fusion: maps [(B, C_i, h_i, w_i)] -> (B, D, h_0, w_0)."""

    def __init__(self, in_chans: list[int], dim: int, pool_scales: tuple[int, ...] | None) -> None:
        super().__init__()
        top = len(in_chans) - 1
        self.lateral = nn.ModuleList(ConvBNReLU(c, dim, 1) for c in in_chans[:top])
        # UPerNet: the coarsest level goes through pyramid pooling instead of a lateral conv.
        self.ppm = PyramidPooling(in_chans[top], dim, pool_scales) if pool_scales else None
        self.lateral_top = ConvBNReLU(in_chans[top], dim, 1) if not pool_scales else None
        n_out = top if pool_scales else top + 1  # UPerNet keeps p_top = l_top
        self.fpn_convs = nn.ModuleList(ConvBNReLU(dim, dim, 3) for _ in range(n_out))
        self.fuse = ConvBNReLU(len(in_chans) * dim, dim, 3)
        self.grad_checkpointing = False

    def forward(self, maps: list[Tensor]) -> Tensor:
        gc = self.grad_checkpointing
        top = maps[-1]
        l_top = maybe_checkpoint(gc, self.ppm, top) if self.ppm is not None else self.lateral_top(top)
        lat = [conv(m) for conv, m in zip(self.lateral, maps[:-1])] + [l_top]
        for i in range(len(lat) - 1, 0, -1):  # top-down: l_{i-1} += Up(l_i)
            lat[i - 1] = lat[i - 1] + resize_to(lat[i], lat[i - 1].shape[-2:])
        p = [conv(l) for conv, l in zip(self.fpn_convs, lat)] + lat[len(self.fpn_convs) :]
        p = [p[0]] + [resize_to(x, p[0].shape[-2:]) for x in p[1:]]
        return maybe_checkpoint(gc, self.fuse, torch.cat(p, dim=1))


class FCNHead(nn.Module):
    """The auxiliary head: ConvBNReLU 3x3 -> dropout -> conv 1x1 (-> K), on one level."""

    def __init__(self, in_chans: int, dim: int, num_classes: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_chans, dim, 3)
        self.drop = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(dim, num_classes, kernel_size=1)

    def forward(self, c: Tensor) -> Tensor:
        return self.classifier(self.drop(self.conv(c)))


class PredictionHead(nn.Module):
    """dropout -> conv 1x1 (-> K logits, or -> 1 depth); depth is made non-negative after resizing."""

    def __init__(self, dim: int, num_classes: int, dropout: float, depth_act: str | None) -> None:
        super().__init__()
        self.drop = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(dim, num_classes, kernel_size=1)
        self.act = NonNegative(depth_act) if depth_act else None

    def forward(self, f: Tensor, size: tuple[int, int]) -> Tensor:
        """(B, D, h, w) -> (B, K, H, W) at `size`."""
        y = resize_to(self.classifier(self.drop(f)), size)
        return self.act(y) if self.act is not None else y


# --------------------------------------------------------------------------- model


class PyramidSegmenter(DenseModel):
    """FPN / UPerNet / linear head on any registry encoder (`PyramidConfig`)."""

    family = "pyramid"

    def __init__(self, config: PyramidConfig) -> None:
        super().__init__(config)
        c = config
        what = {"fpn": "FPN", "upernet": "UPerNet", "linear": "the linear head"}[c.decoder]
        self.encoder = build_encoder(c.encoder, c.encoder_args, c.img_size, c.in_chans, what)
        info = self.encoder.feature_info
        self.layers = resolve_indices(c.layers, len(info), what)
        if c.decoder == "linear":
            self.layers = self.layers[-1:]
        in_chans = [info[i]["num_chs"] for i in self.layers]
        self.level_norms = nn.ModuleList(LevelNorm(ch) for ch in in_chans)
        if c.decoder == "linear":
            self.decoder: nn.Module = nn.Identity()
            dim = in_chans[-1]
        else:
            self.decoder = PyramidDecoder(in_chans, c.channels, c.pool_scales if c.decoder == "upernet" else None)
            dim = c.channels
        depth_act = c.depth_act if c.task == "depth" else None
        self.head = PredictionHead(dim, c.num_classes, c.dropout, depth_act)
        self.aux_head = None
        if c.aux_head:
            if not -len(self.layers) <= c.aux_index < len(self.layers):
                raise ValueError(f"aux_index {c.aux_index} out of range for {len(self.layers)} decoder levels")
            self.aux_head = FCNHead(in_chans[c.aux_index], c.aux_channels, c.num_classes)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        super().set_grad_checkpointing(enable)
        if isinstance(self.decoder, PyramidDecoder):
            self.decoder.grad_checkpointing = enable

    def predict(self, x: Tensor, with_aux: bool = False) -> tuple[Tensor, Tensor | None]:
        """Images (B, C, H, W) -> (logits (B, K, H, W) or depth (B, 1, H, W), aux logits or None)."""
        self.check_input(x)
        size = tuple(x.shape[-2:])
        # Plain encoders take patch multiples: zero-pad at the bottom/right (what Swin does inside);
        # the prediction is resized to the input, as transformers' UperNet does.
        P = self.encoder.patch_size
        if size[0] % P or size[1] % P:
            x = F.pad(x, (0, -size[1] % P, 0, -size[0] % P))
        maps = self.encoder.forward_intermediates(x, indices=self.layers, norm=self.config.intermediate_norm)
        maps = [norm(m) for norm, m in zip(self.level_norms, maps)]
        f = maps[-1] if self.config.decoder == "linear" else self.decoder(maps)  # (B, D, h_0, w_0)
        out = self.head(f, size)
        aux = None
        if with_aux and self.aux_head is not None:
            aux = resize_to(self.aux_head(maps[self.config.aux_index]), size)
        return out, aux


# --------------------------------------------------------------------------- registry

_TINY_SWIN = dict(patch_size=2, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), window_size=2)
_TINY = dict(img_size=32, encoder_args=_TINY_SWIN, channels=16, aux_channels=8, intermediate_norm=True)

_SWINS = {
    "tiny": "swin_tiny_patch4_window7_224",
    "small": "swin_small_patch4_window7_224",
    "base": "swin_base_patch4_window7_224",
}


def _register(decoder: Decoder, size: str, task: Task) -> None:
    name = f"{decoder}_swin_{size}" + ("_depth" if task == "depth" else "")
    seg = task == "segmentation"
    base = PyramidConfig(
        encoder=_SWINS[size],
        decoder=decoder,
        task=task,
        num_classes=150 if seg else 1,
        channels=512 if decoder == "upernet" else 256,
        aux_head=decoder == "upernet" and seg,  # Swin's ADE20K recipe trains UPerNet with the FCN auxiliary head
    )

    def build(**kw) -> PyramidSegmenter:
        return PyramidSegmenter(replace_config(base, **kw))

    build.__name__ = name
    build.__doc__ = f"{name}: {decoder} head on {_SWINS[size]} for {task}."
    tiny = dict(_TINY, num_classes=5) if seg else dict(_TINY)
    if decoder == "upernet" and seg:
        tiny["aux_head"] = False  # forward returns the main logits only: an aux head would get no gradient
    register_model(name, kind="dense", tiny=tiny)(build)


# UPerNet in the Swin paper's three ADE20K sizes; FPN and the linear baseline on Swin-T.
for _size in _SWINS:
    _register("upernet", _size, "segmentation")
for _decoder in ("fpn", "linear"):
    _register(_decoder, "tiny", "segmentation")
for _decoder in ("fpn", "upernet", "linear"):
    _register(_decoder, "tiny", "depth")
