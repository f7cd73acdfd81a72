"""Datasets: images held in a tensor (the bundled digits) and image folders on disk.

Both take keys that are either an index (evaluation: no augmentation) or an
`(index, sample_seed)` pair from `SeededSampler` (training: the augmentation
draws from a generator seeded with `sample_seed`).
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from tessera.data.transforms import Resize, Transform

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

Key = int | tuple[int, int]


def _split_key(key: Key) -> tuple[int, torch.Generator | None]:
    if isinstance(key, tuple):
        index, seed = key
        return int(index), torch.Generator().manual_seed(int(seed))
    return int(key), None


class TensorImageDataset(Dataset):
    """Images (N, C, H, W) in [0, 1] and labels (N,), with a per-image transform."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Transform | None = None) -> None:
        if images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f"expected images (N, C, H, W) and labels (N,), got {tuple(images.shape)}, {tuple(labels.shape)}")
        self.images, self.labels, self.transform = images, labels.long(), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: Key) -> tuple[Tensor, Tensor]:
        index, g = _split_key(key)
        img = self.images[index]
        if self.transform is not None:
            img = self.transform(img, g)
        return img, self.labels[index]


class CorruptImageError(ValueError):
    """An image file that Pillow cannot read."""


def load_image(path: str | Path, in_chans: int = 3) -> Tensor:
    """Read an image with Pillow as a float (C, H, W) tensor in [0, 1]; C = 1 (gray) or 3 (RGB).

    Raises:
        CorruptImageError: naming the path, when the file cannot be decoded.
    """
    from PIL import Image, UnidentifiedImageError

    if in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 (grayscale) or 3 (RGB), got {in_chans}")
    try:
        with Image.open(path) as im:
            if im.mode in _WIDE_MODES:  # 16-bit grayscale: convert("L") would clip it to 255
                gray = np.asarray(im).astype(np.float32) / _WIDE_MODES[im.mode]
                t = torch.from_numpy(gray.clip(0, 1))[None]  # (1, H, W)
                return t if in_chans == 1 else t.expand(3, -1, -1).contiguous()
            im = im.convert("L" if in_chans == 1 else "RGB")
            arr = np.asarray(im, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise CorruptImageError(f"cannot read image {str(path)!r}: {err}") from None
    t = torch.from_numpy(arr).float().div_(255)
    return t[None] if t.ndim == 2 else t.permute(2, 0, 1).contiguous()  # (C, H, W)


# Pillow modes of single-channel images wider than 8 bits, with their white level
# (a 16-bit PNG opens as I;16, or as 32-bit "I" in older Pillow versions).
_WIDE_MODES = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0, "I": 65535.0, "F": 1.0}


