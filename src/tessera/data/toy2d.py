"""2-D toy densities with a known log-density: 8 Gaussians, two moons, concentric rings, checkerboard.

The usual benchmarks of density models (FFJORD, Grathwohl et al. 2019;
energy-based models), rescaled so that nearly all mass lies in the box
[-5, 5]^2 (a uniform density on it scores log(1/100) = -4.61 nats). Each has
an exact `log_prob` (for moons and rings a 1-D integral along the curve, done
in closed form for rings and by quadrature for moons), so a model's test
log-likelihood can be compared with the truth's.
"""

from __future__ import annotations

import math
from typing import Literal

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from tessera.data.loader import ResumableDataLoader, SeededSampler

__all__ = ["TOY_DENSITIES", "Toy2D", "Toy2DDataModule", "toy_density"]

ToyName = Literal["8gaussians", "2moons", "rings", "checkerboard"]
BOX = (-5.0, 5.0)


class Toy2D:
    """One toy density: `sample(n, generator)` -> (n, 2) and `log_prob(x)` -> (n,)."""

    name: str = ""

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    def log_prob(self, x: Tensor) -> Tensor:
        raise NotImplementedError


class EightGaussians(Toy2D):
    """Eight isotropic Gaussians on a circle (FFJORD's, divided by sqrt 2): radius 2.83, std 0.354."""

    name = "8gaussians"

    def __init__(self) -> None:
        angles = torch.arange(8) * (math.pi / 4)
        self.means = torch.stack([angles.cos(), angles.sin()], 1) * (4 / math.sqrt(2))  # (8, 2)
        self.std = 0.5 / math.sqrt(2)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        k = torch.randint(8, (n,), generator=generator)
        return self.means[k] + self.std * torch.randn(n, 2, generator=generator)

    def log_prob(self, x: Tensor) -> Tensor:
        d2 = (x[:, None, :] - self.means.to(x)).square().sum(-1)  # (n, 8)
        log_n = -d2 / (2 * self.std**2) - math.log(2 * math.pi * self.std**2)
        return torch.logsumexp(log_n, 1) - math.log(8)


class TwoMoons(Toy2D):
    """scikit-learn's two moons, centred and scaled by 2, with Gaussian noise of std 0.2."""

    name = "2moons"

    def __init__(self, noise: float = 0.2, quadrature: int = 256) -> None:
        self.noise = noise
        t = (torch.arange(quadrature, dtype=torch.float64) + 0.5) * (math.pi / quadrature)
        self.curve = torch.cat([self._curve(t, 0), self._curve(t, 1)])  # (2 Q, 2) points on the moons

    @staticmethod
    def _curve(t: Tensor, moon: int) -> Tensor:
        if moon == 0:
            xy = torch.stack([t.cos(), t.sin()], 1)
        else:
            xy = torch.stack([1 - t.cos(), 0.5 - t.sin()], 1)
        return (xy - torch.tensor([0.5, 0.25], dtype=t.dtype)) * 2

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        moon = torch.randint(2, (n,), generator=generator)
        t = torch.rand(n, generator=generator, dtype=torch.float64) * math.pi
        pts = torch.where(moon[:, None] == 0, self._curve(t, 0), self._curve(t, 1)).float()
        return pts + self.noise * torch.randn(n, 2, generator=generator)

    def log_prob(self, x: Tensor) -> Tensor:
        # p(x) = mean over the curve parameter of N(x; c(t), noise^2 I): midpoint quadrature, chunked
        out = []
        for chunk in x.double().split(4096):
            d2 = (chunk.square().sum(1, keepdim=True) + self.curve.square().sum(1) - 2 * chunk @ self.curve.T).clamp_min(0)
            log_n = -d2 / (2 * self.noise**2) - math.log(2 * math.pi * self.noise**2)
            out.append(torch.logsumexp(log_n, 1) - math.log(self.curve.shape[0]))
        return torch.cat(out).to(x.dtype)


class Rings(Toy2D):
    """Four concentric rings of radius 1, 2, 3, 4 (equal mass), Gaussian noise of std 0.15."""

    name = "rings"

    def __init__(self, radii: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0), noise: float = 0.15) -> None:
        self.radii, self.noise = torch.tensor(radii, dtype=torch.float64), noise

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        r = self.radii[torch.randint(len(self.radii), (n,), generator=generator)]
        t = torch.rand(n, generator=generator, dtype=torch.float64) * (2 * math.pi)
        pts = (r[:, None] * torch.stack([t.cos(), t.sin()], 1)).float()
        return pts + self.noise * torch.randn(n, 2, generator=generator)

    def log_prob(self, x: Tensor) -> Tensor:
        # A ring of radius r blurred by N(0, s^2 I), averaged over the angle:
        # p(rho) = exp(-(rho^2 + r^2) / 2 s^2) I0(rho r / s^2) / (2 pi s^2)
        #        = exp(-(rho - r)^2 / 2 s^2) i0e(rho r / s^2) / (2 pi s^2)   (i0e = exp(-z) I0(z), stable)
        s2 = self.noise**2
        rho = x.double().norm(dim=1, keepdim=True)  # (n, 1)
        r = self.radii[None]
        log_ring = -(rho - r).square() / (2 * s2) + torch.special.i0e(rho * r / s2).log() - math.log(2 * math.pi * s2)
        return (torch.logsumexp(log_ring, 1) - math.log(len(self.radii))).to(x.dtype)


