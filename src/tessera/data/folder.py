"""Image folders on disk (class-per-subfolder) as a LightningDataModule."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Sequence

import torch
from tessera.data.base import Augment, ImageDataModule, Normalization
from tessera.data.datasets import ImageFolder, KeyedSubset


class ImageFolderDataModule(ImageDataModule):
    """`root/train/<class>/*.png`, `root/val/...`, optional `root/test/...` (PNG/JPEG/WebP).

    When `root` has no `train` subfolder, `root` itself is the class tree and
    a seeded `val_fraction` of it is held out for validation (and used as test).
    Files are checked before training; an unreadable one stops the run naming
    its path (`on_error="stop"`) or is skipped and counted (`"skip"`).

    Args:
        root: the data folder.
        img_size: side of the square inputs.
        in_chans: 3 reads RGB, 1 reads grayscale.
        batch_size: per device.
        num_workers: DataLoader worker processes.
        seed: data order and augmentation seed (default: the run's `seed_everything`).
        val_fraction: held-out share when there is no `val` folder.
        on_error: 'stop' or 'skip' for unreadable files.
        check: 'decode' every file before training (a truncated JPEG is caught) or only its 'header'.
        augment: training augmentations.
        normalize: 'standard' (mean/std below, ImageNet's by default), 'signed' or 'none'.
        mean: per-channel mean for 'standard'.
        std: per-channel std for 'standard'.
    """

    def __init__(
        self,
        root: str | Path,
        img_size: int = 224,
        in_chans: int = 3,
        batch_size: int = 64,
        num_workers: int = 2,
        seed: int | None = None,
        val_fraction: float = 0.1,
        on_error: Literal["stop", "skip"] = "stop",
        check: Literal["decode", "header"] = "decode",
        augment: Augment = Augment(),
        normalize: Normalization = "standard",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(img_size, in_chans, batch_size, num_workers, seed, augment, normalize)
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.root, self.val_fraction, self.on_error, self.check = Path(root), val_fraction, on_error, check
        self.mean = tuple(mean) if mean is not None else None
        self.std = tuple(std) if std is not None else None
        self.skipped = 0

    def _folder(self, path: Path, train: bool) -> ImageFolder:
        tf = self.train_transform() if train else self.eval_transform()
        ds = ImageFolder(path, self.img_size, self.in_chans, tf, self.on_error, self.check)
        self.skipped += len(ds.skipped)
        if not self.class_names:
            self.class_names = ds.classes
        elif ds.classes != self.class_names:
            raise ValueError(f"classes of {str(path)!r} ({ds.classes}) differ from the training classes ({self.class_names})")
        return ds

    def setup(self, stage: str | None = None) -> None:
        """Scan and check the folders (raises before training on an empty or corrupt tree)."""
        if self.val_set is not None:
            return
        if (self.root / "train").is_dir():
            self.train_set = self._folder(self.root / "train", train=True)
            val_dir = self.root / "val"
            self.val_set = self._folder(val_dir, train=False) if val_dir.is_dir() else None
            test_dir = self.root / "test"
            self.test_set = self._folder(test_dir, train=False) if test_dir.is_dir() else None
            if self.val_set is None:
                self._hold_out()
        else:
            self.train_set = self._folder(self.root, train=True)
            self._hold_out()
        if self.test_set is None:
            self.test_set = self.val_set

    def _hold_out(self) -> None:
        """Split a seeded `val_fraction` off the training tree."""
        full_eval = self.train_set.with_transform(self.eval_transform())  # type: ignore[union-attr]
        n = len(full_eval)
        n_val = max(1, int(round(n * self.val_fraction))) if n > 1 else 0
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(12345)).tolist()
        self.val_set = KeyedSubset(full_eval, sorted(perm[:n_val]))
        self.train_set = KeyedSubset(self.train_set, sorted(perm[n_val:]))  # type: ignore[arg-type]
