"""Vector quantisation (van den Oord et al. 2017, "Neural Discrete Representation Learning", arXiv 1711.00937).

Notes 003, "VQ-VAE": each encoder vector z_e is replaced by its nearest codebook
vector e_k, k = argmin_j ||z_e - e_j||^2; the decoder sees e_k, and the gradient
is copied straight through from e_k to z_e. Loss (paper, eq. 3):

    L_vq = ||sg[z_e] - e||^2  (codebook)  +  beta ||z_e - sg[e]||^2  (commitment),  beta = 0.25

taming-transformers and diffusers compute `mean((sg[z_q] - z)^2) + beta mean((z_q - sg[z])^2)`,
i.e. beta on the *codebook* term (taming #46/#57, diffusers #8226); `beta_placement="legacy"`
reproduces that for checkpoint parity.

Options, each from the literature on the "codebook collapse" problem:
- `ema=True`: codebook updated as an exponential moving average of its assigned vectors
  (paper appendix A.1; decay 0.99, Laplace smoothing of the cluster sizes); the codebook
  term of the loss is then dropped (the codebook has no gradient).
- `kmeans_init=True`: the codebook starts as k-means centres of the first training batch.
- `restart_after=N`: a code unused for N training steps is re-seeded from an encoder
  output of the current batch (and its EMA statistics reset), as in Jukebox / vqtorch.
- `cosine=True`: vectors and codes are l2-normalised (ViT-VQGAN, arXiv 2110.04627).
- `codebook_dim=d < dim`: factorised codes, the lookup runs in a learned d-dim projection
  (ViT-VQGAN).

Distances, the EMA statistics and k-means always run in fp32, even under autocast: in bf16
two nearly equal distances round to the same value and the argmin flips.

Under DDP the EMA statistics and the k-means sums are all-reduced; a single-process run
never calls a collective (`_all_reduce` checks `dist.is_initialized()` first).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

log = logging.getLogger(__name__)

__all__ = ["QuantizerOutput", "VectorQuantizer", "codebook_perplexity", "kmeans"]


@dataclass
class QuantizerOutput:
    """What a quantizer returns for a (B, D, H, W) map.

    z_q: (B, D, H, W) quantised vectors, with the straight-through gradient to the input.
    indices: (B, H, W) code indices (int64).
    loss: scalar, the quantiser's loss (VQ: codebook + commitment; Gumbel: KL to the prior).
    codebook_loss / commitment_loss: the two VQ terms, unweighted (zero where not used).
    perplexity: exp(entropy) of the code histogram of this batch, in [1, K].
    usage: fraction of the K codes used within the last `usage_window` training steps
        (in eval: within this batch).
    """

    z_q: Tensor
    indices: Tensor
    loss: Tensor
    codebook_loss: Tensor
    commitment_loss: Tensor
    perplexity: Tensor
    usage: Tensor


def _check_num_codes(num_codes: int) -> None:
    if num_codes < 2:
        raise ValueError(f"a codebook needs at least 2 codes, got num_codes={num_codes}")


def check_indices(indices: Tensor, num_codes: int) -> None:
    """Raise a ValueError naming the range when `indices` are not integer codes in [0, K)."""
    if indices.is_floating_point():
        raise ValueError(f"code indices must be an integer tensor, got {indices.dtype}")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= num_codes):
        raise ValueError(
            f"code indices must lie in [0, {num_codes}) for a codebook of {num_codes} codes, "
            f"found values in [{int(indices.min())}, {int(indices.max())}]"
        )


def codebook_perplexity(indices: Tensor, num_codes: int) -> Tensor:
    """exp(H(p)) of the code histogram p of `indices`: 1 if one code is used, K if all equally."""
    p = torch.bincount(indices.flatten(), minlength=num_codes).float()
    p = p / p.sum().clamp_min(1)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-10))).sum())


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce(t: Tensor) -> Tensor:
    """Sum over ranks in place; a no-op (no collective at all) in a single process."""
    if _is_distributed():
        dist.all_reduce(t)
    return t


def _broadcast(t: Tensor) -> Tensor:
    """Rank 0's tensor on every rank; a no-op in a single process."""
    if _is_distributed():
        dist.broadcast(t, src=0)
    return t