class Checkerboard(Toy2D):
    """Uniform on the 8 black squares (side 2) of a 4x4 board covering [-4, 4]^2: log p = -log 32 on them."""

    name = "checkerboard"

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        x1 = torch.rand(n, generator=generator) * 4 - 2
        x2 = torch.rand(n, generator=generator) - torch.randint(2, (n,), generator=generator) * 2.0
        x2 = x2 + torch.floor(x1) % 2
        return torch.stack([x1, x2], 1) * 2

    def log_prob(self, x: Tensor) -> Tensor:
        cell = torch.floor(x / 2)  # integer cell indices in [-2, 1] inside the board
        inside = (x.abs() <= 4).all(1)
        black = (cell[:, 0] + cell[:, 1]) % 2 == 0
        return torch.where(inside & black, torch.full_like(x[:, 0], -math.log(32)), torch.full_like(x[:, 0], -math.inf))


TOY_DENSITIES: dict[str, type[Toy2D]] = {c.name: c for c in (EightGaussians, TwoMoons, Rings, Checkerboard)}


def toy_density(name: str) -> Toy2D:
    """The toy density called `name` (one of TOY_DENSITIES)."""
    if name not in TOY_DENSITIES:
        raise ValueError(f"unknown toy density {name!r}; choose from {sorted(TOY_DENSITIES)}")
    return TOY_DENSITIES[name]()


class PointDataset(Dataset):
    """Points (N, 2) with dummy labels; keys are indices or SeededSampler's (index, seed) pairs."""

    def __init__(self, points: Tensor) -> None:
        self.points = points

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, Tensor]:
        index = key[0] if isinstance(key, tuple) else key
        return self.points[int(index)], torch.zeros((), dtype=torch.long)


class Toy2DDataModule(L.LightningDataModule):
    """Fixed train / val / test draws of a toy density, with a resumable seeded training order.

    Args:
        dataset: "8gaussians", "2moons", "rings" or "checkerboard".
        n_train: training points.
        n_val: validation points.
        n_test: test points (the reported log-likelihood).
        batch_size: points per step.
        data_seed: seed of the draws (the same points on every machine).
        seed: seed of the training order (default: the run's seed_everything).
    """

    def __init__(
        self,
        dataset: ToyName = "8gaussians",
        n_train: int = 50_000,
        n_val: int = 2_000,
        n_test: int = 10_000,
        batch_size: int = 256,
        data_seed: int = 0,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.density = toy_density(dataset)
        if min(n_train, n_val, n_test, batch_size) < 1:
            raise ValueError(f"n_train, n_val, n_test and batch_size must be >= 1, got {n_train}, {n_val}, {n_test}, {batch_size}")
        self.dataset_name, self.batch_size = dataset, batch_size
        self.sizes, self.data_seed, self._seed = (n_train, n_val, n_test), data_seed, seed
        self.box = BOX
        self.shape = (2,)
        self.train_set = self.val_set = self.test_set = None

    @property
    def seed(self) -> int:
        import os

        return self._seed if self._seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))

    def setup(self, stage: str | None = None) -> None:
        """Draw the three splits (fixed by data_seed)."""
        if self.train_set is not None:
            return
        g = torch.Generator().manual_seed(self.data_seed)
        train, val, test = (self.density.sample(n, g) for n in self.sizes)
        self.train_set, self.val_set, self.test_set = PointDataset(train), PointDataset(val), PointDataset(test)

    def points(self, split: Literal["train", "val", "test"]) -> Tensor:
        """All points of a split (N, 2)."""
        self.setup()
        return {"train": self.train_set, "val": self.val_set, "test": self.test_set}[split].points

    def _rank(self) -> tuple[int, int]:
        trainer = self._trainer if hasattr(self, "_trainer") else None
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def train_dataloader(self) -> DataLoader:
        """Shuffled by (seed, epoch), resumable mid-epoch."""
        self.setup()
        world, rank = self._rank()
        sampler = SeededSampler(self.train_set, world, rank, shuffle=True, seed=self.seed, drop_last=True)
        return ResumableDataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(self.val_set, batch_size=max(self.batch_size, 1000), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(self.test_set, batch_size=max(self.batch_size, 1000), shuffle=False)


def _check_densities_normalised(n: int = 400) -> dict[str, float]:
    """Integral of exp(log_prob) over the box for each density (a self-check; ~1 each)."""
    lo, hi = BOX
    h = (hi - lo) / n
    c = lo + h * (np.arange(n) + 0.5)
    grid = torch.from_numpy(np.stack(np.meshgrid(c, c, indexing="xy"), -1).reshape(-1, 2)).float()
    return {k: float(toy_density(k).log_prob(grid).exp().sum() * h * h) for k in TOY_DENSITIES}
