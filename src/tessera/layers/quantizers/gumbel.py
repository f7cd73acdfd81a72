"""Gumbel-softmax quantisation: the discrete VAE of DALL-E (Ramesh et al. 2021, arXiv 2102.12092).

Notes 003, "dVAE": instead of one latent vector per position, the encoder gives a
distribution q(k | x) over the K codes (logits); training samples a relaxed one-hot
y = softmax((logits + g) / tau), g ~ Gumbel(0, 1) (Jang et al. 2016, arXiv 1611.01144),
and the decoder sees sum_k y_k e_k. The temperature tau is annealed towards 0 over
training (DALL-E: 1 -> 1/16), which makes the samples nearly one-hot. The loss is
KL(q(k | x) || uniform) = sum_k q_k log(q_k K), averaged over positions, with its own
weight. `straight_through=True` uses the hard one-hot in the forward pass with the
relaxed gradient. At inference (eval mode) the code is argmax q: deterministic.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tessera.layers.quantizers.vq import QuantizerOutput, _check_num_codes, check_indices, codebook_perplexity

__all__ = ["GumbelQuantizer"]


class GumbelQuantizer(nn.Module):
    """Logits over K codes per position -> (relaxed) one-hot -> code vectors.

    Args:
        num_codes: K (>= 2).
        in_dim: channels of the encoder output (projected to K logits by a 1x1 conv).
        dim: D, dimension of the code vectors the decoder sees.
        kl_weight: weight of KL(q || uniform) in `loss` (DALL-E's beta; taming uses 5e-4).
        temperature: tau of the relaxation; the training task anneals it (`temperature` attribute).
        straight_through: hard one-hot forward, relaxed gradient.
    """

    def __init__(
        self,
        num_codes: int,
        in_dim: int,
        dim: int,
        kl_weight: float = 5e-4,
        temperature: float = 1.0,
        straight_through: bool = False,
    ) -> None:
        super().__init__()
        _check_num_codes(num_codes)
        if temperature <= 0:
            raise ValueError(f"Gumbel-softmax temperature must be > 0, got {temperature}")
        self.num_codes, self.dim = num_codes, dim
        self.kl_weight, self.straight_through = kl_weight, straight_through
        self.temperature = float(temperature)
        self.proj = nn.Conv2d(in_dim, num_codes, 1)  # logits of q(k | x)
        self.codebook = nn.Parameter(torch.randn(num_codes, dim) / dim**0.5)

    def lookup(self, indices: Tensor) -> Tensor:
        """Code vectors of `indices` (B, H, W) -> (B, D, H, W)."""
        check_indices(indices, self.num_codes)
        return self.codebook[indices].permute(0, 3, 1, 2)

    def forward(self, h: Tensor) -> QuantizerOutput:
        """h (B, in_dim, H, W) -> code vectors; relaxed sample in training, argmax in eval."""
        with torch.autocast(device_type=h.device.type, enabled=False):
            logits = self.proj(h.float())  # (B, K, H, W)
            if self.training:
                y = F.gumbel_softmax(logits, tau=self.temperature, dim=1, hard=self.straight_through)
            else:
                y = F.one_hot(logits.argmax(dim=1), self.num_codes).permute(0, 3, 1, 2).float()
            z_q = torch.einsum("bkhw,kd->bdhw", y, self.codebook)  # sum_k y_k e_k
            log_q = F.log_softmax(logits, dim=1)
            # KL(q || uniform) = sum_k q_k (log q_k + log K), mean over positions
            kl = (log_q.exp() * (log_q + math.log(self.num_codes))).sum(1).mean()
        indices = y.argmax(dim=1)  # (B, H, W)
        zero = kl.new_zeros(())
        return QuantizerOutput(
            z_q=z_q.to(h.dtype),
            indices=indices,
            loss=self.kl_weight * kl,
            codebook_loss=zero,
            commitment_loss=zero,
            perplexity=codebook_perplexity(indices, self.num_codes),
            usage=(torch.bincount(indices.flatten(), minlength=self.num_codes) > 0).float().mean(),
        )

    def extra_repr(self) -> str:
        return (
            f"num_codes={self.num_codes}, dim={self.dim}, kl_weight={self.kl_weight}, "
            f"temperature={self.temperature}, straight_through={self.straight_through}"
        )
