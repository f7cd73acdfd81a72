"""MNIST-format IDX files (MNIST, Fashion-MNIST, KMNIST, ...) and a DataModule over them.

IDX (LeCun's format): 2 zero bytes, a type byte (0x08 = unsigned byte), the number of
dimensions, each dimension as a big-endian int32, then the values in C order. Files are
`{split}-images-idx3-ubyte[.gz]` (N, 28, 28) and `{split}-labels-idx1-ubyte[.gz]` (N,), with
split "train" (60,000) and "t10k" (10,000).

Fashion-MNIST (Xiao et al. 2017, arXiv 1708.07747) is packaged by Debian and Ubuntu:
`apt-get install dataset-fashion-mnist` puts the four files in
/usr/share/datasets/fashion-mnist (`dpkg -L dataset-fashion-mnist` lists them), where
`IDXDataModule` finds them without a `root`.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from tessera.data.base import Augment, ImageDataModule, Normalization
from tessera.data.datasets import TensorImageDataset

__all__ = ["FASHION_CLASSES", "IDXDataModule", "find_idx_split", "read_idx", "write_idx"]

FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
SYSTEM_FOLDERS = (Path("/usr/share/datasets/fashion-mnist"),)
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
HOW_TO_GET = (
    "Fashion-MNIST: on Debian/Ubuntu run `sudo apt-get update && sudo apt-get install dataset-fashion-mnist` "
    "(files go to /usr/share/datasets/fashion-mnist; `dpkg -L dataset-fashion-mnist` lists them), or download "
    "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
    "t10k-labels-idx1-ubyte.gz from https://github.com/zalandoresearch/fashion-mnist into a folder and pass "
    "--data.init_args.root FOLDER"
)


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an IDX file (gzip-compressed when the name ends in .gz)."""
    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise ValueError(f"{str(path)!r} is not an IDX file: header bytes {list(raw[:4])}, expected [0, 0, type, ndim]")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_DTYPES[raw[2]])
    start = 4 + 4 * ndim
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - start != expected:
        raise ValueError(
            f"{str(path)!r} is truncated or corrupt: header says shape {shape} ({expected} bytes), "
            f"found {len(raw) - start} bytes of data"
        )
    return np.frombuffer(raw, dtype=dtype, offset=start).reshape(shape)


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write a uint8 array as an IDX file (gzip when the name ends in .gz); for tests and tools."""
    path = Path(path)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def find_idx_split(folder: Path, split: str) -> tuple[Path, Path] | None:
    """(images, labels) of `split` ("train" / "t10k") in `folder`, plain or .gz, `-` or `.` before idx."""
    found = []
    for kind, n in (("images", 3), ("labels", 1)):
        names = [f"{split}-{kind}-idx{n}-ubyte{gz}" for gz in ("", ".gz")]
        names += [f"{split}-{kind}.idx{n}-ubyte{gz}" for gz in ("", ".gz")]
        hit = next((folder / m for m in names if (folder / m).is_file()), None)
        if hit is None:
            return None
        found.append(hit)
    return found[0], found[1]


def _to_images(raw: np.ndarray, img_size: int, in_chans: int) -> Tensor:
    """(N, 28, 28) uint8 -> (N, C, S, S) floats in [0, 1]: zero-padded (centred) when S > 28, resized when smaller."""
    x = torch.from_numpy(raw.astype(np.float32) / 255.0)[:, None]  # (N, 1, h, w)
    h, w = x.shape[-2:]
    if img_size >= max(h, w):
        top, left = (img_size - h) // 2, (img_size - w) // 2
        x = torch.nn.functional.pad(x, (left, img_size - w - left, top, img_size - h - top))
    else:
        x = torch.nn.functional.interpolate(x, size=(img_size, img_size), mode="area")
    return x.expand(-1, in_chans, -1, -1).contiguous() if in_chans > 1 else x


def train_val_split(n: int, val_size: int, split_seed: int) -> tuple[Tensor, Tensor]:
    """(train, val) indices of a training file of n images: `val_size` drawn by `split_seed`, both sorted."""
    if not 0 <= val_size < n:
        raise ValueError(f"val_size must lie in [0, {n}), got {val_size}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    return order[val_size:].sort().values, order[:val_size].sort().values


class IDXDataModule(ImageDataModule):
    """MNIST-format IDX files as a DataModule (default: Fashion-MNIST, 28 px padded to 32).

    Args:
        root: folder with the four IDX files; None searches /usr/share/datasets/fashion-mnist.
        img_size: output side (>= 28: zero padding around the centred image; smaller: area resize).
        in_chans: 1, or 3 (gray repeated).
        batch_size: per device.
        num_workers: DataLoader workers.
        seed: data order / augmentation seed (default: the run's seed_everything).
        split_seed: seed of the train/validation split of the 60,000 training images.
        val_size: training images held out for validation.
        train_limit: use only the first N remaining training images (quick runs); None: all.
        classes: "fashion" (Fashion-MNIST names) or "index" ("0".."9").
        augment: training augmentations (off by default: tokenizers learn the data as it is).
        normalize: 'signed' ([-1, 1], tokenizers and diffusion), 'standard' or 'none'.
    """

    def __init__(
        self,
        root: str | None = None,
        img_size: int = 32,
        in_chans: int = 1,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int | None = None,
        split_seed: int = 0,
        val_size: int = 5000,
        train_limit: int | None = None,
        classes: Literal["fashion", "index"] = "fashion",
        augment: Augment = Augment(enabled=False),
        normalize: Normalization = "signed",
    ) -> None:
        super().__init__(img_size, in_chans, batch_size, num_workers, seed, augment, normalize)
        self.root, self.split_seed, self.val_size, self.train_limit = root, split_seed, val_size, train_limit
        self.class_names = list(FASHION_CLASSES) if classes == "fashion" else [str(i) for i in range(10)]

    def folder(self) -> Path:
        """The folder holding the files; a FileNotFoundError saying how to get them otherwise."""
        candidates = [Path(self.root)] if self.root else list(SYSTEM_FOLDERS)
        for folder in candidates:
            if find_idx_split(folder, "train") and find_idx_split(folder, "t10k"):
                return folder
        where = ", ".join(str(c) for c in candidates)
        raise FileNotFoundError(
            f"no IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-...) in {where}. "
            + HOW_TO_GET
        )

    def load_split(self, split: Literal["train", "t10k"]) -> tuple[Tensor, Tensor]:
        """Images (N, C, S, S) in [0, 1] and labels (N,) of one file pair."""
        images, labels = find_idx_split(self.folder(), split)  # type: ignore[misc]
        x, y = read_idx(images), read_idx(labels)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"{images.name} / {labels.name}: expected (N, H, W) images and (N,) labels, "
                             f"found {x.shape} and {y.shape}")
        return _to_images(x, self.img_size, self.in_chans), torch.from_numpy(y.astype(np.int64))

    def setup(self, stage: str | None = None) -> None:
        if self.test_set is not None:
            return
        x, y = self.load_split("train")
        train, val = train_val_split(len(x), self.val_size, self.split_seed)
        if self.train_limit is not None:
            train = train[: self.train_limit]
        if self.normalize == "standard":
            self.mean = tuple(x[train].mean(dim=(0, 2, 3)).tolist())
            self.std = tuple(x[train].std(dim=(0, 2, 3)).tolist())
        tx, ty = self.load_split("t10k")
        self.train_set = TensorImageDataset(x[train], y[train], self.train_transform())
        self.val_set = TensorImageDataset(x[val], y[val], self.eval_transform())
        self.test_set = TensorImageDataset(tx, ty, self.eval_transform())