def kmeans(
    x: Tensor, k: int, iters: int = 10, cosine: bool = False, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means of x (N, d) into k centres; returns (centres (k, d), counts (k,)).

    Seeded by k-means++ (D^2 sampling, Arthur & Vassilvitskii 2007): random starting rows
    often put two centres in one cluster and Lloyd never separates them. An empty cluster
    keeps its centre. Under DDP the seeds are rank 0's and the sums and counts are all-reduced.
    """
    x = x.float()
    centres = x.new_empty(k, x.shape[1])
    centres[0] = x[torch.randint(0, x.shape[0], (1,), generator=generator, device=x.device)]
    d2 = (x - centres[0]).square().sum(1)
    for i in range(1, k):
        p = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1.0 / len(d2))
        centres[i] = x[torch.multinomial(p, 1, generator=generator)]
        d2 = torch.minimum(d2, (x - centres[i]).square().sum(1))
    centres = _broadcast(centres)
    counts = torch.zeros(k, device=x.device)
    for _ in range(iters):
        assign = _nearest(x, centres, cosine)
        counts = _all_reduce(torch.bincount(assign, minlength=k).float())
        sums = _all_reduce(torch.zeros_like(centres).index_add_(0, assign, x))
        new = sums / counts.clamp_min(1)[:, None]
        centres = torch.where(counts[:, None] > 0, new, centres)
        if cosine:
            centres = F.normalize(centres, dim=-1)
    return centres, counts


def _nearest(x: Tensor, codebook: Tensor, cosine: bool) -> Tensor:
    """argmin_k ||x - e_k||^2 for x (N, d), codebook (K, d), in fp32 (for unit vectors: argmax x.e)."""
    x, codebook = x.float(), codebook.float()
    if cosine:
        return (x @ codebook.t()).argmax(dim=1)
    # ||x||^2 - 2 x.e + ||e||^2; ||x||^2 is the same for every k and drops out of the argmin
    d = codebook.square().sum(1)[None, :] - 2 * x @ codebook.t()
    return d.argmin(dim=1)


class VectorQuantizer(nn.Module):
    """Nearest-code quantisation of a (B, D, H, W) map, with the options of the module docstring.

    Args:
        num_codes: K, the codebook size (>= 2).
        dim: D, channels of the input map.
        beta: commitment weight (0.25 in the paper).
        beta_placement: "paper" (beta on the commitment term) or "legacy" (taming/diffusers:
            beta on the codebook term).
        ema: EMA codebook updates instead of the codebook loss.
        decay: EMA decay gamma (0.99).
        kmeans_init: initialise the codebook by k-means on the first training batch.
        restart_after: re-seed codes unused for this many training steps (0: never).
        cosine: l2-normalised vectors and codes.
        codebook_dim: lookup dimension d; < dim gives a factorised lookup through projections.
        usage_window: steps over which `usage` counts a code as used.
    """

    def __init__(
        self,
        num_codes: int,
        dim: int,
        beta: float = 0.25,
        beta_placement: Literal["paper", "legacy"] = "paper",
        ema: bool = False,
        decay: float = 0.99,
        kmeans_init: bool = False,
        restart_after: int = 0,
        cosine: bool = False,
        codebook_dim: int | None = None,
        usage_window: int = 100,
    ) -> None:
        super().__init__()
        _check_num_codes(num_codes)
        if beta_placement not in ("paper", "legacy"):
            raise ValueError(f"beta_placement must be 'paper' or 'legacy', got {beta_placement!r}")
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.num_codes, self.dim = num_codes, dim
        self.codebook_dim = codebook_dim or dim
        self.beta, self.beta_placement = beta, beta_placement
        self.ema, self.decay, self.eps = ema, decay, 1e-5
        self.kmeans_init, self.restart_after, self.cosine = kmeans_init, restart_after, cosine
        self.usage_window = usage_window
        K, d = num_codes, self.codebook_dim
        # Factorised lookup: project D -> d, quantise there, project back.
        self.proj_in = nn.Linear(dim, d) if d != dim else nn.Identity()
        self.proj_out = nn.Linear(d, dim) if d != dim else nn.Identity()
        init = torch.empty(K, d).uniform_(-1.0 / K, 1.0 / K)  # taming's / diffusers' init
        if cosine:
            init = F.normalize(torch.randn(K, d), dim=-1)
        if ema:
            # The codebook is a running statistic, not a parameter: no gradient reaches it.
            self.register_buffer("codebook", init)
            self.register_buffer("cluster_size", torch.zeros(K))  # N_i
            self.register_buffer("embed_sum", init.clone())  # m_i
        else:
            self.codebook = nn.Parameter(init)
        self.register_buffer("initialised", torch.tensor(not kmeans_init))
        # Training steps since each code was last chosen (usage), and since it was last chosen
        # or re-seeded (restarts: a fresh code gets `restart_after` steps to be picked).
        self.register_buffer("steps_unused", torch.zeros(K, dtype=torch.long))
        self.register_buffer("restart_clock", torch.zeros(K, dtype=torch.long))

    # ------------------------------------------------------------------ lookups

    def lookup(self, indices: Tensor) -> Tensor:
        """Code vectors of `indices` (B, H, W) -> (B, D, H, W) (projected back to D)."""
        check_indices(indices, self.num_codes)
        e = self._codes()[indices]  # (B, H, W, d)
        return rearrange(self.proj_out(e), "b h w d -> b d h w")

    def _codes(self) -> Tensor:
        return F.normalize(self.codebook, dim=-1) if self.cosine else self.codebook

    # ------------------------------------------------------------------ forward

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantise z (B, D, H, W); in training mode also update EMA / k-means / restarts."""
        B, D, H, W = z.shape
        if D != self.dim:
            raise ValueError(f"quantizer expects {self.dim} channels, got {D} (input shape {tuple(z.shape)})")
        # Lookups and losses in fp32, even under autocast (see the module docstring).
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = self.proj_in(rearrange(z.float(), "b d h w -> (b h w) d"))  # (N, d)
            if self.cosine:
                flat = F.normalize(flat, dim=-1)
            if self.training and not bool(self.initialised):
                self._kmeans_init(flat.detach())
            indices = _nearest(flat.detach(), self._codes().detach(), self.cosine)  # (N,)
            e = self._codes()[indices]  # (N, d); carries the codebook gradient when not EMA
            if self.training and self.ema:
                self._ema_update(flat.detach(), indices)  # after the lookup: this step uses the old codes
            codebook_loss = F.mse_loss(e, flat.detach())  # ||sg[z_e] - e||^2
            commitment_loss = F.mse_loss(flat, e.detach())  # ||z_e - sg[e]||^2
            if self.ema:
                # No codebook gradient: only the commitment term trains the encoder.
                w_code, w_commit = 0.0, (self.beta if self.beta_placement == "paper" else 1.0)
            elif self.beta_placement == "paper":
                w_code, w_commit = 1.0, self.beta
            else:
                w_code, w_commit = self.beta, 1.0
            loss = w_code * codebook_loss + w_commit * commitment_loss
            z_q = flat + (e - flat).detach()  # straight-through: forward e, backward identity
            z_q = rearrange(self.proj_out(z_q), "(b h w) d -> b d h w", b=B, h=H, w=W)
            if self.training:
                self._track_usage(indices, flat.detach())
        indices = indices.view(B, H, W)
        return QuantizerOutput(
            z_q=z_q.to(z.dtype),
            indices=indices,
            loss=loss,
            codebook_loss=codebook_loss,
            commitment_loss=commitment_loss,
            perplexity=codebook_perplexity(indices, self.num_codes),
            usage=self.usage(indices),
        )

    def usage(self, indices: Tensor | None = None) -> Tensor:
        """Fraction of codes used: in the last `usage_window` training steps (training), else in `indices`."""
        if self.training or indices is None:
            return (self.steps_unused < self.usage_window).float().mean()
        return (torch.bincount(indices.flatten(), minlength=self.num_codes) > 0).float().mean()

    # ------------------------------------------------------------------ training-time updates

    @torch.no_grad()
    def _kmeans_init(self, flat: Tensor) -> None:
        centres, counts = kmeans(flat, self.num_codes, cosine=self.cosine)
        self.codebook.data.copy_(centres)
        if self.ema:
            self.cluster_size.copy_(counts)
            self.embed_sum.copy_(centres * counts[:, None])
        self.initialised.fill_(True)
        log.info("k-means initialised %d codes from %d vectors", self.num_codes, flat.shape[0])

    @torch.no_grad()
    def _ema_update(self, flat: Tensor, indices: Tensor) -> None:
        """N_i <- g N_i + (1-g) n_i;  m_i <- g m_i + (1-g) sum_{j: k_j=i} z_j;  e_i = m_i / N~_i.

        N~_i = (N_i + eps) / (n + K eps) * n with n = sum_i N_i (Laplace smoothing): a code
        that is never chosen keeps a non-zero size, so e_i never divides by zero.
        """
        n_i = _all_reduce(torch.bincount(indices, minlength=self.num_codes).float())
        sums = _all_reduce(torch.zeros_like(self.embed_sum).index_add_(0, indices, flat))
        g = self.decay
        self.cluster_size.mul_(g).add_(n_i, alpha=1 - g)
        self.embed_sum.mul_(g).add_(sums, alpha=1 - g)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.num_codes * self.eps) * n
        self.codebook.copy_(self.embed_sum / smoothed[:, None])

    @torch.no_grad()
    def _track_usage(self, indices: Tensor, flat: Tensor) -> None:
        used = _all_reduce(torch.bincount(indices, minlength=self.num_codes)) > 0
        self.steps_unused.add_(1).masked_fill_(used, 0)
        self.restart_clock.add_(1).masked_fill_(used, 0)
        if self.restart_after > 0:
            dead = self.restart_clock >= self.restart_after
            if dead.any():
                self.restart(dead, flat)

    @torch.no_grad()
    def restart(self, dead: Tensor, flat: Tensor) -> None:
        """Re-seed the codes where `dead` (K,) is True from random rows of `flat` (N, d).

        The new code's EMA state is reset to one vector of its own (cluster size 1), so
        the next EMA step does not drag it back to the old, unused statistics.
        """
        where = dead.nonzero().squeeze(1)
        pick = torch.randint(0, flat.shape[0], (len(where),), device=flat.device)
        new = _broadcast(flat[pick].float().clone())
        self.codebook.data[where] = new
        if self.ema:
            self.cluster_size[where] = 1.0
            self.embed_sum[where] = new
        self.restart_clock[where] = 0
        log.debug("restarted %d dead codes", len(where))

    def extra_repr(self) -> str:
        return (
            f"num_codes={self.num_codes}, dim={self.dim}, codebook_dim={self.codebook_dim}, beta={self.beta}, "
            f"beta_placement={self.beta_placement!r}, ema={self.ema}, kmeans_init={self.kmeans_init}, "
            f"restart_after={self.restart_after}, cosine={self.cosine}"
        )
