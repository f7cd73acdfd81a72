"""Data for dense prediction: image + class mask + depth, from folders or a bundled scene generator.

Samples are dicts: `image` (3, H, W) float, `mask` (H, W) int64 class indices
(`ignore_index` where unlabelled), `depth` (H, W) float32 (0 where unknown).
A dataset holds what it has: a folder without depth maps gives no `depth`.

Folders (`DenseFolder`), the layouts users have, e.g. ADE20K's:

    root/images/<split>/NAME.jpg        RGB images (.jpg, .jpeg, .png, .webp)
    root/annotations/<split>/NAME.png   class maps (8-bit, palette or 16-bit), same size
    root/depth/<split>/NAME.png|.npy    16-bit PNG or NumPy depth, divided by `depth_scale`

`<split>` is optional. Masks of another size than their image, classes out of
range and images without a mask are refused by file name.

Scenes (`make_scenes`): handwritten digits from scikit-learn (real 8x8
scans), cut out by their ink and pasted at random positions, scales and depths
over textures (scikit-image's `brick`, `grass` and `gravel` photographs when
it is installed, else procedural ones). Farther objects are smaller and
hazier (scale ~ 1/depth, fog); the background is a ground plane receding
upwards. Painting far to near gives the exact class mask (digit d -> class
1 + its position in `digits`, background 0) and the depth of every pixel.
Seeded per scene: the same call gives the same scenes on every machine.

Joint transforms (`JointRandomScaleCrop`, `JointRandomHorizontalFlip`,
`JointResize`) move image, mask and depth together: bilinear for images,
nearest for masks and depth; padding is `ignore_index` / depth 0.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from tessera.data.base import Augment, ImageDataModule, Normalization
from tessera.data.datasets import IMAGE_SUFFIXES, Key, _split_key, load_image
from tessera.data.transforms import Transform

log = logging.getLogger(__name__)

Sample = dict[str, Tensor]
IGNORE_INDEX = 255


# --------------------------------------------------------------------------- joint transforms


def _uniform(g: torch.Generator | None, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=g).item()


def _resize_sample(s: Sample, size: tuple[int, int]) -> Sample:
    """Image bilinear (antialiased when shrinking), mask and depth nearest."""
    out = dict(s)
    img = s["image"]
    if tuple(img.shape[-2:]) == tuple(size):
        return out
    shrink = img.shape[-2] > size[0] or img.shape[-1] > size[1]
    out["image"] = F.interpolate(img[None], size=size, mode="bilinear", align_corners=False, antialias=shrink)[0]
    if "mask" in s:
        out["mask"] = F.interpolate(s["mask"][None, None].float(), size=size, mode="nearest")[0, 0].long()
    if "depth" in s:
        out["depth"] = F.interpolate(s["depth"][None, None], size=size, mode="nearest")[0, 0]
    return out


class JointResize:
    """Resize image (bilinear), mask and depth (nearest) to `size`."""

    def __init__(self, size: int | tuple[int, int]) -> None:
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def __call__(self, s: Sample, g: torch.Generator | None = None) -> Sample:
        return _resize_sample(s, self.size)


class JointRandomScaleCrop:
    """Rescale by a random factor in `scale`, then a random `size` crop (padded when smaller).

    The usual segmentation augmentation (mmsegmentation's RandomResize + RandomCrop):
    padding is zeros for the image and depth (unknown), `ignore_index` for the mask.
    """

    def __init__(
        self, size: int | tuple[int, int], scale: tuple[float, float] = (0.5, 2.0), ignore_index: int = IGNORE_INDEX
    ) -> None:
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"scale must satisfy 0 < min <= max, got {scale}")
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.scale, self.ignore_index = tuple(scale), ignore_index

    def __call__(self, s: Sample, g: torch.Generator | None = None) -> Sample:
        H, W = s["image"].shape[-2:]
        f = _uniform(g, *self.scale)
        # scale relative to the crop size, so that f = 1 fits the image's short side to the crop
        base = max(self.size[0] / H, self.size[1] / W)
        h, w = max(1, round(H * base * f)), max(1, round(W * base * f))
        s = _resize_sample(s, (h, w))
        ph, pw = max(0, self.size[0] - h), max(0, self.size[1] - w)
        if ph or pw:
            s = dict(s, image=F.pad(s["image"], (0, pw, 0, ph)))
            if "mask" in s:
                s["mask"] = F.pad(s["mask"], (0, pw, 0, ph), value=self.ignore_index)
            if "depth" in s:
                s["depth"] = F.pad(s["depth"], (0, pw, 0, ph))
        h, w = s["image"].shape[-2:]
        top = int(torch.randint(0, h - self.size[0] + 1, (), generator=g))
        left = int(torch.randint(0, w - self.size[1] + 1, (), generator=g))
        return {k: v[..., top : top + self.size[0], left : left + self.size[1]] for k, v in s.items()}


class JointRandomHorizontalFlip:
    """Mirror image, mask and depth together with probability `p`."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, s: Sample, g: torch.Generator | None = None) -> Sample:
        if torch.rand((), generator=g).item() < self.p:
            return {k: v.flip(-1) for k, v in s.items()}
        return s


class JointCompose:
    """Joint transforms in order, then an image-only transform (normalisation) on `image`."""

    def __init__(self, transforms: Sequence[Any], image_transform: Transform | None = None) -> None:
        self.transforms, self.image_transform = list(transforms), image_transform

    def __call__(self, s: Sample, g: torch.Generator | None = None) -> Sample:
        for t in self.transforms:
            s = t(s, g)
        if self.image_transform is not None:
            s = dict(s, image=self.image_transform(s["image"], g))
        return s


class DenseTensorDataset(Dataset):
    """Samples held in tensors (images (N, 3, H, W), masks (N, H, W), depth (N, H, W)), keyed like the others."""

    def __init__(self, tensors: dict[str, Tensor], transform: JointCompose | None = None) -> None:
        n = {len(v) for v in tensors.values()}
        if len(n) != 1 or "image" not in tensors:
            raise ValueError(f"need an 'image' tensor and equally long others, got { {k: tuple(v.shape) for k, v in tensors.items()} }")
        self.tensors, self.transform = tensors, transform

    def __len__(self) -> int:
        return len(self.tensors["image"])

    def __getitem__(self, key: Key) -> Sample:
        index, g = _split_key(key)
        s = {k: v[index] for k, v in self.tensors.items()}
        return self.transform(s, g) if self.transform is not None else s


# --------------------------------------------------------------------------- folders


def _read_mask(path: Path) -> np.ndarray:
    """Class indices of a PNG mask: palette / gray values as they are stored (no colour conversion)."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N"):
            raise ValueError(
                f"mask {str(path)!r} has mode {im.mode!r}; expected a single-channel class map "
                "(8-bit gray or palette, or 16-bit) whose values are class indices"
            )
        return np.asarray(im).astype(np.int64)


def _read_depth(path: Path, scale: float) -> np.ndarray:
    if path.suffix == ".npy":
        d = np.load(path, allow_pickle=False)
    else:
        from PIL import Image

        with Image.open(path) as im:
            d = np.asarray(im)
    if d.ndim != 2:
        raise ValueError(f"depth map {str(path)!r} has shape {d.shape}; expected (H, W)")
    return d.astype(np.float32) / scale


def _image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image or depth file, from its header (NumPy: the array shape)."""
    if path.suffix == ".npy":
        return tuple(np.load(path, mmap_mode="r").shape[:2])  # type: ignore[return-value]
    from PIL import Image

    with Image.open(path) as im:
        return im.size[1], im.size[0]


class DenseFolder(Dataset):
    """Images with class masks and/or depth maps from an ADE20K-style folder.

    Args:
        root: folder with `images/`, and `annotations/` and/or `depth/` beside it.
        split: subfolder of each (e.g. 'training', 'validation'); None if there is none.
        num_classes: classes of the masks (values 0..K-1, plus `ignore_index`);
            None: the largest value found + 1 (every mask is read once).
        ignore_index: mask value of unlabelled pixels (ignored by losses and metrics).
        reduce_labels: ADE20K's convention: 0 means "other" (-> ignore_index), k -> k - 1.
        depth_scale: stored depth value per unit (1000 for millimetre PNGs, 256 for KITTI).
        transform: joint transform applied to every sample.
        verify: 'header' checks sizes from the file headers, 'full' also reads every
            mask for its classes (else a bad mask fails when it is loaded, naming it).

    Raises:
        ValueError: naming the file, for an image without mask or depth map, a
            mask / depth map of another size than its image, or classes out of range.
    """

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        num_classes: int | None = None,
        ignore_index: int = IGNORE_INDEX,
        reduce_labels: bool = False,
        depth_scale: float = 1000.0,
        transform: JointCompose | None = None,
        verify: Literal["header", "full"] = "header",
    ) -> None:
        root = Path(root)
        sub = (lambda d: root / d / split) if split else (lambda d: root / d)
        image_dir, mask_dir, depth_dir = sub("images"), sub("annotations"), sub("depth")
        if not image_dir.is_dir():
            raise ValueError(f"dense folder {str(root)!r}: no image folder {str(image_dir)!r}")
        if not mask_dir.is_dir() and not depth_dir.is_dir():
            raise ValueError(
                f"dense folder {str(root)!r}: expected {str(mask_dir)!r} (class masks) and/or "
                f"{str(depth_dir)!r} (depth maps) beside {str(image_dir)!r}"
            )
        images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise ValueError(f"dense folder {str(image_dir)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        self.samples: list[dict[str, Path]] = []
        for img in images:
            entry = {"image": img}
            if mask_dir.is_dir():
                entry["mask"] = _companion(mask_dir, img, (".png",), "mask")
            if depth_dir.is_dir():
                entry["depth"] = _companion(depth_dir, img, (".png", ".npy"), "depth map")
            for what in ("mask", "depth"):
                if what in entry:
                    a, b = _image_size(img), _image_size(entry[what])
                    if a != b:
                        raise ValueError(
                            f"{what} {str(entry[what])!r} is {b[0]}x{b[1]} but its image {str(img)!r} is {a[0]}x{a[1]}"
                        )
            self.samples.append(entry)
        self.ignore_index, self.reduce_labels = ignore_index, reduce_labels
        self.depth_scale, self.transform = depth_scale, transform
        self.has_mask, self.has_depth = mask_dir.is_dir(), depth_dir.is_dir()
        self.num_classes = num_classes or 0
        if self.has_mask and (num_classes is None or verify == "full"):
            masks = [self._labels(e["mask"], check=False) for e in self.samples]
            if num_classes is None:
                self.num_classes = 1 + max(int(m[m != ignore_index].max(initial=-1)) for m in masks)
            for e in self.samples:
                self._labels(e["mask"])

    def _labels(self, path: Path, check: bool = True) -> np.ndarray:
        """The mask's class indices (after `reduce_labels`); a ValueError naming the file when out of range."""
        m = _read_mask(path)
        if self.reduce_labels:
            m = np.where(m == 0, self.ignore_index, m - 1)
        k = self.num_classes
        valid = m[m != self.ignore_index]
        if check and k and valid.size and (valid.max() >= k or valid.min() < 0):
            bad = np.unique(valid[(valid >= k) | (valid < 0)]).tolist()[:8]
            raise ValueError(
                f"mask {str(path)!r} has class values {bad} outside 0..{k - 1} "
                f"(ignore_index={self.ignore_index}); set num_classes, ignore_index or reduce_labels"
            )
        return m

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: Key) -> Sample:
        index, g = _split_key(key)
        e = self.samples[index]
        s: Sample = {"image": load_image(e["image"], 3)}
        if "mask" in e:
            s["mask"] = torch.from_numpy(self._labels(e["mask"]))
        if "depth" in e:
            s["depth"] = torch.from_numpy(_read_depth(e["depth"], self.depth_scale))
        return self.transform(s, g) if self.transform is not None else s


