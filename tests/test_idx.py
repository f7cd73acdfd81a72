"""IDX (MNIST-format) files and the DataModule over them, on small files the tests write."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tessera.data.idx import IDXDataModule, read_idx, write_idx


def write_split(folder, split, n, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    suffix = ".gz" if gz else ""
    write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", images)
    write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", labels)
    return images, labels


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trip(tmp_path, gz):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / ("x-idx3-ubyte" + (".gz" if gz else "")), a)
    assert np.array_equal(read_idx(path), a)
    raw = path.read_bytes() if not gz else None
    if raw is not None:  # header by hand: 0 0 8 3, then 2, 3, 4 as big-endian int32
        assert raw[:16] == bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4])


def test_corrupt_files_are_named(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    path = write_idx(tmp_path / "short", np.zeros((4, 2), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(path)


def test_datamodule_pads_to_32_splits_and_normalises(tmp_path):
    images, labels = write_split(tmp_path, "train", 30)
    write_split(tmp_path, "t10k", 10, gz=False, seed=1)
    dm = IDXDataModule(root=str(tmp_path), batch_size=4, val_size=6, normalize="signed")
    dm.setup("fit")
    assert len(dm.train_set) == 24 and len(dm.val_set) == 6 and len(dm.test_set) == 10
    x, y = dm.val_set[0]
    assert x.shape == (1, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert torch.all(x[:, :2] == -1) and torch.all(x[:, :, -2:] == -1)  # 2-pixel zero border -> -1
    # the centre is the stored image, mapped to [-1, 1]
    all_imgs = torch.from_numpy(images.astype(np.float32) / 255 * 2 - 1)
    assert any(torch.allclose(x[0, 2:30, 2:30], img) for img in all_imgs)
    batch = next(iter(dm.train_dataloader()))
    assert batch[0].shape == (4, 1, 32, 32) and dm.num_classes == 10 and dm.class_names[0] == "T-shirt/top"


def test_missing_files_say_how_to_get_them(tmp_path):
    dm = IDXDataModule(root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        dm.setup("fit")


def test_fashion_captions_split_like_the_idx_module_and_caption_each_class(tmp_path):
    from tessera.data import FashionCaptionsDataModule, fashion_caption

    write_split(tmp_path, "train", 40)
    write_split(tmp_path, "t10k", 12, seed=1)
    dm = FashionCaptionsDataModule(root=str(tmp_path), batch_size=4, val_size=8, vocab_size=300)
    dm.setup("fit")
    plain = IDXDataModule(root=str(tmp_path), val_size=8, normalize="signed")
    plain.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (32, 8, 12)
    # the same images in the same order as IDXDataModule's split (same split_seed)
    torch.testing.assert_close(dm.train_set.images, plain.train_set.images)
    torch.testing.assert_close(dm.test_set.labels, plain.test_set.labels)
    assert fashion_caption(9) == "a picture of an ankle boot" and fashion_caption(7) == "a picture of a sneaker"
    assert dm.class_prompts == [fashion_caption(i) for i in range(10)]
    assert dm.test_captions == [fashion_caption(int(c)) for c in plain.test_set.labels]
    x, tokens, y = next(iter(dm.test_dataloader()))
    assert x.shape == (4, 1, 32, 32) and tokens.shape == (4, dm.context_length)
    assert dm.tokenizer.decode(tokens[0]) == fashion_caption(int(y[0]))
    with pytest.raises(ValueError, match="val_size"):
        FashionCaptionsDataModule(root=str(tmp_path), val_size=40).setup("fit")
