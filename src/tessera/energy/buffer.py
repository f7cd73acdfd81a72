"""The replay buffer of persistent negative samples (Du & Mordatch 2019, sec. 3.1; JEM, Grathwohl et al. 2020).

Short-run Langevin chains are started from past chain ends instead of fresh
noise, so over training they run effectively much longer; a small share of
starts (about 5%) is fresh noise, which keeps the buffer from collapsing onto
a few modes. The samples are a buffer of the module, so they are saved in
the training checkpoint and a resumed run continues with the same negatives.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ReplayBuffer"]


class ReplayBuffer(nn.Module):
    """A fixed-size buffer of samples (N, *shape), initialised with uniform noise on [low, high].

    Args:
        capacity: number of stored samples N.
        shape: shape of one sample, e.g. (2,) or (1, 32, 32).
        low: lower end of the noise range (the data's range).
        high: upper end of the noise range.
        reinit_prob: probability that a drawn start is fresh noise instead of a stored sample.
        seed: seed of the initial noise (the buffer is the same on every machine).
    """

    def __init__(
        self,
        capacity: int,
        shape: tuple[int, ...],
        low: float = -1.0,
        high: float = 1.0,
        reinit_prob: float = 0.05,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if not 0 <= reinit_prob <= 1:
            raise ValueError(f"reinit_prob must be in [0, 1], got {reinit_prob}")
        if not low < high:
            raise ValueError(f"need low < high for the noise range, got {low}, {high}")
        self.shape, self.low, self.high, self.reinit_prob = tuple(shape), float(low), float(high), float(reinit_prob)
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("samples", self._uniform(capacity, g))  # (N, *shape), saved with the run

    @property
    def capacity(self) -> int:
        return self.samples.shape[0]

    def _uniform(self, n: int, generator: torch.Generator | None) -> Tensor:
        """(n, *shape) uniform on [low, high], on the CPU (where the generator lives)."""
        return self.low + (self.high - self.low) * torch.rand((n, *self.shape), generator=generator)

    def noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n fresh starts, uniform on [low, high]: (n, *shape) on the buffer's device."""
        return self._uniform(n, generator).to(self.samples.device)

    @torch.no_grad()
    def draw(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """n chain starts and the buffer slots they came from.

        Returns:
            x: (n, *shape) stored samples, each replaced by fresh noise with probability reinit_prob.
            index: (n,) slots; `push(x_new, index)` writes the chain ends back there.
        """
        index = torch.randint(self.capacity, (n,), generator=generator)
        x = self.samples[index.to(self.samples.device)].clone()
        fresh = torch.rand(n, generator=generator) < self.reinit_prob
        if fresh.any():
            x[fresh.to(x.device)] = self.noise(int(fresh.sum()), generator).to(x)
        return x, index

    @torch.no_grad()
    def push(self, x: Tensor, index: Tensor) -> None:
        """Store chain ends x (n, *shape) in the slots they were drawn from."""
        if x.shape[1:] != self.samples.shape[1:] or x.shape[0] != index.shape[0]:
            raise ValueError(f"expected samples (n, {', '.join(map(str, self.shape))}) for {index.shape[0]} slots, got {tuple(x.shape)}")
        self.samples[index.to(self.samples.device)] = x.detach().to(self.samples)