def scan_image_folder(root: str | Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted subfolders) and (path, label) pairs of a class-per-subfolder tree.

    Raises:
        ValueError: the folder is missing, has no class subfolders, or holds no images.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"image folder {str(root)!r} does not exist or is not a folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(
            f"image folder {str(root)!r} has no class subfolders; expected {root}/<class>/<image>.png "
            f"(extensions {', '.join(IMAGE_SUFFIXES)})"
        )
    samples = [
        (p, label)
        for label, name in enumerate(classes)
        for p in sorted((root / name).rglob("*"))
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not samples:
        raise ValueError(
            f"image folder {str(root)!r} has {len(classes)} class subfolder(s) but no images "
            f"with extensions {', '.join(IMAGE_SUFFIXES)}"
        )
    _check_no_empty_class(root, classes, [label for _, label in samples], "no images")
    return classes, samples


def _check_no_empty_class(root: Path, classes: list[str], labels: list[int], what: str) -> None:
    """A class without images would train a class the model can never see: refuse it by name."""
    empty = [name for i, name in enumerate(classes) if i not in set(labels)]
    if empty:
        raise ValueError(
            f"image folder {str(root)!r}: class subfolder(s) {', '.join(map(repr, empty))} have {what} "
            f"(extensions {', '.join(IMAGE_SUFFIXES)}); add images or remove the folder(s)"
        )


class ImageFolder(Dataset):
    """A class-per-subfolder image tree (PNG/JPEG/WebP via Pillow), resized to `img_size`.

    Every file is checked when the dataset is built, so a corrupt file is
    reported before training starts: `on_error="stop"` raises
    `CorruptImageError` naming it, `"skip"` leaves it out and counts it in
    `skipped` (and in the log). `check="decode"` decodes every file (JPEGs at
    1/8 scale, which still reads the whole stream: a truncated file fails),
    on a few threads; `"header"` only lets Pillow verify the header (fast,
    but a truncated JPEG then fails mid-training instead).

    Args:
        root: folder with one subfolder per class.
        img_size: side of the square the images are resized to.
        in_chans: 1 reads grayscale, 3 reads RGB.
        transform: per-image transform applied after resizing (training augmentations).
        on_error: what to do with an unreadable file.
        check: 'decode' (every file fully decoded before training) or 'header'.
    """

    def __init__(
        self,
        root: str | Path,
        img_size: int = 224,
        in_chans: int = 3,
        transform: Transform | None = None,
        on_error: Literal["stop", "skip"] = "stop",
        check: Literal["decode", "header"] = "decode",
    ) -> None:
        if on_error not in ("stop", "skip"):
            raise ValueError(f"on_error must be 'stop' or 'skip', got {on_error!r}")
        if check not in ("decode", "header"):
            raise ValueError(f"check must be 'decode' or 'header', got {check!r}")
        self.root, self.in_chans, self.transform, self.on_error = Path(root), in_chans, transform, on_error
        self.resize = Resize(img_size)
        self.classes, samples = scan_image_folder(root)
        self.samples: list[tuple[Path, int]] = []
        self.skipped: list[Path] = []
        errors = _check_images([p for p, _ in samples], decode=check == "decode")
        for (path, label), err in zip(samples, errors):
            if err is None:
                self.samples.append((path, label))
            elif on_error == "stop":
                raise CorruptImageError(f"cannot read image {str(path)!r}: {err}")
            else:
                self.skipped.append(path)
        if self.skipped:
            log.warning(
                "skipped %d unreadable image(s) in %s (on_error='skip'): %s%s",
                len(self.skipped), root, ", ".join(map(str, self.skipped[:5])),
                " ..." if len(self.skipped) > 5 else "",
            )
        if not self.samples:
            raise ValueError(f"image folder {str(root)!r} has no readable images ({len(self.skipped)} skipped)")
        _check_no_empty_class(self.root, self.classes, [label for _, label in self.samples], "no readable images")

    def with_transform(self, transform: Transform | None) -> "ImageFolder":
        """The same checked files with another per-image transform (no second scan)."""
        view = copy.copy(self)
        view.transform = transform
        return view

    @property
    def labels(self) -> Tensor:
        """Labels of all samples (N,)."""
        return torch.tensor([label for _, label in self.samples])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: Key) -> tuple[Tensor, Tensor]:
        index, g = _split_key(key)
        for tries in range(len(self)):
            path, label = self.samples[(index + tries) % len(self)]
            try:
                img = load_image(path, self.in_chans)
                break
            except CorruptImageError:
                # It passed the check but fails now (e.g. the file changed since).
                if self.on_error == "stop":
                    raise
                log.warning("skipping unreadable image %s; using the next sample instead", path)
                self.skipped.append(path)
        else:
            raise CorruptImageError(f"image folder {str(self.root)!r}: none of its {len(self)} images can be read any more")
        img = self.resize(img)
        if self.transform is not None:
            img = self.transform(img, g)
        return img, torch.tensor(label)


def _check_image(path: Path, decode: bool = True) -> str | None:
    """None when Pillow can verify (and, with `decode`, fully decode) the file, else the error text."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()  # header, and the chunk checksums of a PNG
        if decode:
            with Image.open(path) as im:
                if im.format == "JPEG":
                    im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))  # DCT scaling: 1/8 the work
                im.load()  # raises on truncated data ("image file is truncated")
    except Exception as err:  # noqa: BLE001 - Pillow raises many types for bad files
        return f"{type(err).__name__}: {err}"
    return None


def _check_images(paths: list[Path], decode: bool) -> list[str | None]:
    """`_check_image` over many files on a few threads (Pillow decodes without the GIL)."""
    if len(paths) < 64:
        return [_check_image(p, decode) for p in paths]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda p: _check_image(p, decode), paths, chunksize=32))


class KeyedSubset(Dataset):
    """`Subset` that also takes the `(index, sample_seed)` keys of `SeededSampler`.

    torch's `Subset` indexes its index list with the key itself, which fails
    for a tuple; here position i of the subset is `dataset[indices[i]]` and
    the sample seed passes through unchanged.
    """

    def __init__(self, dataset: Dataset, indices: list[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: Key) -> tuple[Tensor, Tensor]:
        if isinstance(key, tuple):
            index, seed = key
            return self.dataset[(self.indices[int(index)], seed)]
        return self.dataset[self.indices[int(key)]]
