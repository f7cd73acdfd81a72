"""Hostile inputs to the image-folder pipeline (issue 18): layouts, corrupt files, bit depths, predict args."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tessera.data import CorruptImageError, ImageFolder, ImageFolderDataModule, load_image
from tessera.train.cli import lightning_main

TINY_SWIN = {"patch_size": 4, "window_size": 2, "embed_dim": 16, "depths": [1, 1], "num_heads": [1, 2]}


def _image_tree(root: Path, per_class: int = 5, classes: tuple[str, ...] = ("cat", "dog")) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
            Image.fromarray(arr, "RGB").save(root / c / f"{i}.png")
    return root


def _fit_argv(data_root: Path, run: Path) -> list[str]:
    return [
        "fit",
        "--data", "tessera.data.ImageFolderDataModule",
        "--data.root", str(data_root),
        "--data.img_size", "16",
        "--data.batch_size", "4",
        "--data.num_workers", "0",
        "--model", "tessera.train.ClassificationTask",
        "--model.model_name", "swin_tiny_patch4_window7_224",
        "--model.model_args", json.dumps(TINY_SWIN),
        "--trainer.default_root_dir", str(run),
        "--trainer.max_steps", "2",
        "--trainer.limit_val_batches", "1",
        "--trainer.limit_test_batches", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.num_sanity_val_steps", "0",
        "--trainer.logger", "false",
        "--test_after_fit", "false",
    ]


@pytest.mark.parametrize("layout", ["flat", "train_only"])
def test_held_out_split_takes_resumable_sampler_keys(tmp_path, layout):
    """README layouts `root/<class>` and `root/train/<class>` (no val/): the held-out split is indexed by
    the resumable sampler's (index, seed) keys (used to crash with "list indices must be integers")."""
    root = _image_tree(tmp_path / "data" / ("train" if layout == "train_only" else ""))
    data_root = tmp_path / "data"
    dm = ImageFolderDataModule(data_root, img_size=16, batch_size=4, num_workers=0, val_fraction=0.2)
    dm.setup("fit")
    assert len(dm.train_set) == 8 and len(dm.val_set) == 2
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 16, 16) and y.shape == (4,)
    # the same key gives the same augmented image; train and val do not share files
    assert torch.equal(dm.train_set[(0, 7)][0], dm.train_set[(0, 7)][0])
    train_files = {dm.train_set.dataset.samples[i][0] for i in dm.train_set.indices}
    val_files = {dm.val_set.dataset.samples[i][0] for i in dm.val_set.indices}
    assert not train_files & val_files and len(train_files | val_files) == 10
    assert root.is_dir()


@pytest.mark.slow
def test_fit_on_a_flat_image_folder_runs_two_steps(tmp_path):
    _image_tree(tmp_path / "data")
    run = tmp_path / "run"
    assert lightning_main(_fit_argv(tmp_path / "data", run)) == 0
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2
