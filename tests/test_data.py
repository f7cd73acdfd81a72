"""Data: the bundled digits split, image folders (incl. corrupt and empty ones), transforms, resumable order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tessera.data import (
    Augment,
    CorruptImageError,
    DigitsDataModule,
    ImageFolder,
    ImageFolderDataModule,
    ResumableDataLoader,
    SeededSampler,
    TensorImageDataset,
    digits_split,
    load_digits_images,
    load_image,
)
from tessera.data.transforms import (
    ColorJitter,
    MixupCutmix,
    Normalize,
    RandomHorizontalFlip,
    RandomResizedCrop,
    RandomTranslate,
)


# ----------------------------------------------------------------------------- digits


def test_digits_split_is_fixed_disjoint_and_complete():
    _, labels = load_digits_images(8)
    a = digits_split(labels, 0.1, 0.2, seed=0)
    b = digits_split(labels, 0.1, 0.2, seed=0)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    train, val, test = (set(s.tolist()) for s in a)
    assert not (train & val) and not (train & test) and not (val & test)
    assert len(train | val | test) == len(labels) == 1797
    assert len(test) == 360 and len(val) == 180
    # stratified: every class in every split
    for s in a:
        assert set(labels[s].tolist()) == set(range(10))
    other = digits_split(labels, 0.1, 0.2, seed=1)
    assert not torch.equal(a[2], other[2])


def test_digits_images_resized_in_unit_range():
    x, y = load_digits_images(32, in_chans=3)
    assert x.shape == (1797, 3, 32, 32) and y.shape == (1797,)
    assert x.min() >= 0 and x.max() <= 1 and torch.equal(x[:, 0], x[:, 2])
    with pytest.raises(ValueError, match="at least 8"):
        load_digits_images(4)


@pytest.mark.parametrize("normalize, lo, hi", [("signed", -1.0, 1.0), ("none", 0.0, 1.0)])
def test_digits_for_generation_ranges_and_labels(normalize, lo, hi):
    dm = DigitsDataModule(img_size=16, batch_size=32, normalize=normalize, augment=Augment(enabled=False))
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 16, 16) and y.dtype == torch.long
    assert x.min() >= lo - 1e-6 and x.max() <= hi + 1e-6
    assert x.min() < lo + 0.05 and x.max() > hi - 0.05  # the range is used, not just inside it
    assert dm.num_classes == 10 and dm.class_names[3] == "3"


def test_digits_standard_normalisation_uses_train_statistics():
    dm = DigitsDataModule(img_size=16, augment=Augment(enabled=False))
    dm.setup()
    x = torch.stack([dm.train_set[i][0] for i in range(len(dm.train_set))])
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-3
    assert dm.preprocess()["mean"] == pytest.approx(list(dm.mean))


# ------------------------------------------------------------------------ image folder


def _write(path, mode="RGB", size=(20, 14), fmt=None, value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0], 3) if mode == "RGB" else (size[1], size[0]), value, dtype=np.uint8)
    Image.fromarray(arr, mode).save(path, format=fmt)


def _tree(root):
    _write(root / "cat" / "a.png")
    _write(root / "cat" / "b.jpg", fmt="JPEG")
    _write(root / "dog" / "c.webp", fmt="WEBP")
    _write(root / "dog" / "d.png", mode="L")
    (root / "dog" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_reads_formats_and_modes(tmp_path):
    ds = ImageFolder(_tree(tmp_path / "data"), img_size=16, in_chans=3)
    assert ds.classes == ["cat", "dog"] and len(ds) == 4
    assert ds.labels.tolist() == [0, 0, 1, 1]
    for i in range(4):
        x, y = ds[i]
        assert x.shape == (3, 16, 16) and 0 <= x.min() and x.max() <= 1
    gray = ImageFolder(tmp_path / "data", img_size=8, in_chans=1)
    assert gray[0][0].shape == (1, 8, 8)
    assert load_image(tmp_path / "data" / "cat" / "a.png", 3)[0, 0, 0].item() == pytest.approx(128 / 255)


def test_image_folder_corrupt_file_stop_names_path(tmp_path):
    root = _tree(tmp_path / "data")
    bad = root / "cat" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.raises(CorruptImageError, match="broken.png"):
        ImageFolder(root, img_size=16)


def test_image_folder_corrupt_file_skip_counts(tmp_path, caplog):
    root = _tree(tmp_path / "data")
    (root / "cat" / "broken.jpg").write_bytes(b"garbage")
    ds = ImageFolder(root, img_size=16, on_error="skip")
    assert len(ds) == 4 and [p.name for p in ds.skipped] == ["broken.jpg"]
    assert "skipped 1 unreadable" in caplog.text
    dm = ImageFolderDataModule(root, img_size=16, batch_size=2, num_workers=0, on_error="skip", val_fraction=0.25)
    dm.setup("fit")
    assert dm.skipped >= 1 and dm.num_classes == 2


def test_image_folder_empty_or_classless_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class subfolders"):
        ImageFolder(tmp_path / "empty")
    (tmp_path / "noimg" / "a").mkdir(parents=True)
    (tmp_path / "noimg" / "a" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="no images"):
        ImageFolderDataModule(tmp_path / "noimg").setup("fit")
    with pytest.raises(ValueError, match="does not exist"):
        ImageFolder(tmp_path / "missing")


def test_image_folder_datamodule_train_val_layout(tmp_path):
    _tree(tmp_path / "d" / "train")
    _tree(tmp_path / "d" / "val")
    dm = ImageFolderDataModule(tmp_path / "d", img_size=16, batch_size=2, num_workers=0)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 3, 16, 16)
    assert len(dm.val_set) == 4 and dm.test_set is dm.val_set


# -------------------------------------------------------------------------- transforms


def test_transforms_shapes_ranges_and_seeding():
    img = torch.rand(3, 24, 40)
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    crop = RandomResizedCrop(16, scale=(0.2, 1.0))
    out = crop(img, g(0))
    assert out.shape == (3, 16, 16) and out.min() >= 0 and out.max() <= 1
    assert torch.equal(crop(img, g(1)), crop(img, g(1)))
    assert not torch.equal(crop(img, g(1)), crop(img, g(2)))
    assert torch.equal(RandomHorizontalFlip(1.0)(img, g(0)), img.flip(-1))
    assert torch.equal(RandomHorizontalFlip(0.0)(img, g(0)), img)
    jit = ColorJitter(0.5, 0.5, 0.5)(img, g(0))
    assert jit.shape == img.shape and jit.min() >= 0 and jit.max() <= 1 and not torch.equal(jit, img)
    assert ColorJitter(0.4, 0.4, 0.4)(torch.rand(1, 8, 8), g(0)).shape == (1, 8, 8)
    n = Normalize([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])(img)
    assert torch.allclose(n, (img - 0.5) / 0.25)
    with pytest.raises(ValueError, match="scale"):
        RandomResizedCrop(16, scale=(0.5, 0.1))
    shifted = RandomTranslate(3)(img, g(4))
    assert shifted.shape == img.shape
    dy, dx = next((a, b) for a in range(-3, 4) for b in range(-3, 4)
                  if torch.equal(shifted[:, 3:-3, 3:-3], img[:, 3 + a : 21 + a, 3 + b : 37 + b]))
    assert (dy, dx) != (0, 0) or torch.equal(shifted, img)


@pytest.mark.parametrize("mixup, cutmix", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixup_cutmix_targets(mixup, cutmix):
    x = torch.rand(6, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    mix = MixupCutmix(10, mixup, cutmix, smoothing=0.1)
    xm, t = mix(x, y, torch.Generator().manual_seed(0))
    assert xm.shape == x.shape and t.shape == (6, 10)
    assert torch.allclose(t.sum(-1), torch.ones(6))
    # sample i is mixed with sample 5 - i only
    assert (t[0, [0, 5]].sum() > 0.9) and t[0, 1:5].max() < 0.02
    xm2, t2 = mix(x, y, torch.Generator().manual_seed(0))
    assert torch.equal(xm, xm2) and torch.equal(t, t2)
    _, plain = MixupCutmix(10)(x, y)
    assert torch.equal(plain.argmax(-1), y)


# ------------------------------------------------------------------- resumable order


def _ds(n=23):
    return TensorImageDataset(torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1), torch.zeros(n))


def test_seeded_sampler_epochs_and_ranks():
    ds = _ds()
    s = SeededSampler(ds, seed=3)
    s.set_epoch(0)
    e0 = [i for i, _ in s]
    s.set_epoch(1)
    e1 = [i for i, _ in s]
    assert sorted(e0) == list(range(23)) and e0 != e1
    s.set_epoch(0)
    assert [i for i, _ in s] == e0
    ranks = [SeededSampler(ds, 2, r, seed=3) for r in (0, 1)]
    parts = [[i for i, _ in r] for r in ranks]
    assert len(parts[0]) == len(parts[1]) == 12 and set(parts[0]) | set(parts[1]) == set(range(23))


def test_resumable_loader_continues_the_epoch():
    ds = _ds()
    def loader():
        return ResumableDataLoader(ds, batch_size=4, sampler=SeededSampler(ds, seed=7), drop_last=True)

    full = loader()
    full.sampler.set_epoch(2)
    ref = [b[0].flatten().tolist() for b in full]
    a = loader()
    a.sampler.set_epoch(2)
    it = iter(a)
    seen = [next(it)[0].flatten().tolist() for _ in range(2)]
    state = a.state_dict()
    assert state == {"epoch": 2, "batches": 2, "batch_size": 4}
    b = loader()
    b.load_state_dict(state)
    assert len(b) == len(ref) - 2
    rest = [x[0].flatten().tolist() for x in b]
    assert seen + rest == ref
    assert len(b) == len(ref)  # the next epoch is whole again