def _companion(folder: Path, image: Path, suffixes: tuple[str, ...], what: str) -> Path:
    for suffix in suffixes:
        p = folder / (image.stem + suffix)
        if p.is_file():
            return p
    raise ValueError(
        f"image {str(image)!r} has no {what}: expected {' or '.join(str(folder / (image.stem + s)) for s in suffixes)}"
    )


# --------------------------------------------------------------------------- scene generator


def _value_noise(rng: np.random.Generator, size: int, octaves: int = 5) -> np.ndarray:
    """Multi-octave value noise in [0, 1] (procedural "clouds")."""
    out = np.zeros((size, size), np.float32)
    for o in range(octaves):
        n = 2 ** (o + 2)
        coarse = torch.from_numpy(rng.random((1, 1, n, n), dtype=np.float32))
        up = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0, 0].numpy()
        out += up / 2**o
    out -= out.min()
    return out / max(out.max(), 1e-6)


def _procedural_textures(size: int = 256) -> list[np.ndarray]:
    """Four seeded grayscale textures: clouds, bricks, stripes, gravel-like blobs."""
    rng = np.random.default_rng(1234)
    clouds = _value_noise(rng, size)
    y, x = np.mgrid[0:size, 0:size]
    row = y // 16
    bricks = (((x + 16 * (row % 2)) % 32 < 2) | (y % 16 < 2)).astype(np.float32)
    bricks = 0.75 - 0.5 * bricks + 0.2 * (_value_noise(rng, size) - 0.5)
    stripes = 0.5 + 0.4 * np.sin((x + 0.6 * y) / 5.0) + 0.2 * (_value_noise(rng, size) - 0.5)
    blobs = torch.from_numpy(rng.random((1, 1, size // 6, size // 6), dtype=np.float32))
    gravel = F.interpolate(blobs, size=(size, size), mode="nearest")[0, 0].numpy()
    gravel = 0.7 * gravel + 0.3 * _value_noise(rng, size)
    return [np.clip(t, 0, 1).astype(np.float32) for t in (clouds, bricks, stripes, gravel)]


@functools.lru_cache(maxsize=2)
def scene_textures(source: Literal["auto", "procedural"] = "auto") -> tuple[np.ndarray, ...]:
    """Grayscale textures in [0, 1]: scikit-image's brick, grass, gravel photographs when installed.

    'auto' reads the three PNGs scikit-image ships (its package data; nothing is
    downloaded) and falls back to `_procedural_textures` without it.
    """
    if source == "auto":
        spec = importlib.util.find_spec("skimage")
        roots = list(spec.submodule_search_locations or []) if spec is not None else []
        files = [Path(r) / "data" / f"{n}.png" for r in roots[:1] for n in ("brick", "grass", "gravel")]
        if files and all(f.is_file() for f in files):
            from PIL import Image

            out = []
            for f in files:
                with Image.open(f) as im:
                    out.append(np.asarray(im.convert("L"), dtype=np.float32) / 255.0)
            return tuple(out)
        log.info("scikit-image is not installed: scene textures are procedural")
    elif source != "procedural":
        raise ValueError(f"textures must be 'auto' or 'procedural', got {source!r}")
    return tuple(_procedural_textures())


def _texture_patch(rng: np.random.Generator, textures: Sequence[np.ndarray], size: int) -> np.ndarray:
    """A random crop of a random texture, at a random scale, resized to size x size, contrast-stretched."""
    tex = textures[rng.integers(len(textures))]
    side = int(min(tex.shape) * rng.uniform(0.25, 0.6))
    top, left = rng.integers(0, tex.shape[0] - side + 1), rng.integers(0, tex.shape[1] - side + 1)
    crop = torch.from_numpy(np.ascontiguousarray(tex[top : top + side, left : left + side]))[None, None]
    patch = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0, 0]
    patch = patch.numpy()
    lo, hi = np.percentile(patch, (2, 98))
    return np.clip((patch - lo) / max(hi - lo, 1e-3), 0, 1)


@dataclass(frozen=True)
class SceneSpec:
    """What the scene generator draws from.

    Attributes:
        size: side of the square scenes in pixels.
        digits: the digit classes pasted (class 1 + position; background 0).
        objects: (min, max) number of digits per scene.
        depth: (near, far) range of object depths; the ground plane spans (far, horizon).
        horizon: depth at the top row of the background.
        textures: 'auto' (scikit-image's photographs if installed) or 'procedural'.
    """

    size: int = 64
    digits: tuple[int, ...] = tuple(range(10))
    objects: tuple[int, int] = (2, 4)
    depth: tuple[float, float] = (2.0, 6.0)
    horizon: float = 10.0
    textures: Literal["auto", "procedural"] = "auto"

    def __post_init__(self) -> None:
        if self.size < 16:
            raise ValueError(f"size must be at least 16 px, got {self.size}")
        if not self.digits or any(d not in range(10) for d in self.digits) or len(set(self.digits)) != len(self.digits):
            raise ValueError(f"digits must be distinct values in 0..9, got {self.digits}")
        if not 1 <= self.objects[0] <= self.objects[1]:
            raise ValueError(f"objects must be (min, max) with 1 <= min <= max, got {self.objects}")
        if not 0 < self.depth[0] < self.depth[1] < self.horizon:
            raise ValueError(f"need 0 < near < far < horizon, got depth={self.depth}, horizon={self.horizon}")

    @property
    def num_classes(self) -> int:
        return len(self.digits) + 1

    @property
    def class_names(self) -> list[str]:
        return ["background"] + [str(d) for d in self.digits]


def _fog(rgb: np.ndarray, depth: np.ndarray | float, horizon: float) -> np.ndarray:
    """Atmospheric haze: blend towards light gray with the depth (a monocular depth cue)."""
    f = 0.65 * np.clip(np.asarray(depth, np.float32) / horizon, 0, 1)
    f = f[..., None] if np.ndim(f) == 2 else f
    return rgb * (1 - f) + 0.8 * f


def render_scene(
    spec: SceneSpec, rng: np.random.Generator, digit_images: np.ndarray, digit_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One scene: image (S, S, 3) in [0, 1], class mask (S, S) int64, depth (S, S) float32.

    Args:
        spec: the generator's settings.
        rng: this scene's generator.
        digit_images: (N, 8, 8) digits in [0, 1] to draw from (one split's).
        digit_labels: (N,) their digit values.
    """
    S, textures = spec.size, scene_textures(spec.textures)
    near, far = spec.depth
    # Ground plane: the bottom row at `far`, receding to the horizon at the top.
    rows = np.linspace(spec.horizon, far, S, dtype=np.float32)
    depth = np.repeat(rows[:, None], S, axis=1)
    color = rng.uniform(0.25, 1.0, 3).astype(np.float32)
    image = _fog(_texture_patch(rng, textures, S)[..., None] * color, depth, spec.horizon)
    mask = np.zeros((S, S), np.int64)
    allowed = np.flatnonzero(np.isin(digit_labels, spec.digits))
    n = int(rng.integers(spec.objects[0], spec.objects[1] + 1))
    for d in np.sort(rng.uniform(near, far, n))[::-1]:  # painter's order: far to near
        i = allowed[rng.integers(len(allowed))]
        cls = spec.digits.index(int(digit_labels[i])) + 1
        side = int(round(S * 0.6 * near / d))  # perspective: size ~ 1 / depth
        up = F.interpolate(
            torch.from_numpy(digit_images[i])[None, None], size=(side, side), mode="bilinear", align_corners=False
        )[0, 0].numpy()
        alpha = up > 0.35  # the digit cut out by its ink
        top = int(rng.integers(-side // 4, S - 3 * side // 4 + 1))
        left = int(rng.integers(-side // 4, S - 3 * side // 4 + 1))
        ys, xs = slice(max(top, 0), min(top + side, S)), slice(max(left, 0), min(left + side, S))
        a = alpha[ys.start - top : ys.stop - top, xs.start - left : xs.stop - left]
        tint = rng.uniform(0.25, 1.0, 3).astype(np.float32)
        look = _fog(_texture_patch(rng, textures, side)[..., None] * tint, d, spec.horizon)
        look = look[ys.start - top : ys.stop - top, xs.start - left : xs.stop - left]
        image[ys, xs][a] = look[a]
        mask[ys, xs][a] = cls
        depth[ys, xs][a] = d
    return np.clip(image, 0, 1).astype(np.float32), mask, depth.astype(np.float32)


def make_scenes(
    n: int, spec: SceneSpec = SceneSpec(), seed: int = 0, split: Literal["train", "val", "test"] = "train"
) -> dict[str, Tensor]:
    """`n` seeded scenes: {'image': (n, 3, S, S), 'mask': (n, S, S) int64, 'depth': (n, S, S)}.

    Each split pastes its own digit scans (scikit-learn's digits split 70/10/20,
    stratified, fixed), so test scenes hold digits no training scene showed.
    Scene i of (seed, split) is the same on every call and machine.
    """
    from tessera.data.digits import digits_split, load_digits_images

    images, labels = load_digits_images(8, 1)
    parts = dict(zip(("train", "val", "test"), digits_split(labels, 0.1, 0.2, seed=0)))
    if split not in parts:
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    idx = parts[split]
    pool, pool_labels = images[idx, 0].numpy(), labels[idx].numpy()
    split_id = ("train", "val", "test").index(split)
    out = [render_scene(spec, np.random.default_rng([seed, split_id, i]), pool, pool_labels) for i in range(n)]
    return {
        "image": torch.from_numpy(np.stack([o[0] for o in out])).permute(0, 3, 1, 2).contiguous(),
        "mask": torch.from_numpy(np.stack([o[1] for o in out])),
        "depth": torch.from_numpy(np.stack([o[2] for o in out])),
    }


# --------------------------------------------------------------------------- DataModules


class _DenseDataModule(ImageDataModule):
    """Joint transforms on top of the image DataModule's loaders, seeds and normalisation."""

    def __init__(
        self, img_size: int, batch_size: int, num_workers: int, seed: int | None,
        scale: tuple[float, float], hflip: float, normalize: Normalization, ignore_index: int,
    ) -> None:
        super().__init__(img_size, 3, batch_size, num_workers, seed, Augment(enabled=False), normalize)
        self.scale, self.hflip, self.ignore_index = tuple(scale), hflip, ignore_index
        self.has_mask, self.has_depth = True, True

    def joint_train_transform(self) -> JointCompose:
        steps: list[Any] = []
        if self.scale != (1.0, 1.0):
            steps.append(JointRandomScaleCrop(self.img_size, self.scale, self.ignore_index))
        else:
            steps.append(JointResize(self.img_size))
        if self.hflip > 0:
            steps.append(JointRandomHorizontalFlip(self.hflip))
        return JointCompose(steps, self.eval_transform())

    def joint_eval_transform(self) -> JointCompose:
        return JointCompose([JointResize(self.img_size)], self.eval_transform())


class SceneDataModule(_DenseDataModule):
    """The bundled digit scenes (segmentation masks and depth), generated in a few seconds.

    Args:
        img_size: scene side in pixels.
        n_train, n_val, n_test: scenes per split (each split pastes its own digit scans).
        digits: digit classes used (class 1 + position; background 0).
        objects: (min, max) digits per scene.
        depth: (near, far) depth range of the digits (size ~ 1 / depth; the ground recedes from far to 10).
        textures: 'auto' (scikit-image's photographs when installed) or 'procedural'.
        scene_seed: seed of the scenes themselves (keep fixed across runs).
        batch_size, num_workers, seed: as every tessera DataModule.
        scale: random rescale range of training crops ((1, 1): off).
        hflip: probability of a horizontal flip (digits are not symmetric: off by default).
        normalize: 'standard' (ImageNet mean/std), 'signed' or 'none'.
    """

    def __init__(
        self,
        img_size: int = 64,
        n_train: int = 2000,
        n_val: int = 200,
        n_test: int = 400,
        digits: tuple[int, ...] = tuple(range(10)),
        objects: tuple[int, int] = (2, 4),
        depth: tuple[float, float] = (2.0, 6.0),
        textures: Literal["auto", "procedural"] = "auto",
        scene_seed: int = 0,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int | None = None,
        scale: tuple[float, float] = (0.75, 1.5),
        hflip: float = 0.0,
        normalize: Normalization = "standard",
    ) -> None:
        super().__init__(img_size, batch_size, num_workers, seed, scale, hflip, normalize, IGNORE_INDEX)
        self.spec = SceneSpec(
            size=img_size, digits=tuple(digits), objects=tuple(objects), depth=tuple(depth), textures=textures
        )
        self.n = {"train": n_train, "val": n_val, "test": n_test}
        self.scene_seed = scene_seed
        self.class_names = self.spec.class_names

    def setup(self, stage: str | None = None) -> None:
        """Render the three splits (once)."""
        if self.test_set is not None:
            return
        sets = {s: make_scenes(n, self.spec, self.scene_seed, s) for s, n in self.n.items()}  # type: ignore[arg-type]
        self.train_set = DenseTensorDataset(sets["train"], self.joint_train_transform())
        self.val_set = DenseTensorDataset(sets["val"], self.joint_eval_transform())
        self.test_set = DenseTensorDataset(sets["test"], self.joint_eval_transform())


class DenseFolderDataModule(_DenseDataModule):
    """An ADE20K-style folder (see `DenseFolder`) as a LightningDataModule.

    Args:
        root: the folder (`images/`, `annotations/`, `depth/`).
        train_split, val_split, test_split: subfolder names (None: no such split;
            without a val split the training images are validated on, without a
            test split the validation images are tested on).
        num_classes: mask classes (None: read from the masks).
        ignore_index, reduce_labels, depth_scale: as `DenseFolder`.
        img_size: training crop side; evaluation resizes to it.
        scale, hflip: training augmentation.
    """

    def __init__(
        self,
        root: str,
        train_split: str | None = "training",
        val_split: str | None = "validation",
        test_split: str | None = None,
        num_classes: int | None = None,
        ignore_index: int = IGNORE_INDEX,
        reduce_labels: bool = False,
        depth_scale: float = 1000.0,
        img_size: int = 512,
        batch_size: int = 8,
        num_workers: int = 0,
        seed: int | None = None,
        scale: tuple[float, float] = (0.5, 2.0),
        hflip: float = 0.5,
        normalize: Normalization = "standard",
    ) -> None:
        super().__init__(img_size, batch_size, num_workers, seed, scale, hflip, normalize, ignore_index)
        self.root, self.splits = root, (train_split, val_split, test_split)
        self.folder_args = dict(ignore_index=ignore_index, reduce_labels=reduce_labels, depth_scale=depth_scale)
        self._num_classes = num_classes

    def setup(self, stage: str | None = None) -> None:
        """Scan the folders (sizes checked from the headers)."""
        if self.train_set is not None:
            return
        train, val, test = self.splits
        self.train_set = DenseFolder(
            self.root, train, self._num_classes, transform=self.joint_train_transform(), **self.folder_args
        )
        k = self.train_set.num_classes
        self.has_mask, self.has_depth = self.train_set.has_mask, self.train_set.has_depth
        self.class_names = [str(i) for i in range(k)]
        make = lambda s: DenseFolder(self.root, s, k, transform=self.joint_eval_transform(), **self.folder_args)  # noqa: E731
        self.val_set = make(val) if val else make(train)
        self.test_set = make(test) if test else self.val_set
