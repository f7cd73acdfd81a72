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


def _truncated_jpeg(path: Path) -> Path:
    arr = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(arr, "RGB").save(path, format="JPEG", quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # header intact, scan data cut
    return path


def test_truncated_jpeg_fails_the_check_before_training(tmp_path):
    root = _image_tree(tmp_path / "data")
    bad = _truncated_jpeg(root / "cat" / "cut.jpg")
    with pytest.raises(CorruptImageError, match="cut.jpg"):
        ImageFolder(root, img_size=16)
    ds = ImageFolder(root, img_size=16, on_error="skip")
    assert ds.skipped == [bad] and len(ds) == 10
    # the quick header check alone does not see it (that is what the decode check is for)
    assert len(ImageFolder(root, img_size=16, check="header")) == 11


def test_skip_with_every_file_bad_is_a_clear_error(tmp_path):
    root = tmp_path / "data"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            _truncated_jpeg(root / c / f"{i}.jpg")
    with pytest.raises(ValueError, match="no readable images"):
        ImageFolderDataModule(root, img_size=16, num_workers=0, on_error="skip").setup("fit")
    # files that break after the check: a bounded search, then a clear error (was RecursionError)
    ds = ImageFolder(root, img_size=16, on_error="skip", check="header")
    with pytest.raises(CorruptImageError, match="none of its 6 images"):
        ds[(0, 1)]


def test_empty_class_folder_is_an_error_naming_it(tmp_path):
    root = _image_tree(tmp_path / "data")
    (root / "zebra").mkdir()
    with pytest.raises(ValueError, match="'zebra'"):
        ImageFolderDataModule(root, img_size=16, num_workers=0).setup("fit")
    (root / "zebra" / "x.jpg").write_bytes(b"not an image")  # a class whose only file is unreadable
    with pytest.raises(ValueError, match="'zebra'.*no readable images"):
        ImageFolder(root, img_size=16, on_error="skip")


@pytest.mark.parametrize("in_chans", [1, 3])
def test_16_bit_png_mid_grey_reads_half(tmp_path, in_chans):
    path = tmp_path / "g16.png"
    Image.fromarray(np.full((4, 4), 32768, np.uint16)).save(path)
    x = load_image(path, in_chans)
    assert x.shape == (in_chans, 4, 4)
    assert x.max().item() == pytest.approx(0.5, abs=1e-4) and x.min().item() == pytest.approx(0.5, abs=1e-4)


def test_predict_batch_size_zero_is_a_clear_error(tmp_path, capsys):
    from tessera.cli import main

    code = main(["predict", "--checkpoint", str(tmp_path), "--images", "a.png", "--batch-size", "0"])
    assert code == 2 and "--batch-size must be >= 1, got 0" in capsys.readouterr().err


def test_resume_with_another_batch_size_continues_after_the_samples_seen(caplog):
    """Changed batch size on resume: applied and warned; no sample skipped or repeated (was: 192 skipped)."""
    from tessera.data import ResumableDataLoader, SeededSampler, TensorImageDataset

    ds = TensorImageDataset(torch.arange(40.0).reshape(40, 1, 1, 1), torch.zeros(40))

    def loader(bs):
        sampler = SeededSampler(ds, seed=3)
        sampler.set_epoch(1)
        return ResumableDataLoader(ds, batch_size=bs, sampler=sampler)

    order = [int(v) for b in loader(40) for v in b[0].flatten()]
    a = loader(4)
    it = iter(a)
    seen = [int(v) for _ in range(3) for v in next(it)[0].flatten()]  # 12 samples in 3 batches
    state = a.state_dict()
    b = loader(6)
    with caplog.at_level("WARNING"):
        b.load_state_dict(state)
    assert "batch size 6 instead of the checkpoint's 4: applied" in caplog.text
    rest = [int(v) for batch in b for v in batch[0].flatten()]
    assert seen + rest == order
