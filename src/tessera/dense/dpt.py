"""DPT: dense prediction transformers.

Ranftl, Bochkovskiy and Koltun, "Vision Transformers for Dense Prediction",
ICCV 2021, arXiv:2103.13413. Notes: 001 ("couple the transformer encoder with a
convolutional decoder"; "at each scale level we reassemble the tokens ... to
recover image-like representations").

Four layers l of a plain ViT (stride P = 16) are *reassembled* into images:

    Reassemble_s^D(t) = Resample_s(Concatenate(Read(t)))

Read maps the N_p + 1 tokens to N_p (the read-out token is ignored, added to
every patch token, or concatenated to each and projected: MLP(cat(t_i, t_0)),
Linear 2C -> C + GELU); Concatenate places the patch tokens on their
(H/P, W/P) grid; Resample_s is a 1x1 conv to D-hat channels then a transposed
conv (s = 4, 8: up by 4, 2), nothing (s = 16) or a 3x3 stride-2 conv (s = 32):
reassemble factors (4, 2, 1, 1/2) for P = 16 (for other patch sizes the
factors P / s keep the strides 4, 8, 16, 32). A 3x3 conv brings each level to
the fusion width; fusion blocks then run from the coarsest level up:

    f_4 = Proj(Up2(RCU_2(r_4)))
    f_l = Proj(Up2(RCU_2(f_{l+1} + RCU_1(r_l))))      l = 3, 2, 1

with RCU(x) = x + conv(ReLU(conv(ReLU(x)))) (pre-activation residual units) and
Up2 bilinear with align_corners=True. The coarsest block has nothing to fuse, so
it has no RCU_1 (the original code builds one and never runs it;
transformers #28292 keeps it in the checkpoints: the converter drops it).
Heads on f_1 (stride 2): depth, conv 3x3 -> Up2 -> conv 3x3 -> ReLU -> conv 1x1
-> ReLU (non-negative); segmentation, conv 3x3 -> BN -> ReLU -> dropout ->
conv 1x1 -> Up2 (the only batch norm of DPT, unless `fusion_batch_norm`).
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
    DenseModel,
    NonNegative,
    Task,
    build_encoder,
    check_task,
    maybe_checkpoint,
    normalize_args,
    resize_to,
)

Readout = Literal["ignore", "add", "project"]

# Output stride of each reassembled level: the paper's 4, 8, 16, 32, i.e. resampling
# factors P / s = (4, 2, 1, 1/2) of the token grid for P = 16 (original code, transformers).
REASSEMBLE_STRIDES = (4, 8, 16, 32)


def reassemble_factors(patch_size: int) -> tuple[float, ...]:
    """Resampling factor P / s of each level; a ValueError unless each is an integer or 1 / integer."""
    out = []
    for s in REASSEMBLE_STRIDES:
        f = patch_size / s
        if not (f.is_integer() or (1 / f).is_integer()):
            raise ValueError(
                f"DPT reassembles at strides {REASSEMBLE_STRIDES}: the patch size {patch_size} must be a "
                "power of two (16 in the paper, factors 4, 2, 1, 1/2)"
            )
        out.append(f)
    return tuple(out)


@dataclass(frozen=True)
class DPTConfig:
    """DPT hyper-parameters; defaults are DPT-Base (ViT-B/16 at 384, blocks 2, 5, 8, 11 counted from 0) for depth.

    `encoder` is a registry name and `encoder_args` its config overrides;
    `layers` the four encoder blocks read; `neck_channels` the D-hat of each
    reassembled level; `intermediate_norm` applies the encoder's final
    LayerNorm to each read layer (DINOv2's DPT heads do; the original DPT and
    transformers do not).
    """

    encoder: str = "vit_base_patch16_384"
    encoder_args: dict = field(default_factory=lambda: {"dynamic_img_size": True})
    img_size: int | tuple[int, int] = 384
    in_chans: int = 3
    task: Task = "depth"
    num_classes: int = 1
    layers: tuple[int, ...] = (2, 5, 8, 11)
    readout: Readout = "project"
    neck_channels: tuple[int, ...] = (96, 192, 384, 768)
    fusion_channels: int = 256
    fusion_batch_norm: bool = False
    intermediate_norm: bool = False
    aux_head: bool = False
    head_dropout: float = 0.1
    depth_act: Literal["relu", "softplus"] = "relu"

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoder_args", normalize_args(self.encoder_args))
        check_task(self.task, self.num_classes, self.depth_act)
        n = len(REASSEMBLE_STRIDES)
        if len(self.layers) != n or len(self.neck_channels) != n:
            raise ValueError(
                f"DPT reassembles {n} layers: layers and neck_channels need {n} entries each, "
                f"got layers={self.layers}, neck_channels={self.neck_channels}"
            )
        if self.readout not in ("ignore", "add", "project"):
            raise ValueError(f"readout must be 'ignore', 'add' or 'project', got {self.readout!r}")
        if self.aux_head and self.task != "segmentation":
            raise ValueError("aux_head=True is for segmentation (task='segmentation'); depth has no auxiliary head")
        if not 0.0 <= self.head_dropout < 1.0:
            raise ValueError(f"head_dropout must be in [0, 1), got {self.head_dropout}")
        if self.fusion_channels < 2 or any(c < 1 for c in self.neck_channels):
            raise ValueError(
                f"fusion_channels must be >= 2 and neck_channels positive, got {self.fusion_channels}, {self.neck_channels}"
            )


# --------------------------------------------------------------------------- blocks


class Reassemble(nn.Module):
    """Read -> Concatenate -> Resample_s: tokens of one layer -> a (B, D-hat, sH', sW') map."""

    def __init__(self, dim: int, out_chans: int, factor: float, readout: Readout, num_prefix_tokens: int) -> None:
        super().__init__()
        self.readout = readout
        # DPT's "add" averages the two prefix tokens of a distilled DeiT (the original code).
        self.num_readout = min(num_prefix_tokens, 2)
        self.readout_proj = (
            nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU()) if readout == "project" else None
        )
        self.proj = nn.Conv2d(dim, out_chans, kernel_size=1)
        if factor > 1:
            self.resample = nn.ConvTranspose2d(out_chans, out_chans, kernel_size=int(factor), stride=int(factor))
        elif factor == 1:
            self.resample = nn.Identity()
        else:
            # 3x3 stride-2 conv for 1/2; a smaller factor (patch < 16) strides further
            self.resample = nn.Conv2d(out_chans, out_chans, kernel_size=3, stride=round(1 / factor), padding=1)

    def forward(self, fmap: Tensor, prefix: Tensor) -> Tensor:
        """fmap: patch tokens on their grid (B, C, H', W'); prefix: (B, N_prefix, C) -> (B, D-hat, sH', sW')."""
        if self.readout == "add":
            t0 = prefix[:, : self.num_readout].mean(dim=1)  # (B, C)
            fmap = fmap + t0[:, :, None, None]  # Read_add: t_i + t_0
        elif self.readout == "project":
            B, C, H, W = fmap.shape
            tokens = fmap.flatten(2).transpose(1, 2)  # (B, H'W', C)
            t0 = prefix[:, :1].expand(-1, tokens.shape[1], -1)  # (B, H'W', C)
            tokens = self.readout_proj(torch.cat([tokens, t0], dim=-1))  # Read_proj: GELU(W [t_i; t_0])
            fmap = tokens.transpose(1, 2).reshape(B, C, H, W)
        return self.resample(self.proj(fmap))  # 1x1 conv to D-hat, then resample by s


class ResidualConvUnit(nn.Module):
    """RCU(x) = x + conv(ReLU(conv(ReLU(x)))), optionally with batch norm after each conv."""

    def __init__(self, dim: int, batch_norm: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1, bias=not batch_norm)
        self.bn1 = nn.BatchNorm2d(dim) if batch_norm else nn.Identity()
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1, bias=not batch_norm)
        self.bn2 = nn.BatchNorm2d(dim) if batch_norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """(B, D, H, W) -> (B, D, H, W)."""
        h = self.bn1(self.conv1(F.relu(x)))
        h = self.bn2(self.conv2(F.relu(h)))
        return x + h


class FusionBlock(nn.Module):
    """f_l = Proj(Up2(RCU_2(f_{l+1} + RCU_1(r_l)))); the coarsest block (fuse=False) has no RCU_1."""

    def __init__(self, dim: int, fuse: bool, batch_norm: bool = False) -> None:
        super().__init__()
        self.rcu1 = ResidualConvUnit(dim, batch_norm) if fuse else None
        self.rcu2 = ResidualConvUnit(dim, batch_norm)
        self.proj = nn.Conv2d(dim, dim, kernel_size=1)

    def forward(self, f: Tensor, r: Tensor | None = None) -> Tensor:
        """f: the coarser fused map (B, D, h, w); r: this level's reassembled map -> (B, D, 2h, 2w)."""
        if self.rcu1 is not None:
            r = resize_to(r, f.shape[-2:])  # odd grids: the level is brought to the fused map's size
            f = f + self.rcu1(r)
        f = self.rcu2(f)
        f = F.interpolate(f, scale_factor=2, mode="bilinear", align_corners=True)  # Up2
        return self.proj(f)


