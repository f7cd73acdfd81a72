"""Caption datasets: emoji-test.txt parsing, the subgroup-keeping split, the DataModules (no font needed)."""

from __future__ import annotations

import pytest
import torch

from tessera.data.captions import (
    CaptionDataModule,
    DigitCaptionsDataModule,
    EmojiCaptionsDataModule,
    digit_caption,
    parse_emoji_test,
    subgroup_split,
)
from tessera.data.base import Augment

EMOJI_TEST = """# group: Smileys & Emotion
# subgroup: face-smiling
1F600 ; fully-qualified # 😀 E1.0 grinning face
1F603 ; fully-qualified # 😃 E0.6 grinning face with big eyes
263A  ; unqualified     # ☺ E0.6 smiling face
# subgroup: face-hat
1F920 ; fully-qualified # 🤠 E3.0 cowboy hat face
# group: People & Body
# subgroup: hand-fingers-open
1F44B ; fully-qualified # 👋 E0.6 waving hand
1F44B 1F3FB ; fully-qualified # 👋🏻 E1.0 waving hand: light skin tone
# group: Component
# subgroup: skin-tone
1F3FB ; fully-qualified # 🏻 E1.0 light skin tone
"""


def test_parse_emoji_test(tmp_path):
    path = tmp_path / "emoji-test.txt"
    path.write_text(EMOJI_TEST, encoding="utf-8")
    entries = parse_emoji_test(path)
    assert [e.name for e in entries] == ["grinning face", "grinning face with big eyes", "cowboy hat face", "waving hand"]
    assert entries[2].group == "Smileys & Emotion" and entries[2].subgroup == "face-hat"
    assert entries[3].char == "👋"
    assert len(parse_emoji_test(path, skin_tones=True)) == 5  # the Component group stays out


def test_missing_emoji_files_say_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y fonts-noto-color-emoji unicode-data"):
        parse_emoji_test(tmp_path / "nope.txt")
    dm = EmojiCaptionsDataModule(emoji_test_path=str(tmp_path / "nope.txt"))
    with pytest.raises(FileNotFoundError, match="unicode-data"):
        dm.setup()


def test_subgroup_split_keeps_every_subgroup_in_train():
    groups = [0] * 10 + [1] * 2 + [2] + [3] * 37
    train, val, test = subgroup_split(groups, 0.1, 0.2, seed=3)
    assert len(train) + len(val) + len(test) == len(groups)
    assert not (set(train.tolist()) & set(test.tolist())) and not (set(train.tolist()) & set(val.tolist()))
    assert {groups[i] for i in train.tolist()} == {0, 1, 2, 3}
    again = subgroup_split(groups, 0.1, 0.2, seed=3)
    assert all(torch.equal(a, b) for a, b in zip((train, val, test), again))


class _Tiny(CaptionDataModule):
    """A few generated image/caption pairs: a coloured square per colour name."""

    COLOURS = {"red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1)}

    def __init__(self, **kw) -> None:
        super().__init__(8, 3, 4, 0, 0, Augment(enabled=False), "none", 0, 0.2, 0.2, 6, 300, "bpe", None, True)
        self.class_names = list(self.COLOURS)

    def load(self):
        images, caps, labels = [], [], []
        for k, (name, rgb) in enumerate(self.COLOURS.items()):
            for i in range(5):
                images.append(torch.tensor(rgb).float()[:, None, None].expand(3, 8, 8) * (0.5 + 0.1 * i))
                caps.append(f"a {name} square")
                labels.append(k)
        labels = torch.tensor(labels)
        return torch.stack(images), caps, labels, labels


def test_caption_datamodule_batches_and_preprocess():
    dm = _Tiny()
    dm.setup()
    x, tokens, y = next(iter(dm.val_dataloader()))
    assert x.shape[1:] == (3, 8, 8) and tokens.shape[1] == 6 and y.ndim == 1
    for row, label in zip(tokens, y.tolist()):
        assert dm.tokenizer.decode(row) == f"a {dm.class_names[label]} square"
    pre = dm.preprocess()
    assert pre["context_length"] == 6 and "tokenizer" in pre
    assert dm.class_prompts == ["red", "green", "blue"]
    assert set(dm.train_captions) == {"a red square", "a green square", "a blue square"}


def test_digit_captions():
    assert digit_caption(7) == "a handwritten seven"
    dm = DigitCaptionsDataModule(img_size=8, batch_size=16)
    dm.setup()
    x, tokens, y = next(iter(dm.test_dataloader()))
    assert dm.tokenizer.decode(tokens[0]) == digit_caption(int(y[0]))
    assert dm.tokenizer.decode(dm.tokenizer.encode(dm.class_prompts[3], 8)) == "a handwritten three"
    plain = DigitCaptionsDataModule(img_size=8, batch_size=16, with_captions=False)
    plain.setup()
    assert len(next(iter(plain.test_dataloader()))) == 2  # (images, labels) for stage-1 classification
