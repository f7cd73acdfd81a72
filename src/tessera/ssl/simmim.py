"""SimMIM: masked image modelling with a linear head, around any encoder.

Xie et al., "SimMIM: A Simple Framework for Masked Image Modeling", CVPR 2022,
arXiv:2111.09886. Notes: 003 ("SimMIM": "random image patches are masked ... the
model is trained to reconstruct the missing parts using a MASK token; L1 loss";
it "reduces model data hunger").

    m ~ random blocks of s x s pixels (s = 32), ceil(0.6 count) of them masked
    z = Encoder(x with masked patch embeddings replaced by [MASK])   (B, C, H/r, W/r)
    x^ = PixelShuffle_r(Conv1x1(z))                                 (B, 3, H, W), r = encoder stride
    L = sum_{masked pixels} |x^ - x| / (#masked pixels * channels)

The encoder (ViT: r = P = 16; Swin: r = 32, the last stage) is used only
through `forward_tokens(x, mask)`; the mask is given per model patch (B, N_patches),
as the official generator and transformers' `bool_masked_pos` do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from tessera.core.base import TesseraModel, replace_config
from tessera.core.registry import register_model
from tessera.io.convert import StateDict, convert_state_dict, register_converter
from tessera.ssl.encoder import build_encoder, freeze_args, patch_tokens, tokens_to_map
from tessera.ssl.masking import block_mask, check_mask, check_mask_ratio, num_masked

# transformers adds 1e-5 to the masked count (official SimMIM too): kept for parity.
COUNT_EPS = 1e-5


@dataclass(frozen=True)
class SimMIMConfig:
    """SimMIM hyper-parameters; defaults are the paper's (mask patch 32, ratio 0.6).

    Args:
        encoder: a registered encoder name (`tessera.list_models(kind="encoder")`).
        encoder_args: config overrides of the encoder (img_size, depth, ...).
        mask_patch_size: side s of a masked block in pixels; a multiple of the model patch.
        mask_ratio: share of the blocks masked, in (0, 1).
    """

    encoder: str = "vit_base_patch16_224"
    encoder_args: dict[str, Any] = field(default_factory=dict)
    mask_patch_size: int = 32
    mask_ratio: float = 0.6

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoder_args", freeze_args(dict(self.encoder_args)))
        check_mask_ratio(self.mask_ratio)
        if not isinstance(self.mask_patch_size, int) or self.mask_patch_size < 1:
            raise ValueError(f"mask_patch_size must be a positive int, got {self.mask_patch_size!r}")


@dataclass
class SimMIMOutput:
    """What one SimMIM forward gives.

    Attributes:
        loss: masked L1, a scalar (the objective).
        reconstruction: x^ (B, C, H, W), predicted pixels everywhere (only masked ones are trained).
        mask: (B, N_patches) bool, the mask used.
        mean_fill_loss: the same masked L1 for the baseline that fills each image with
            its own mean (no gradient): a reconstruction must beat it to mean anything.
    """

    loss: Tensor
    reconstruction: Tensor
    mask: Tensor
    mean_fill_loss: Tensor


def masked_l1(x: Tensor, x_rec: Tensor, pixel_mask: Tensor) -> Tensor:
    """sum(|x^ - x| over masked pixels) / (#masked pixels + eps) / C.

    Args:
        x, x_rec: (B, C, H, W).
        pixel_mask: (B, 1, H, W) float, 1 on masked pixels.
    """
    err = (x_rec - x).abs() * pixel_mask
    return err.sum() / (pixel_mask.sum() + COUNT_EPS) / x.shape[1]


def pixel_mask(mask: Tensor, grid: tuple[int, int], patch: int) -> Tensor:
    """(B, h w) bool per model patch -> (B, 1, h P, w P) float per pixel."""
    B = mask.shape[0]
    m = mask.view(B, *grid).repeat_interleave(patch, 1).repeat_interleave(patch, 2)
    return m[:, None].float()


class SimMIM(TesseraModel):
    """Masked image modelling around any registered encoder (`SimMIMConfig`).

    `forward(x, mask=None)`: without a mask, one is drawn (SimMIM's block mask,
    from torch's global RNG, so a seeded run repeats it).
    """

    family = "simmim"
    head_keys = ()

    def __init__(self, config: SimMIMConfig) -> None:
        super().__init__(config)
        c = config
        self.encoder = build_encoder(c.encoder, c.encoder_args, use_mask_token=True)
        P = self.encoder.patch_size
        if c.mask_patch_size % P:
            raise ValueError(
                f"mask_patch_size {c.mask_patch_size} must be a multiple of the encoder's patch size {P}"
            )
        in_chans, H, W = self.encoder.input_size
        if H % c.mask_patch_size or W % c.mask_patch_size:
            raise ValueError(
                f"the encoder's input {H}x{W} is not a multiple of mask_patch_size {c.mask_patch_size}"
            )
        last = self.encoder.feature_info[-1]
        self.stride = last["reduction"]  # pixels per output token: P for ViT, 32 for Swin
        self.in_chans = in_chans
        # The one-layer prediction head: a 1x1 conv to r^2 C values per token, then pixel shuffle.
        self.decoder = nn.Sequential(
            nn.Conv2d(last["num_chs"], self.stride**2 * in_chans, kernel_size=1), nn.PixelShuffle(self.stride)
        )

    @property
    def features_encoder(self) -> nn.Module:
        """The encoder whose features downstream evaluation reads (k-NN, probe, fine-tuning)."""
        return self.encoder

    @property
    def input_size(self) -> tuple[int, int, int]:
        """(C, H, W) of the encoder."""
        return tuple(self.encoder.input_size)

    def example_inputs(self, batch_size: int = 2) -> tuple[Tensor, Tensor]:
        """Images and a fixed SimMIM mask (a seeded generator, so the pair repeats)."""
        x = torch.randn(batch_size, *self.input_size)
        g = torch.Generator().manual_seed(0)
        return x, self.random_mask(batch_size, x.shape[-2:], generator=g)

    def patch_grid(self, size: tuple[int, int]) -> tuple[int, int]:
        """(h, w) model patches of an (H, W) image."""
        P = self.encoder.patch_size
        return (size[0] // P, size[1] // P)

    def random_mask(
        self, batch: int, size: tuple[int, int], generator: torch.Generator | None = None, device: Any = None
    ) -> Tensor:
        """A SimMIM block mask (B, N_patches) for (H, W) images."""
        H, W = size
        s = self.config.mask_patch_size
        if H % s or W % s:
            raise ValueError(f"image size {H}x{W} is not a multiple of mask_patch_size {s}")
        scale = s // self.encoder.patch_size
        return block_mask(batch, self.patch_grid(size), scale, self.config.mask_ratio, generator, device)

    def num_masked_blocks(self, size: tuple[int, int]) -> int:
        """How many mask patches one image of (H, W) gets: ceil(ratio * count)."""
        s = self.config.mask_patch_size
        return num_masked((size[0] // s) * (size[1] // s), self.config.mask_ratio)

    def reconstruct(self, x: Tensor, mask: Tensor) -> Tensor:
        """x^ = PixelShuffle(Conv1x1(Encoder(x, mask))): (B, C, H, W) -> (B, C, H, W)."""
        tokens = patch_tokens(self.encoder, self.encoder.forward_tokens(x, mask))  # (B, N', C')
        H, W = x.shape[-2:]
        fmap = tokens_to_map(tokens, (H // self.stride, W // self.stride))  # (B, C', H/r, W/r)
        return self.decoder(fmap)  # (B, C, H, W)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> SimMIMOutput:
        """Masked L1 of the reconstruction.

        Args:
            x: images (B, C, H, W).
            mask: (B, N_patches) (or (B, h, w)) bool over the model's patch grid; None draws one.
        """
        if not isinstance(x, Tensor) or x.ndim != 4:
            raise ValueError(f"expected a 4-D image batch (B, C, H, W), got {getattr(x, 'shape', type(x))}")
        B, C, H, W = x.shape
        grid = self.patch_grid((H, W))
        mask = self.random_mask(B, (H, W), device=x.device) if mask is None else check_mask(mask, B, grid)
        x_rec = self.reconstruct(x, mask)
        m = pixel_mask(mask, grid, self.encoder.patch_size).to(x.dtype)
        with torch.no_grad():
            mean_fill = masked_l1(x, x.mean(dim=(1, 2, 3), keepdim=True).expand_as(x), m)
        return SimMIMOutput(loss=masked_l1(x, x_rec, m), reconstruction=x_rec, mask=mask, mean_fill_loss=mean_fill)

    def no_weight_decay(self) -> set[str]:
        """The encoder's exemptions (position table, tokens), under `encoder.`."""
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the encoder's blocks in backward."""
        self.grad_checkpointing = enable
        self.encoder.set_grad_checkpointing(enable)


# --------------------------------------------------------------------------- checkpoints


@register_converter("simmim")
def convert_simmim(state: StateDict, model: nn.Module, source_config: dict | None = None) -> StateDict:
    """transformers' `ViTForMaskedImageModeling` / `SwinForMaskedImageModeling` (or tessera's) -> tessera's.

    The encoder's keys (under `vit.` / `swin.`) go through the encoder family's
    converter; transformers' mask token (`embeddings.mask_token`) becomes the
    encoder's; `decoder.0` (the 1x1 conv) keeps its name.
    """
    if any(k.startswith("encoder.") for k in state):
        return state  # tessera's own layout
    decoder = {k: v for k, v in state.items() if k.startswith("decoder.")}
    encoder_state = {k: v for k, v in state.items() if not k.startswith("decoder.")}
    mask_key = next((k for k in encoder_state if k.endswith("embeddings.mask_token")), None)
    mask_token = encoder_state.pop(mask_key) if mask_key else None
    converted = convert_state_dict(encoder_state, model.encoder)
    own = model.encoder.state_dict()
    if mask_token is not None and "mask_token" in own:
        converted["mask_token"] = mask_token.reshape(own["mask_token"].shape)
    return {**{f"encoder.{k}": v for k, v in converted.items()}, **decoder}


# --------------------------------------------------------------------------- registry


def _register(name: str, encoder: str, tiny_encoder: dict, doc: str, **fixed: Any) -> None:
    base = SimMIMConfig(encoder=encoder, **fixed)

    def build(**kw: Any) -> SimMIM:
        return SimMIM(replace_config(base, **kw))

    build.__name__ = name
    build.__doc__ = doc
    tiny = {"encoder_args": {**dict(base.encoder_args), **tiny_encoder}, "mask_patch_size": 8}
    register_model(name, kind="wrapper", tiny=tiny)(build)


# Seconds-fast encoders for the contract tests: 32 px, 4 x 4 grid of 8-px mask blocks.
_TINY_VIT = dict(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2)

_register(
    "simmim_vit_base_patch16_224", "vit_base_patch16_224", _TINY_VIT,
    "SimMIM on ViT-B/16 at 224 px (mask patch 32, ratio 0.6: 30 of 49 blocks).",
)
_register(
    "simmim_vit_small_patch16_224", "vit_small_patch16_224", _TINY_VIT,
    "SimMIM on ViT-S/16 at 224 px.",
)
_register(
    "simmim_vit_base_patch16_192", "vit_base_patch16_224", _TINY_VIT,
    "SimMIM on ViT-B/16 at the paper's 192 px pre-training size (22 of 36 blocks masked).",
    encoder_args={"img_size": 192},
)

# Swin: the prediction head reads the last stage (stride 32), 4-px model patches under 32-px mask blocks.
_TINY_SWIN = dict(img_size=32, patch_size=2, embed_dim=32, depths=(2, 2), num_heads=(2, 4), window_size=4)
_register(
    "simmim_swin_tiny_patch4_window7_224", "swin_tiny_patch4_window7_224", _TINY_SWIN,
    "SimMIM on Swin-T at 224 px (mask patch 32 = 8 x 8 model patches, 30 of 49 blocks masked).",
)
_register(
    "simmim_swin_base_patch4_window6_192", "swin_base_patch4_window7_224", _TINY_SWIN,
    "SimMIM on Swin-B at the paper's 192 px with window 6 (22 of 36 blocks masked).",
    encoder_args={"img_size": 192, "window_size": 6},
)
