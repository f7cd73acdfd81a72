"""Datasets and DataModules: digits, IDX files (Fashion-MNIST), image folders, dense folders and scenes,
captions and their text tokenizer, 2-D toy densities; tensor-code transforms."""

from tessera.data.base import Augment, ImageDataModule
from tessera.data.captions import (
    CaptionDataModule,
    CaptionDataset,
    DigitCaptionsDataModule,
    EmojiCaptionsDataModule,
    FashionCaptionsDataModule,
    digit_caption,
    fashion_caption,
    load_emoji,
    parse_emoji_test,
    subgroup_split,
)
from tessera.data.datasets import CorruptImageError, ImageFolder, TensorImageDataset, load_image, scan_image_folder
from tessera.data.dense import DenseFolder, DenseFolderDataModule, SceneDataModule, make_scenes, render_scene
from tessera.data.digits import DigitsDataModule, digits_split, load_digits_images
from tessera.data.folder import ImageFolderDataModule
from tessera.data.idx import IDXDataModule, read_idx, write_idx
from tessera.data.loader import ResumableDataLoader, SeededSampler
from tessera.data.text import TextTokenizer
from tessera.data.toy2d import Toy2DDataModule, toy_density

__all__ = [
    "Augment",
    "CaptionDataModule",
    "CaptionDataset",
    "CorruptImageError",
    "DenseFolder",
    "DenseFolderDataModule",
    "DigitCaptionsDataModule",
    "DigitsDataModule",
    "EmojiCaptionsDataModule",
    "FashionCaptionsDataModule",
    "IDXDataModule",
    "ImageDataModule",
    "ImageFolder",
    "ImageFolderDataModule",
    "ResumableDataLoader",
    "SceneDataModule",
    "SeededSampler",
    "TensorImageDataset",
    "TextTokenizer",
    "Toy2DDataModule",
    "digit_caption",
    "fashion_caption",
    "digits_split",
    "load_digits_images",
    "load_emoji",
    "load_image",
    "make_scenes",
    "parse_emoji_test",
    "read_idx",
    "render_scene",
    "scan_image_folder",
    "subgroup_split",
    "toy_density",
    "write_idx",
]
