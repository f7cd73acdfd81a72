"""The caption tokenizer: training, fixed special ids, padding, truncation, unknown characters, save/load."""

from __future__ import annotations

import logging

import pytest
import torch

from tessera.data.text import SPECIAL_TOKENS, TextTokenizer

CAPTIONS = [
    "a handwritten seven", "a handwritten one", "grinning face with big eyes", "flag: United States",
    "red heart", "smiling face with sunglasses", "cat face", "dog face",
] * 3


@pytest.fixture(scope="module", params=["bpe", "wordpiece"])
def tok(request) -> TextTokenizer:
    return TextTokenizer.train(CAPTIONS, vocab_size=400 if request.param == "bpe" else 120, kind=request.param)


def test_special_tokens_have_fixed_ids(tok):
    for i, name in enumerate(SPECIAL_TOKENS):
        assert tok.tokenizer.token_to_id(name) == i
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.cls_id, tok.unk_id) == (0, 1, 2, 3, 4)


def test_encode_pads_and_round_trips(tok):
    ids = tok.encode(CAPTIONS[:8], context_length=16)
    assert ids.shape == (8, 16) and ids.dtype == torch.long
    assert (ids[:, 0] == tok.bos_id).all()
    for row, text in zip(ids.tolist(), CAPTIONS[:8]):
        n = row.index(tok.eos_id)
        assert all(i == tok.pad_id for i in row[n + 1 :])
        assert tok.decode(row).replace(" :", ":") == tok.normalize(text)
    assert tok.encode("cat face", 16).shape == (16,)


def test_empty_caption_is_an_error(tok):
    with pytest.raises(ValueError, match="empty"):
        tok.encode(["cat face", "  "], 8)


def test_long_caption_truncates_with_a_warning_or_raises(tok, caplog):
    text = "grinning face with big eyes " * 3
    with caplog.at_level(logging.WARNING):
        ids = tok.encode(text, 5)
    assert "truncated" in caplog.text
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    with pytest.raises(ValueError, match="context"):
        tok.encode(text, 5, overflow="error")


def test_unknown_characters():
    bpe = TextTokenizer.train(CAPTIONS, vocab_size=400, kind="bpe")
    text = "héllo 😀 ωmega"  # never seen in training: spelt as UTF-8 bytes
    assert bpe.decode(bpe.encode(text, 64)) == text
    wp = TextTokenizer.train(CAPTIONS, vocab_size=120, kind="wordpiece")
    ids = wp.encode("cat 😀", 8)
    assert wp.unk_id in ids.tolist()
    assert wp.decode(ids) == "cat [UNK]"


def test_save_load_round_trip(tok, tmp_path):
    path = tok.save(tmp_path / "run")
    assert path.name == "tokenizer.json"
    again = TextTokenizer.load(tmp_path / "run")
    assert torch.equal(again.encode(CAPTIONS, 16), tok.encode(CAPTIONS, 16))
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        TextTokenizer.load(tmp_path / "missing")


def test_training_is_deterministic():
    a = TextTokenizer.train(CAPTIONS, vocab_size=400)
    b = TextTokenizer.train(CAPTIONS, vocab_size=400)
    assert a.tokenizer.to_str() == b.tokenizer.to_str()