class DepthHead(nn.Module):
    """conv 3x3 (D -> D/2) -> Up2 -> conv 3x3 (-> 32) -> ReLU -> conv 1x1 (-> 1) -> non-negative."""

    def __init__(self, dim: int, act: Literal["relu", "softplus"] = "relu") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim // 2, 3, padding=1)
        self.conv2 = nn.Conv2d(dim // 2, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 1, kernel_size=1)
        self.act = NonNegative(act)

    def forward(self, f: Tensor) -> Tensor:
        """(B, D, h, w) -> depth (B, 1, 2h, 2w)."""
        h = F.interpolate(self.conv1(f), scale_factor=2, mode="bilinear", align_corners=True)
        return self.act(self.conv3(F.relu(self.conv2(h))))


class SegmentationHead(nn.Module):
    """conv 3x3 -> BN -> ReLU -> dropout -> conv 1x1 (-> K) [-> Up2]."""

    def __init__(self, dim: int, num_classes: int, dropout: float, upsample: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(dim)
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(dim, num_classes, kernel_size=1)
        self.upsample = upsample

    def forward(self, f: Tensor) -> Tensor:
        """(B, D, h, w) -> logits (B, K, 2h, 2w) (or (B, K, h, w) without upsampling)."""
        y = self.classifier(self.drop(F.relu(self.bn(self.conv(f)))))
        if self.upsample:
            y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=True)
        return y


# --------------------------------------------------------------------------- model


class DPT(DenseModel):
    """DPT on any plain (single-stride) registry encoder: ViT, DeiT, ... (`DPTConfig`)."""

    family = "dpt"

    def __init__(self, config: DPTConfig) -> None:
        super().__init__(config)
        c = config
        self.encoder = build_encoder(c.encoder, c.encoder_args, c.img_size, c.in_chans, "DPT")
        info = self.encoder.feature_info
        n = len(info)
        bad = [i for i in c.layers if not -n <= i < n]
        if bad:
            raise ValueError(f"DPT layers {bad} out of range: {c.encoder!r} has {n} blocks (indices 0..{n - 1})")
        self.layers = [i % n for i in c.layers]
        strides = {info[i]["reduction"] for i in self.layers}
        dims = {info[i]["num_chs"] for i in self.layers}
        if len(strides) != 1 or len(dims) != 1:
            raise ValueError(
                f"DPT reassembles layers of a plain ViT (one stride, one width); {c.encoder!r} gives strides "
                f"{sorted(strides)} and widths {sorted(dims)} at layers {list(c.layers)}: use an fpn_* or "
                "upernet_* model for hierarchical encoders"
            )
        prefix = self.encoder.num_prefix_tokens
        if c.readout in ("add", "project") and prefix < 1:
            raise ValueError(
                f"readout={c.readout!r} needs an encoder with a class token; {c.encoder!r} has "
                f"num_prefix_tokens={prefix}. Use readout='ignore', or an encoder built with class_token=True"
            )
        dim = dims.pop()
        self.reassemble = nn.ModuleList(
            Reassemble(dim, ch, f, c.readout, prefix)
            for ch, f in zip(c.neck_channels, reassemble_factors(self.encoder.patch_size))
        )
        # 3x3 conv from each level's D-hat to the fusion width (no bias, as the original).
        self.neck_convs = nn.ModuleList(
            nn.Conv2d(ch, c.fusion_channels, 3, padding=1, bias=False) for ch in c.neck_channels
        )
        # fusion[0] takes the coarsest level (nothing to fuse with), fusion[3] the finest.
        self.fusion = nn.ModuleList(
            FusionBlock(c.fusion_channels, fuse=i > 0, batch_norm=c.fusion_batch_norm)
            for i in range(len(c.neck_channels))
        )
        if c.task == "depth":
            self.head: nn.Module = DepthHead(c.fusion_channels, c.depth_act)
        else:
            self.head = SegmentationHead(c.fusion_channels, c.num_classes, c.head_dropout, upsample=True)
        # transformers' auxiliary head: on f_1, dropout fixed at 0.1, no upsampling.
        self.aux_head = SegmentationHead(c.fusion_channels, c.num_classes, 0.1, upsample=False) if c.aux_head else None

    def forward_decoder(self, maps: list[Tensor], prefix: list[Tensor]) -> Tensor:
        """Reassemble + fuse: four (B, C, H', W') maps and their prefix tokens -> f_1 (B, D, ~H/2, ~W/2)."""
        gc = self.grad_checkpointing
        r = [
            conv(maybe_checkpoint(gc, re, m, p))
            for re, conv, m, p in zip(self.reassemble, self.neck_convs, maps, prefix)
        ]
        f = maybe_checkpoint(gc, self.fusion[0], r[-1])
        for block, level in zip(self.fusion[1:], reversed(r[:-1])):
            f = maybe_checkpoint(gc, block, f, level)
        return f

    def predict(self, x: Tensor, with_aux: bool = False) -> tuple[Tensor, Tensor | None]:
        """Images (B, C, H, W) -> (depth (B, 1, H, W) or logits (B, K, H, W), aux logits or None).

        Sizes that are not patch multiples are zero-padded at the bottom/right
        (the encoder resamples its positions to the grid) and the output cropped back.
        """
        self.check_input(x)
        H, W = x.shape[-2:]
        P = self.encoder.patch_size
        pad_h, pad_w = -H % P, -W % P
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        maps, prefix = self.encoder.forward_intermediates(
            x, indices=self.layers, norm=self.config.intermediate_norm, return_prefix_tokens=True
        )
        f = self.forward_decoder(maps, prefix)
        padded = (H + pad_h, W + pad_w)
        out = resize_to(self.head(f), padded)[..., :H, :W]
        aux = None
        if with_aux and self.aux_head is not None:
            aux = resize_to(self.aux_head(f), padded)[..., :H, :W]
        return out, aux


# --------------------------------------------------------------------------- registry

# Seconds-fast variant for the contract tests: a ViT of dim 32, depth 4, 32 px; the
# encoder's final norm is applied to the read layers so that every parameter is used.
_TINY_ENCODER = dict(patch_size=8, embed_dim=32, depth=4, num_heads=2, dynamic_img_size=True)
_TINY = dict(
    img_size=32,
    encoder_args=_TINY_ENCODER,
    layers=(0, 1, 2, 3),
    neck_channels=(8, 16, 32, 32),
    fusion_channels=16,
    intermediate_norm=True,
)
_TINY_SEG = dict(_TINY, num_classes=5)

_SIZES = {
    # encoder, layers, D-hat per level (the paper's DPT-Base and DPT-Large)
    "base": ("vit_base_patch16_384", (2, 5, 8, 11), (96, 192, 384, 768)),
    "large": ("vit_large_patch16_384", (5, 11, 17, 23), (256, 512, 1024, 1024)),
}


def _register(size: str, task: Task) -> None:
    encoder, layers, neck = _SIZES[size]
    suffix = "depth" if task == "depth" else "seg"
    name = f"dpt_vit_{size}_patch16_384_{suffix}"
    base = DPTConfig(
        encoder=encoder,
        layers=layers,
        neck_channels=neck,
        task=task,
        num_classes=1 if task == "depth" else 150,  # ADE20K's 150 classes
        aux_head=False,
    )

    def build(**kw) -> DPT:
        return DPT(replace_config(base, **kw))

    build.__name__ = name
    build.__doc__ = f"{name}: DPT-{size.capitalize()} ({encoder}, layers {layers}) with a {task} head."
    register_model(name, kind="dense", tiny=_TINY if task == "depth" else _TINY_SEG)(build)


for _size in _SIZES:
    for _task in ("depth", "segmentation"):
        _register(_size, _task)
