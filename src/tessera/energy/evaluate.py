"""Evaluating energy models: exact 2-D likelihood on a grid, KDE baseline, MMD, ESS, sampler comparison, AUROC.

In two dimensions the partition function Z = int exp(-E(x)) dx is a sum over
a fine grid, so an EBM gets an exact (up to quadrature) test log-likelihood
log p(x) = -E(x) - log Z, comparable with the true density's and a KDE's.
Everything here is a function of tensors and an energy callable; no training code.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from tessera.energy.samplers import EnergyFn, MCMCSampler

__all__ = [
    "auroc",
    "compare_samplers",
    "density_grid",
    "effective_sample_size",
    "grid_log_likelihood",
    "grid_log_normalizer",
    "grid_points",
    "kde_log_likelihood",
    "kde_select_bandwidth",
    "mmd2",
    "moment_error",
    "ood_images",
    "plot_density_panels",
]

Box = tuple[float, float]


# ------------------------------------------------------------------ grid likelihood


def grid_points(box: Box = (-5.0, 5.0), n: int = 256) -> tuple[Tensor, float]:
    """Cell centres of an n x n grid over box^2, row-major with y down the rows: (n*n, 2), and the cell area."""
    lo, hi = box
    h = (hi - lo) / n
    c = lo + h * (torch.arange(n, dtype=torch.float64) + 0.5)
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xx, yy], -1).reshape(-1, 2).float(), h * h


@torch.no_grad()
def _energies(energy_fn: EnergyFn, x: Tensor, chunk: int = 16384) -> Tensor:
    return torch.cat([energy_fn(c).detach().double() for c in x.split(chunk)])


@torch.no_grad()
def grid_log_normalizer(energy_fn: EnergyFn, box: Box = (-5.0, 5.0), n: int = 256) -> float:
    """log Z = log sum_cells exp(-E(c)) h^2, the midpoint rule over box^2 (the model restricted to the box)."""
    pts, area = grid_points(box, n)
    e = _energies(energy_fn, pts)
    return float(torch.logsumexp(-e, 0)) + math.log(area)


@torch.no_grad()
def grid_log_likelihood(energy_fn: EnergyFn, x: Tensor, box: Box = (-5.0, 5.0), n: int = 256) -> float:
    """Mean test log-likelihood in nats: mean_i [-E(x_i)] - log Z, with Z integrated on the grid."""
    log_z = grid_log_normalizer(energy_fn, box, n)
    return float(-_energies(energy_fn, x).mean()) - log_z


@torch.no_grad()
def density_grid(log_density: Callable[[Tensor], Tensor], box: Box = (-5.0, 5.0), n: int = 200) -> Tensor:
    """The normalised density exp(log_density) on an n x n grid (rows: y from low to high), summing to 1 / h^2."""
    pts, area = grid_points(box, n)
    logp = torch.cat([log_density(c).double() for c in pts.split(16384)])
    logp = logp - (torch.logsumexp(logp, 0) + math.log(area))
    return logp.exp().reshape(n, n).float()


# --------------------------------------------------------------------------- KDE


def _kde_log_prob(train: Tensor, x: Tensor, bandwidth: float, chunk: int = 2048) -> Tensor:
    """log (1/N sum_j N(x; x_j, h^2 I)) for each row of x."""
    d = train.shape[1]
    out = []
    for c in x.double().split(chunk):
        d2 = torch.cdist(c, train.double()).square()
        out.append(torch.logsumexp(-d2 / (2 * bandwidth**2), 1) - math.log(train.shape[0])
                   - 0.5 * d * math.log(2 * math.pi * bandwidth**2))
    return torch.cat(out)


def kde_log_likelihood(train: Tensor, test: Tensor, bandwidth: float) -> float:
    """Mean log-likelihood of `test` (M, D) under a Gaussian KDE of `train` (N, D) with bandwidth h."""
    if bandwidth <= 0:
        raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
    return float(_kde_log_prob(train, test, bandwidth).mean())


def kde_select_bandwidth(train: Tensor, val: Tensor, candidates: Sequence[float] | None = None) -> float:
    """The bandwidth with the best validation log-likelihood (default candidates: 0.02 to 1, log-spaced)."""
    cands = list(candidates) if candidates is not None else np.geomspace(0.02, 1.0, 15).tolist()
    scores = [kde_log_likelihood(train, val, h) for h in cands]
    return float(cands[int(np.argmax(scores))])


# --------------------------------------------------------------------------- MMD


def mmd2(x: Tensor, y: Tensor, bandwidths: Sequence[float] = (0.1, 0.2, 0.5, 1.0, 2.0)) -> float:
    """Unbiased squared MMD between samples x (N, D) and y (M, D), kernel a sum of RBFs exp(-|a-b|^2 / 2 s^2).

    (Gretton et al. 2012, eq. 3.) Zero in expectation when x and y come from the same law.
    """
    x, y = x.flatten(1).double(), y.flatten(1).double()
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"mmd2 needs at least 2 samples on each side, got {n} and {m}")

    def k(a: Tensor, b: Tensor) -> Tensor:
        d2 = torch.cdist(a, b).square()
        return sum(torch.exp(-d2 / (2 * s * s)) for s in bandwidths)

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(sxx + syy - 2 * kxy.mean())


# ---------------------------------------------------------------- chains and ESS


def effective_sample_size(chain: Tensor) -> Tensor:
    """ESS of each coordinate from parallel chains (T, B, D) (Geyer's initial positive sequence).

    The autocorrelation rho_k is averaged over the B chains, all centred on the
    pooled mean (so chains stuck apart count as correlated, as in Stan's
    multi-chain estimator); ESS = B T / (1 + 2 sum_k rho_k), summing the pairs
    rho_k + rho_{k+1} (k = 1, 3, ...) while they stay positive. Returns (D,).
    """
    if chain.ndim != 3:
        raise ValueError(f"expected a chain (T, B, D), got {tuple(chain.shape)}")
    x = chain.double()
    T, B, D = x.shape
    x = x - x.mean(dim=(0, 1), keepdim=True)
    f = torch.fft.rfft(x, n=2 * T, dim=0)
    acov = torch.fft.irfft(f * f.conj(), n=2 * T, dim=0)[:T] / T  # (T, B, D)
    acov = acov.mean(1)  # (T, D)
    rho = acov / acov[:1].clamp_min(1e-300)
    ess = torch.empty(D, dtype=torch.float64)
    for d in range(D):
        total, k = 0.0, 1
        while k + 1 < T:
            pair = float(rho[k, d] + rho[k + 1, d])
            if pair < 0:
                break
            total += pair
            k += 2
        ess[d] = B * T / (1 + 2 * total)
    return ess


def moment_error(x: Tensor, mean: Tensor, cov: Tensor) -> float:
    """max(|mean(x) - mean| / std, |cov(x) - cov| / (std_i std_j)): the worst standardised moment error of x (N, D)."""
    std = torch.diagonal(cov).sqrt()
    err_mean = ((x.mean(0) - mean).abs() / std).max()
    err_cov = ((torch.cov(x.T) - cov).abs() / (std[:, None] * std[None, :])).max()
    return float(torch.maximum(err_mean, err_cov))


def compare_samplers(
    energy_fn: EnergyFn,
    samplers: Mapping[str, MCMCSampler],
    x0: Tensor,
    steps: int,
    target_mean: Tensor,
    target_cov: Tensor,
    tol: float = 0.1,
    burn_in: float = 0.5,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Run every sampler from the same starts and report how fast each reaches the target's moments.

    Returns, per sampler:
        steps_to_tol: first step at which the ensemble of B chains has moment_error <= tol
            (and stays there over the next two records), or inf;
        ess_per_1k_steps: min over coordinates of the ESS of the second half of the chain, per chain, per 1000 steps;
        acceptance: mean acceptance rate;
        final_error: moment_error at the last step;
        seconds: wall time.
    """
    import time

    out: dict[str, dict[str, float]] = {}
    for name, sampler in samplers.items():
        g = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        res = sampler.sample(energy_fn, x0.clone(), steps, generator=g, keep_every=1)
        seconds = time.perf_counter() - t0
        errs = [moment_error(s, target_mean, target_cov) for s in res.chain]
        reach = math.inf
        for t in range(len(errs)):
            if all(e <= tol for e in errs[t : t + 3]):
                reach = float(res.chain_steps[t])
                break
        tail = res.chain[int(burn_in * len(res.chain)) :]
        ess = effective_sample_size(tail).min() / x0.shape[0]
        out[name] = {
            "steps_to_tol": reach,
            "ess_per_1k_steps": float(ess) * 1000 / max(tail.shape[0], 1),
            "acceptance": res.acceptance,
            "final_error": errs[-1],
            "seconds": seconds,
        }
    return out


# ----------------------------------------------------------------------- anomaly


def auroc(scores_in: Tensor, scores_out: Tensor) -> float:
    """Area under the ROC curve for telling out-of-distribution (higher score) from in-distribution.

    P(score_out > score_in) + P(tie) / 2, the Mann-Whitney U statistic over ranks.
    """
    a, b = scores_in.flatten().double(), scores_out.flatten().double()
    if a.numel() == 0 or b.numel() == 0:
        raise ValueError(f"auroc needs scores on both sides, got {a.numel()} and {b.numel()}")
    allv = torch.cat([a, b])
    order = allv.argsort()
    ranks = torch.empty_like(allv)
    ranks[order] = torch.arange(1, allv.numel() + 1, dtype=torch.float64)
    # average the ranks of ties
    uniq, inverse = torch.unique(allv, return_inverse=True)
    sums = torch.zeros(uniq.numel(), dtype=torch.float64).index_add_(0, inverse, ranks)
    counts = torch.zeros(uniq.numel(), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(ranks))
    ranks = (sums / counts)[inverse]
    r_out = ranks[a.numel() :].sum()
    u = r_out - b.numel() * (b.numel() + 1) / 2
    return float(u / (a.numel() * b.numel()))


def ood_images(
    x: Tensor, low: float = -1.0, high: float = 1.0, seed: int = 0
) -> dict[str, Tensor]:
    """Out-of-distribution versions of an image batch (B, C, H, W) in [low, high].

    noise: uniform noise; gaussian: N(mid, (range/4)^2) clipped; rotated: rotated 90 degrees;
    inverted: low + high - x; flipped: upside down.
    """
    g = torch.Generator().manual_seed(seed)
    mid, span = (low + high) / 2, high - low
    return {
        "uniform_noise": low + span * torch.rand(x.shape, generator=g),
        "gaussian_noise": (mid + span / 4 * torch.randn(x.shape, generator=g)).clamp(low, high),
        "rotated90": torch.rot90(x, 1, dims=(2, 3)),
        "upside_down": torch.flip(x, dims=(2,)),
        "inverted": low + high - x,
    }


# -------------------------------------------------------------------------- plots


def plot_density_panels(
    panels: Sequence[tuple[str, Tensor]], path: str | Path, box: Box = (-5.0, 5.0), suptitle: str = ""
) -> Path:
    """Side-by-side panels: a (n, n) tensor is shown as a density image, an (N, 2) one as a scatter of points."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), dpi=110)
    axes = np.atleast_1d(axes)
    for ax, (title, t) in zip(axes, panels):
        t = t.detach().cpu()
        if t.ndim == 2 and t.shape[1] == 2 and t.shape[0] != 2:
            ax.scatter(t[:, 0], t[:, 1], s=0.5, alpha=0.4, color="k", linewidths=0)
            ax.set_xlim(*box)
            ax.set_ylim(*box)
        else:
            ax.imshow(t.numpy(), origin="lower", extent=(*box, *box), cmap="viridis")
        ax.set_title(title, fontsize=9)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
