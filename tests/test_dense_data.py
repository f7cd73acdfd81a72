"""Dense data: the seeded scene generator, ADE20K-style folders and their checks, joint transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tessera.data.dense import (
    DenseFolder,
    DenseFolderDataModule,
    JointRandomHorizontalFlip,
    JointRandomScaleCrop,
    JointResize,
    SceneDataModule,
    SceneSpec,
    make_scenes,
    scene_textures,
)

SPEC = SceneSpec(size=32, digits=(0, 1, 7), objects=(2, 3), textures="procedural")


# ------------------------------------------------------------------ scenes


def test_scenes_are_seeded_and_reproducible():
    a, b = make_scenes(4, SPEC, seed=1), make_scenes(4, SPEC, seed=1)
    for k in ("image", "mask", "depth"):
        assert torch.equal(a[k], b[k])
    c = make_scenes(4, SPEC, seed=2)
    assert not torch.equal(a["image"], c["image"])
    # scene i does not depend on how many are drawn
    assert torch.equal(make_scenes(2, SPEC, seed=1)["mask"], a["mask"][:2])


def test_scene_masks_and_depth_are_consistent():
    s = make_scenes(8, SPEC, seed=0, split="test")
    img, mask, depth = s["image"], s["mask"], s["depth"]
    assert img.shape == (8, 3, 32, 32) and mask.shape == depth.shape == (8, 32, 32)
    assert 0 <= img.min() and img.max() <= 1 and mask.dtype == torch.int64
    assert set(mask.unique().tolist()) <= {0, 1, 2, 3} and (mask > 0).any()
    near, far = SPEC.depth
    objects, background = depth[mask > 0], depth[mask == 0]
    assert (objects >= near).all() and (objects <= far).all()  # object pixels carry their layer's depth
    assert (background >= far - 1e-5).all() and (background <= SPEC.horizon + 1e-5).all()
    # each object's pixels share one depth (a layer), and every digit depth is nearer than the ground
    for i in range(8):
        for cls in mask[i].unique().tolist():
            if cls:
                assert depth[i][mask[i] == cls].unique().numel() <= SPEC.objects[1]


def test_scene_spec_checks_its_fields():
    with pytest.raises(ValueError, match="digits"):
        SceneSpec(digits=(1, 1))
    with pytest.raises(ValueError, match="near < far < horizon"):
        SceneSpec(depth=(5.0, 3.0))
    with pytest.raises(ValueError, match="split"):
        make_scenes(1, SPEC, split="train2")  # type: ignore[arg-type]


def test_procedural_textures_need_no_scikit_image():
    textures = scene_textures("procedural")
    assert len(textures) == 4 and all(t.min() >= 0 and t.max() <= 1 and t.std() > 0.05 for t in textures)


def test_scene_datamodule_batches_are_dicts_of_image_mask_depth():
    dm = SceneDataModule(img_size=32, n_train=8, n_val=4, n_test=4, digits=(0, 1), textures="procedural",
                         batch_size=4, seed=0)
    dm.setup("fit")
    assert dm.num_classes == 3 and dm.class_names == ["background", "0", "1"]
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["mask"].shape == batch["depth"].shape == (4, 32, 32)
    again = next(iter(dm.train_dataloader()))
    assert torch.equal(batch["image"], again["image"])  # order and augmentation are seeded


# ------------------------------------------------------------------ joint transforms


def _sample(h: int = 12, w: int = 16) -> dict:
    g = torch.Generator().manual_seed(0)
    mask = torch.randint(0, 4, (h, w), generator=g)
    return {"image": mask[None].float().expand(3, -1, -1) / 4, "mask": mask, "depth": mask.float() + 1}


def test_joint_transforms_move_image_mask_and_depth_together():
    s = _sample()
    flipped = JointRandomHorizontalFlip(1.0)(s)
    assert torch.equal(flipped["mask"], s["mask"].flip(-1)) and torch.equal(flipped["depth"], s["depth"].flip(-1))
    resized = JointResize((24, 32))(s)
    assert resized["mask"].dtype == torch.int64
    assert set(resized["mask"].unique().tolist()) <= set(s["mask"].unique().tolist())  # nearest: no new classes
    crop = JointRandomScaleCrop(10, scale=(0.5, 1.5), ignore_index=255)
    for seed in range(5):
        out = crop(s, torch.Generator().manual_seed(seed))
        assert out["image"].shape == (3, 10, 10) and out["mask"].shape == out["depth"].shape == (10, 10)
        labelled = out["mask"] != 255
        # where labelled, depth is still mask + 1: the three moved as one
        assert torch.equal(out["depth"][labelled], out["mask"][labelled].float() + 1)
        assert (out["depth"][~labelled] == 0).all()  # padding: ignore_index / unknown depth


# ------------------------------------------------------------------ folders


def _folder(root, n: int = 3, split: str = "training", size=(20, 24), classes: int = 4, depth: bool = True):
    rng = np.random.default_rng(0)
    for d in ("images", "annotations", "depth"):
        (root / d / split).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / "images" / split / f"{i}.jpg")
        Image.fromarray(rng.integers(0, classes, size, dtype=np.uint8)).save(root / "annotations" / split / f"{i}.png")
        if depth:
            mm = rng.integers(500, 5000, size).astype(np.uint16)
            Image.fromarray(mm).save(root / "depth" / split / f"{i}.png")
    return root


def test_dense_folder_reads_masks_and_16_bit_depth(tmp_path):
    root = _folder(tmp_path)
    ds = DenseFolder(root, "training", num_classes=4, depth_scale=1000.0)
    s = ds[0]
    assert s["image"].shape == (3, 20, 24) and s["mask"].shape == (20, 24) and s["depth"].shape == (20, 24)
    assert s["mask"].max() < 4 and 0.5 <= s["depth"].min() and s["depth"].max() < 5.0  # millimetres -> metres
    assert DenseFolder(root, "training").num_classes == 4  # read from the masks


def test_dense_folder_reduce_labels_and_npy_depth(tmp_path):
    root = _folder(tmp_path, depth=False)
    (root / "depth" / "training").mkdir(exist_ok=True)
    for i in range(3):
        np.save(root / "depth" / "training" / f"{i}.npy", np.full((20, 24), 2.5, np.float32))
    ds = DenseFolder(root, "training", num_classes=3, reduce_labels=True, depth_scale=1.0)
    s = ds[1]
    raw = np.asarray(Image.open(root / "annotations" / "training" / "1.png")).astype(np.int64)
    assert torch.equal(s["mask"], torch.from_numpy(np.where(raw == 0, 255, raw - 1)))
    assert torch.equal(s["depth"], torch.full((20, 24), 2.5))


def test_dense_folder_errors_name_the_file(tmp_path):
    root = _folder(tmp_path)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "annotations" / "training" / "1.png")
    with pytest.raises(ValueError, match=r"1\.png.*10x10.*20x24"):
        DenseFolder(root, "training", num_classes=4)
    root2 = _folder(tmp_path / "b")
    Image.fromarray(np.full((20, 24), 9, np.uint8)).save(root2 / "annotations" / "training" / "2.png")
    with pytest.raises(ValueError, match=r"2\.png.*\[9\].*0\.\.3"):
        DenseFolder(root2, "training", num_classes=4, verify="full")
    ds = DenseFolder(root2, "training", num_classes=4)  # header checks only: fails when loaded, by name
    with pytest.raises(ValueError, match=r"2\.png"):
        ds[2]
    root3 = _folder(tmp_path / "c")
    (root3 / "annotations" / "training" / "0.png").unlink()
    with pytest.raises(ValueError, match=r"0\.jpg.*no mask"):
        DenseFolder(root3, "training")
    with pytest.raises(ValueError, match="no image folder"):
        DenseFolder(tmp_path / "missing")


def test_dense_folder_datamodule(tmp_path):
    root = _folder(tmp_path, n=4)
    dm = DenseFolderDataModule(str(root), val_split=None, img_size=16, batch_size=2, seed=0)
    dm.setup("fit")
    assert dm.num_classes == 4 and dm.has_depth
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 16, 16) and batch["mask"].shape == (2, 16, 16)
    val = next(iter(dm.val_dataloader()))
    assert val["depth"].shape == (2, 16, 16)
