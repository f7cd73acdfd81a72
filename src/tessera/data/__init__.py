"""Datasets and DataModules: the bundled digits, image folders, tensor-code transforms."""

from tessera.data.base import Augment, ImageDataModule
from tessera.data.datasets import CorruptImageError, ImageFolder, TensorImageDataset, load_image, scan_image_folder
from tessera.data.digits import DigitsDataModule, digits_split, load_digits_images
from tessera.data.folder import ImageFolderDataModule
from tessera.data.loader import ResumableDataLoader, SeededSampler

__all__ = [
    "Augment",
    "CorruptImageError",
    "DigitsDataModule",
    "ImageDataModule",
    "ImageFolder",
    "ImageFolderDataModule",
    "ResumableDataLoader",
    "SeededSampler",
    "TensorImageDataset",
    "digits_split",
    "load_digits_images",
    "load_image",
    "scan_image_folder",
]
