"""What the image DataModules share: augmentation options, normalisation, resumable loaders."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import lightning as L
from torch.utils.data import DataLoader, Dataset

from tessera.data.loader import ResumableDataLoader, SeededSampler
from tessera.data.transforms import (
    ColorJitter,
    Compose,
    Normalize,
    RandomHorizontalFlip,
    RandomResizedCrop,
    RandomTranslate,
    Transform,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Normalization = Literal["standard", "signed", "none"]


@dataclass(frozen=True)
class Augment:
    """Training augmentations, applied per image in this order (all off with `enabled=False`).

    Attributes:
        enabled: whether to augment training images at all.
        crop_scale: area fraction range of the random resized crop ((1, 1) turns it off).
        crop_ratio: aspect-ratio range of the crop.
        translate: largest random shift in pixels (0 = off), zero-filled.
        hflip: probability of a horizontal flip (keep 0 for digits and text).
        color_jitter: strength s of brightness/contrast/saturation factors in [1 - s, 1 + s].
    """

    enabled: bool = True
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    translate: int = 0
    hflip: float = 0.5
    color_jitter: float = 0.0

    def build(self, img_size: int) -> list[Transform]:
        """The per-image transforms (before normalisation)."""
        if not self.enabled:
            return []
        out: list[Transform] = []
        if tuple(self.crop_scale) != (1.0, 1.0):
            out.append(RandomResizedCrop(img_size, tuple(self.crop_scale), tuple(self.crop_ratio)))
        if self.translate > 0:
            out.append(RandomTranslate(self.translate))
        if self.hflip > 0:
            out.append(RandomHorizontalFlip(self.hflip))
        if self.color_jitter > 0:
            out.append(ColorJitter(self.color_jitter, self.color_jitter, self.color_jitter))
        return out


def normalizer(
    kind: Normalization, in_chans: int, mean: Sequence[float] | None, std: Sequence[float] | None
) -> Normalize | None:
    """The final transform: 'standard' (x - mean) / std, 'signed' 2x - 1 into [-1, 1], 'none' keeps [0, 1]."""
    if kind == "none":
        return None
    if kind == "signed":
        return Normalize([0.5] * in_chans, [0.5] * in_chans)
    if kind != "standard":
        raise ValueError(f"normalize must be 'standard', 'signed' or 'none', got {kind!r}")
    if mean is None or std is None:
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if in_chans == 3 else ((0.5,), (0.5,))
    if len(mean) != in_chans or len(std) != in_chans:
        raise ValueError(f"mean/std need {in_chans} values (one per channel), got {list(mean)} / {list(std)}")
    return Normalize(mean, std)


class ImageDataModule(L.LightningDataModule):
    """Base of tessera's image DataModules: loaders, seeded order, and what a model needs to know.

    Subclasses set `train_set`, `val_set`, `test_set` (and `class_names`) in `setup`.
    """

    def __init__(
        self,
        img_size: int,
        in_chans: int,
        batch_size: int,
        num_workers: int,
        seed: int | None,
        augment: Augment,
        normalize: Normalization,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.img_size, self.in_chans = img_size, in_chans
        self.batch_size, self.num_workers = batch_size, num_workers
        self._seed, self.augment, self.normalize = seed, augment, normalize
        self.class_names: list[str] = []
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.mean: tuple[float, ...] | None = None
        self.std: tuple[float, ...] | None = None

    @property
    def seed(self) -> int:
        """Seed of the data order and augmentations: `seed`, else the run's seed_everything value."""
        return self._seed if self._seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))

    @property
    def num_classes(self) -> int:
        """Number of classes (known after `setup`, and before for fixed datasets)."""
        return len(self.class_names)

    def eval_transform(self) -> Transform | None:
        """Normalisation only."""
        return normalizer(self.normalize, self.in_chans, self.mean, self.std)

    def train_transform(self) -> Transform | None:
        """Augmentations, then normalisation."""
        steps = self.augment.build(self.img_size)
        norm = self.eval_transform()
        steps += [norm] if norm is not None else []
        return Compose(steps) if steps else None

    def preprocess(self) -> dict[str, Any]:
        """How an image file becomes a model input: saved next to the exported weights for `tessera predict`."""
        norm = self.eval_transform()
        return {
            "img_size": self.img_size,
            "in_chans": self.in_chans,
            "mean": norm.mean.flatten().tolist() if norm is not None else [0.0] * self.in_chans,
            "std": norm.std.flatten().tolist() if norm is not None else [1.0] * self.in_chans,
            "class_names": list(self.class_names),
        }

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def train_dataloader(self) -> DataLoader:
        """Shuffled, seeded, resumable mid-epoch; sharded over ranks by the sampler itself."""
        if self.train_set is None:
            self.setup("fit")
        world, rank = self._rank()
        n = len(self.train_set)  # type: ignore[arg-type]
        drop_last = n // world > self.batch_size  # keep the batch size constant when there is more than one batch
        sampler = SeededSampler(self.train_set, world, rank, shuffle=True, seed=self.seed, drop_last=drop_last)
        return ResumableDataLoader(
            self.train_set, batch_size=self.batch_size, sampler=sampler, drop_last=drop_last,
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
        )

    def _eval_loader(self, dataset: Dataset | None, stage: str) -> DataLoader:
        if dataset is None:
            self.setup(stage)
            dataset = {"validate": self.val_set, "test": self.test_set}[stage]
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        """Validation split, in order, no augmentation."""
        return self._eval_loader(self.val_set, "validate")

    def test_dataloader(self) -> DataLoader:
        """Test split, in order, no augmentation."""
        return self._eval_loader(self.test_set, "test")

    def predict_dataloader(self) -> DataLoader:
        """The test split (use `tessera predict --images` for files)."""
        return self.test_dataloader()
