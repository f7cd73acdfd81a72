"""Image-caption pairs that ship in packages: captioned digits and named colour emoji.

- Digits: scikit-learn's 1,797 handwritten digits captioned "a handwritten seven"
  (seconds-fast check of a captioner).
- Emoji: Debian's `fonts-noto-color-emoji` drawn with Pillow (the bitmap font only
  loads at size 109), named by `emoji-test.txt` of Debian's `unicode-data`
  ("grinning face with big eyes", group "Smileys & Emotion", subgroup
  "face-smiling"). Fully-qualified emoji of the 9 groups other than "Component";
  skin-tone variants are left out by default (1,870 images at Unicode 15.0).
  Rendered once and cached as a tensor file. The split is fixed by a seed and
  keeps at least one emoji of every subgroup in train.

A batch is `(images (B, C, H, W), tokens (B, L), labels (B,))`: tokens are
`[BOS] caption [EOS] [PAD]...` from a `TextTokenizer` trained on the training
captions; labels are the digit / the emoji group (or subgroup). With
`with_captions=False` a batch is `(images, labels)`, so the same DataModule
feeds stage-1 encoder pre-training by classification.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from tessera.data.base import Augment, ImageDataModule, Normalization
from tessera.data.datasets import Key, _split_key
from tessera.data.digits import DIGITS_AUGMENT, digits_split, load_digits_images
from tessera.data.text import TextTokenizer
from tessera.data.transforms import Transform

log = logging.getLogger(__name__)

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
EMOJI_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
EMOJI_TEST = "/usr/share/unicode/emoji/emoji-test.txt"
EMOJI_FONT_SIZE = 109  # the only size the CBDT bitmap strikes of Noto Color Emoji load at
INSTALL_HINT = (
    "install the Debian packages with `apt-get update && apt-get install -y fonts-noto-color-emoji "
    "unicode-data` (or pass font_path / emoji_test_path)"
)
# Emoji names say left and right ("backhand index pointing left"): never flip.
EMOJI_AUGMENT = Augment(crop_scale=(0.8, 1.0), crop_ratio=(0.9, 1.1), translate=2, hflip=0.0, color_jitter=0.0)


def digit_caption(label: int) -> str:
    """'a handwritten seven' for 7."""
    return f"a handwritten {DIGIT_WORDS[label]}"


# ------------------------------------------------------------------ emoji


@dataclass(frozen=True)
class Emoji:
    """One line of emoji-test.txt."""

    char: str
    name: str
    group: str
    subgroup: str


def parse_emoji_test(path: str | Path = EMOJI_TEST, skin_tones: bool = False) -> list[Emoji]:
    """Fully-qualified emoji with name, group and subgroup, the 'Component' group left out.

    Args:
        path: emoji-test.txt (`dpkg -L unicode-data` shows where).
        skin_tones: keep the variants whose name has "skin tone".
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"emoji-test.txt not found at {str(path)!r}; {INSTALL_HINT}")
    out: list[Emoji] = []
    group = subgroup = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif line and not line.startswith("#") and "; fully-qualified" in line:
            # 1F603 ; fully-qualified # 😃 E0.6 grinning face with big eyes
            comment = line.split("#", 1)[1].strip()
            char, _version, name = comment.split(" ", 2)
            if group == "Component" or (not skin_tones and "skin tone" in name):
                continue
            out.append(Emoji(char, name, group, subgroup))
    if not out:
        raise ValueError(f"no fully-qualified emoji found in {str(path)!r}: not an emoji-test.txt?")
    return out


def render_emoji(emoji: Sequence[Emoji], img_size: int, font_path: str | Path = EMOJI_FONT) -> Tensor:
    """Draw each emoji on white with Pillow and resize: uint8 (N, 3, img_size, img_size)."""
    from PIL import Image, ImageDraw, ImageFont

    if not Path(font_path).is_file():
        raise FileNotFoundError(f"emoji font not found at {str(font_path)!r}; {INSTALL_HINT}")
    font = ImageFont.truetype(str(font_path), EMOJI_FONT_SIZE)
    out = np.empty((len(emoji), img_size, img_size, 3), dtype=np.uint8)
    for i, e in enumerate(emoji):
        left, top, right, bottom = font.getbbox(e.char)  # one 136 x 128 bitmap cell
        side = max(right - left, bottom - top)
        canvas = Image.new("RGBA", (side, side), (255, 255, 255, 0))
        ImageDraw.Draw(canvas).text(
            ((side - (right - left)) // 2 - left, (side - (bottom - top)) // 2 - top), e.char, font=font,
            embedded_color=True,
        )
        white = Image.new("RGBA", canvas.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, canvas).convert("RGB").resize((img_size, img_size), Image.LANCZOS)
        out[i] = np.asarray(img)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def default_cache_dir() -> Path:
    """$TESSERA_CACHE, else $XDG_CACHE_HOME/tessera, else ~/.cache/tessera."""
    if "TESSERA_CACHE" in os.environ:
        return Path(os.environ["TESSERA_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tessera"


def load_emoji(
    img_size: int = 32,
    skin_tones: bool = False,
    font_path: str | Path = EMOJI_FONT,
    emoji_test_path: str | Path = EMOJI_TEST,
    cache_dir: str | Path | None = None,
) -> tuple[Tensor, list[Emoji]]:
    """Emoji images (N, 3, img_size, img_size) float in [0, 1] and their entries, rendered once and cached.

    The cache file's name hashes the font and the list, so a new font or
    Unicode version renders again.
    """
    entries = parse_emoji_test(emoji_test_path, skin_tones)
    if not Path(font_path).is_file():
        raise FileNotFoundError(f"emoji font not found at {str(font_path)!r}; {INSTALL_HINT}")
    st = Path(font_path).stat()
    key = hashlib.sha1(
        f"{st.st_size}:{int(st.st_mtime)}:{img_size}:{''.join(e.char for e in entries)}".encode()
    ).hexdigest()[:16]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    file = cache / f"emoji_{img_size}px_{len(entries)}_{key}.pt"
    if file.is_file():
        images = torch.load(file, weights_only=True)
    else:
        images = render_emoji(entries, img_size, font_path)
        cache.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(file.name + ".tmp")
        torch.save(images, tmp)
        tmp.replace(file)
        log.info("rendered %d emoji to %s", len(entries), file)
    return images.float() / 255.0, entries


def subgroup_split(
    groups: Sequence[int], val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Disjoint train/val/test indices, split within each group, at least one of every group in train."""
    if not (0 < test_fraction < 1 and 0 <= val_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"need 0 < test_fraction, 0 <= val_fraction, sum < 1; got {val_fraction}, {test_fraction}")
    rng = np.random.default_rng(seed)
    groups = np.asarray(groups)
    split: tuple[list[int], list[int], list[int]] = ([], [], [])
    for g in np.unique(groups):
        idx = rng.permutation(np.flatnonzero(groups == g))
        n = len(idx)
        n_test = int(n * test_fraction)
        n_val = int(n * val_fraction)
        if n - n_test - n_val < 1:  # a subgroup of 1-2 emoji: keep one in train
            n_test = min(n_test, n - 1)
            n_val = min(n_val, n - 1 - n_test)
        split[2].extend(idx[:n_test])
        split[1].extend(idx[n_test : n_test + n_val])
        split[0].extend(idx[n_test + n_val :])
    return tuple(torch.from_numpy(np.sort(np.asarray(s, dtype=np.int64))) for s in split)  # type: ignore[return-value]


# ------------------------------------------------------------------ datasets


class CaptionDataset(Dataset):
    """Images (N, C, H, W) in [0, 1], token rows (N, L), labels (N,), with a per-image transform.

    Keys are an index or an `(index, sample_seed)` pair (seeded augmentation), as in TensorImageDataset.
    """

    def __init__(
        self,
        images: Tensor,
        tokens: Tensor | None,
        labels: Tensor,
        transform: Transform | None = None,
        captions: Sequence[str] = (),
    ) -> None:
        if images.ndim != 4 or len(images) != len(labels) or (tokens is not None and len(tokens) != len(images)):
            raise ValueError(
                f"expected images (N, C, H, W), tokens (N, L), labels (N,) of one length, got "
                f"{tuple(images.shape)}, {None if tokens is None else tuple(tokens.shape)}, {tuple(labels.shape)}"
            )
        self.images, self.tokens, self.labels = images, tokens, labels.long()
        self.transform, self.captions = transform, list(captions)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: Key) -> tuple[Tensor, ...]:
        index, g = _split_key(key)
        img = self.images[index]
        if self.transform is not None:
            img = self.transform(img, g)
        if self.tokens is None:
            return img, self.labels[index]
        return img, self.tokens[index], self.labels[index]


class CaptionDataModule(ImageDataModule):
    """Base of the caption DataModules: trains (or loads) the tokenizer, encodes the captions.

    Subclasses implement `load()` -> (images (N, C, H, W) in [0, 1], captions, labels,
    split groups, class names, prompt template) and the split.
    Attributes after `setup`: `tokenizer`, `class_names`, `class_prompts`
    (zero-shot prompts, one per class) and `train_captions` / `val_captions` / `test_captions`.
    """

    prompt_template = "{}"

    def __init__(
        self,
        img_size: int,
        in_chans: int,
        batch_size: int,
        num_workers: int,
        seed: int | None,
        augment: Augment,
        normalize: Normalization,
        split_seed: int,
        val_fraction: float,
        test_fraction: float,
        context_length: int,
        vocab_size: int,
        tokenizer_kind: Literal["bpe", "wordpiece"],
        tokenizer_path: str | None,
        with_captions: bool,
    ) -> None:
        super().__init__(img_size, in_chans, batch_size, num_workers, seed, augment, normalize)
        self.split_seed, self.val_fraction, self.test_fraction = split_seed, val_fraction, test_fraction
        self.context_length, self.vocab_size, self.tokenizer_kind = context_length, vocab_size, tokenizer_kind
        self.tokenizer_path, self.with_captions = tokenizer_path, with_captions
        self.tokenizer: TextTokenizer | None = None
        self.class_prompts: list[str] = []
        self.train_captions: list[str] = []
        self.val_captions: list[str] = []
        self.test_captions: list[str] = []

    def load(self) -> tuple[Tensor, list[str], Tensor, Tensor]:
        """(images, captions, labels, split groups)."""
        raise NotImplementedError

    def split(self, groups: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return subgroup_split(groups.tolist(), self.val_fraction, self.test_fraction, self.split_seed)

    def setup(self, stage: str | None = None) -> None:
        """Load, split, train the tokenizer on the training captions, encode every split."""
        if self.test_set is not None:
            return
        images, captions, labels, groups = self.load()
        train, val, test = self.split(groups)
        if self.normalize == "standard":  # statistics of the training split only
            x = images[train]
            self.mean = tuple(x.mean(dim=(0, 2, 3)).tolist())
            self.std = tuple(x.std(dim=(0, 2, 3)).tolist())
        pick = lambda idx: [captions[i] for i in idx.tolist()]  # noqa: E731
        self.train_captions, self.val_captions, self.test_captions = pick(train), pick(val), pick(test)
        if self.tokenizer_path:
            self.tokenizer = TextTokenizer.load(self.tokenizer_path)
        else:
            self.tokenizer = TextTokenizer.train(self.train_captions, self.vocab_size, self.tokenizer_kind)
        tokens = self.tokenizer.encode(captions, self.context_length) if self.with_captions else None
        sets = []
        for idx, tf, caps in (
            (train, self.train_transform(), self.train_captions),
            (val, self.eval_transform(), self.val_captions),
            (test, self.eval_transform(), self.test_captions),
        ):
            sets.append(CaptionDataset(images[idx], None if tokens is None else tokens[idx], labels[idx], tf, caps))
        self.train_set, self.val_set, self.test_set = sets
        self.class_prompts = self.make_class_prompts()

    def make_class_prompts(self) -> list[str]:
        """One zero-shot prompt per class: `prompt_template` filled with the class name."""
        return [self.prompt_template.format(c) for c in self.class_names]

    def preprocess(self) -> dict:
        """Image preprocessing plus the tokenizer (JSON text) and context length, saved beside exported weights."""
        out = super().preprocess()
        if self.tokenizer is not None:
            out["tokenizer"] = self.tokenizer.tokenizer.to_str()
            out["context_length"] = self.context_length
            out["class_prompts"] = list(self.class_prompts)
        return out


class DigitCaptionsDataModule(CaptionDataModule):
    """scikit-learn's digits captioned "a handwritten seven"; zero-shot prompts are the captions.

    Args: as `DigitsDataModule`, plus
        context_length: token row length ([BOS] and [EOS] included).
        vocab_size: tokenizer vocabulary bound.
        tokenizer_kind: 'bpe' (byte-level) or 'wordpiece'.
        tokenizer_path: load this tokenizer.json instead of training one.
        with_captions: batches (images, tokens, labels); False gives (images, labels).
    """

    prompt_template = "a handwritten {}"

    def __init__(
        self,
        img_size: int = 32,
        in_chans: int = 1,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int | None = None,
        split_seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        augment: Augment = DIGITS_AUGMENT,
        normalize: Normalization = "standard",
        context_length: int = 8,
        vocab_size: int = 400,
        tokenizer_kind: Literal["bpe", "wordpiece"] = "bpe",
        tokenizer_path: str | None = None,
        with_captions: bool = True,
    ) -> None:
        super().__init__(
            img_size, in_chans, batch_size, num_workers, seed, augment, normalize, split_seed, val_fraction,
            test_fraction, context_length, vocab_size, tokenizer_kind, tokenizer_path, with_captions,
        )
        self.class_names = list(DIGIT_WORDS)

    def load(self) -> tuple[Tensor, list[str], Tensor, Tensor]:
        images, labels = load_digits_images(self.img_size, self.in_chans)
        return images, [digit_caption(int(y)) for y in labels], labels, labels

    def split(self, groups: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return digits_split(groups, self.val_fraction, self.test_fraction, self.split_seed)


def fashion_caption(label: int) -> str:
    """'a picture of an ankle boot' for 9 (Fashion-MNIST's class names, lower case)."""
    from tessera.data.idx import FASHION_CLASSES

    name = FASHION_CLASSES[label].lower()
    return f"a picture of {'an' if name[0] in 'aeiou' else 'a'} {name}"


class FashionCaptionsDataModule(CaptionDataModule):
    """Fashion-MNIST (IDX files) captioned by class name, "a picture of a sneaker": text <-> image data.

    The split is `IDXDataModule`'s: `val_size` images of the training file (by `split_seed`)
    for validation, the rest for training, the t10k file for testing.

    Args: as `IDXDataModule` (root, img_size, in_chans, batch_size, ...), plus the caption
        arguments of `DigitCaptionsDataModule` (context_length, vocab_size, tokenizer_kind,
        tokenizer_path, with_captions).
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
        augment: Augment = Augment(enabled=False),
        normalize: Normalization = "signed",
        context_length: int = 12,
        vocab_size: int = 400,
        tokenizer_kind: Literal["bpe", "wordpiece"] = "bpe",
        tokenizer_path: str | None = None,
        with_captions: bool = True,
    ) -> None:
        from tessera.data.idx import FASHION_CLASSES

        super().__init__(
            img_size, in_chans, batch_size, num_workers, seed, augment, normalize, split_seed, 0.0,
            0.0, context_length, vocab_size, tokenizer_kind, tokenizer_path, with_captions,
        )
        self.root, self.val_size = root, val_size
        self.class_names = [c.lower() for c in FASHION_CLASSES]

    def load(self) -> tuple[Tensor, list[str], Tensor, Tensor]:
        from tessera.data.idx import IDXDataModule

        files = IDXDataModule(root=self.root, img_size=self.img_size, in_chans=self.in_chans)
        x, y = files.load_split("train")
        tx, ty = files.load_split("t10k")
        labels = torch.cat([y, ty])
        groups = torch.cat([torch.zeros(len(x), dtype=torch.long), torch.ones(len(tx), dtype=torch.long)])
        return torch.cat([x, tx]), [fashion_caption(int(c)) for c in labels], labels, groups

    def split(self, groups: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(train, val, test) indices: the training file split as `IDXDataModule`, the test file for test."""
        from tessera.data.idx import train_val_split

        train, val = train_val_split(int((groups == 0).sum()), self.val_size, self.split_seed)  # the train file comes first
        return train, val, (groups == 1).nonzero().flatten()

    def make_class_prompts(self) -> list[str]:
        """The captions themselves ("a picture of an ankle boot"), with their articles."""
        return [fashion_caption(i) for i in range(len(self.class_names))]


class EmojiCaptionsDataModule(CaptionDataModule):
    """Noto colour emoji captioned by their Unicode names; labels are the group (9) or subgroup.

    Args: as `DigitCaptionsDataModule`, plus
        label: 'group' (9 classes) or 'subgroup' (99 outside 'Component').
        skin_tones: keep the skin-tone variants.
        font_path / emoji_test_path: where the Debian packages put the font and emoji-test.txt.
        cache_dir: where rendered images are cached (default `default_cache_dir()`).
    """

    prompt_template = "an emoji of {}"

    def __init__(
        self,
        img_size: int = 32,
        in_chans: int = 3,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int | None = None,
        split_seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        augment: Augment = EMOJI_AUGMENT,
        normalize: Normalization = "standard",
        context_length: int = 20,
        vocab_size: int = 2000,
        tokenizer_kind: Literal["bpe", "wordpiece"] = "bpe",
        tokenizer_path: str | None = None,
        with_captions: bool = True,
        label: Literal["group", "subgroup"] = "group",
        skin_tones: bool = False,
        font_path: str = EMOJI_FONT,
        emoji_test_path: str = EMOJI_TEST,
        cache_dir: str | None = None,
    ) -> None:
        if in_chans != 3:
            raise ValueError(f"emoji are colour images: in_chans must be 3, got {in_chans}")
        if label not in ("group", "subgroup"):
            raise ValueError(f"label must be 'group' or 'subgroup', got {label!r}")
        super().__init__(
            img_size, in_chans, batch_size, num_workers, seed, augment, normalize, split_seed, val_fraction,
            test_fraction, context_length, vocab_size, tokenizer_kind, tokenizer_path, with_captions,
        )
        self.label, self.skin_tones = label, skin_tones
        self.font_path, self.emoji_test_path, self.cache_dir = font_path, emoji_test_path, cache_dir
        self.entries: list[Emoji] = []
        self.subgroup_names: list[str] = []

    def load(self) -> tuple[Tensor, list[str], Tensor, Tensor]:
        images, self.entries = load_emoji(
            self.img_size, self.skin_tones, self.font_path, self.emoji_test_path, self.cache_dir
        )
        groups = list(dict.fromkeys(e.group for e in self.entries))
        self.subgroup_names = list(dict.fromkeys(e.subgroup for e in self.entries))
        subgroup = torch.tensor([self.subgroup_names.index(e.subgroup) for e in self.entries])
        if self.label == "group":
            self.class_names = groups
            labels = torch.tensor([groups.index(e.group) for e in self.entries])
        else:
            self.class_names = [s.replace("-", " ") for s in self.subgroup_names]
            labels = subgroup
        return images, [e.name for e in self.entries], labels, subgroup

