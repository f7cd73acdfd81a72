"""A text tokenizer trained on a run's own captions (Hugging Face `tokenizers`), nothing downloaded.

Captions become fixed-length id rows `[BOS] w_1 ... w_n [EOS] [PAD] ...` for
text decoders (CoCa, text-conditioned diffusion). Two algorithms:

- "bpe" (default): byte-level BPE. The alphabet is all 256 bytes, so *any*
  text encodes and decodes back exactly: a character never seen in training
  (another script, an emoji) is spelt as its UTF-8 bytes. Nothing is unknown.
- "wordpiece": BERT-style word pieces. A character outside the training
  alphabet becomes `[UNK]` (decoding gives "[UNK]" back in its place).

Special tokens have fixed ids: [PAD]=0, [BOS]=1, [EOS]=2, [CLS]=3, [UNK]=4.
The tokenizer is one JSON file (`tokenizer.json`) saved beside a run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Literal, Sequence

import torch
from torch import Tensor

log = logging.getLogger(__name__)

PAD, BOS, EOS, CLS, UNK = "[PAD]", "[BOS]", "[EOS]", "[CLS]", "[UNK]"
SPECIAL_TOKENS = (PAD, BOS, EOS, CLS, UNK)  # ids 0..4, in this order
TOKENIZER_NAME = "tokenizer.json"

Overflow = Literal["truncate", "error"]


class TextTokenizer:
    """Captions <-> padded id rows, around a `tokenizers.Tokenizer`.

    Build one with `TextTokenizer.train(captions)` or `TextTokenizer.load(path)`.
    """

    pad_id, bos_id, eos_id, cls_id, unk_id = range(5)

    def __init__(self, tokenizer: "tokenizers.Tokenizer") -> None:  # noqa: F821
        for i, tok in enumerate(SPECIAL_TOKENS):
            if tokenizer.token_to_id(tok) != i:
                raise ValueError(
                    f"tokenizer must have special token {tok} at id {i}, found id {tokenizer.token_to_id(tok)}"
                )
        self.tokenizer = tokenizer

    # ------------------------------------------------------------- building
    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int = 1000,
        kind: Literal["bpe", "wordpiece"] = "bpe",
        lowercase: bool = True,
        min_frequency: int = 1,
    ) -> "TextTokenizer":
        """Learn a vocabulary from `texts` (the training captions only).

        Args:
            texts: training captions.
            vocab_size: upper bound of the vocabulary, special tokens included
                (byte-level BPE needs more than 256 + 5).
            kind: 'bpe' (byte-level: no unknown characters) or 'wordpiece' (unknown -> [UNK]).
            lowercase: lowercase (after NFKC normalisation) before tokenising.
            min_frequency: a merge / word piece must occur this often.
        """
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

        texts = list(texts)
        if not texts:
            raise ValueError("cannot train a tokenizer on no texts")
        norm = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
        if kind == "bpe":
            if vocab_size <= 256 + len(SPECIAL_TOKENS):
                raise ValueError(f"byte-level BPE needs vocab_size > {256 + len(SPECIAL_TOKENS)}, got {vocab_size}")
            tok = Tokenizer(models.BPE())
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
            tok.decoder = decoders.ByteLevel()
            trainer = trainers.BpeTrainer(
                vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS),
                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
            )
        elif kind == "wordpiece":
            tok = Tokenizer(models.WordPiece(unk_token=UNK))
            tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
            tok.decoder = decoders.WordPiece()
            trainer = trainers.WordPieceTrainer(
                vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS),
                show_progress=False,
            )
        else:
            raise ValueError(f"kind must be 'bpe' or 'wordpiece', got {kind!r}")
        tok.normalizer = normalizers.Sequence(norm)
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @classmethod
    def from_json(cls, text: str) -> "TextTokenizer":
        """From the JSON text `save` writes (a run's preprocess.json keeps a copy under "tokenizer")."""
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(text))

    @classmethod
    def load(cls, path: str | Path) -> "TextTokenizer":
        """Read `tokenizer.json` (a file, or a folder holding one)."""
        from tokenizers import Tokenizer

        path = Path(path)
        if path.is_dir():
            path = path / TOKENIZER_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer file at {str(path)!r} (expected a {TOKENIZER_NAME} saved by save())")
        return cls(Tokenizer.from_file(str(path)))

    def save(self, path: str | Path) -> Path:
        """Write the tokenizer as one JSON file (a folder gets `tokenizer.json` inside)."""
        path = Path(path)
        if path.suffix != ".json":
            path.mkdir(parents=True, exist_ok=True)
            path = path / TOKENIZER_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        self.tokenizer.save(str(tmp))
        tmp.replace(path)
        return path

    # ------------------------------------------------------------- use
    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return self.tokenizer.get_vocab_size()

    def normalize(self, text: str) -> str:
        """The text as the tokenizer sees it (NFKC, maybe lowercased): compare decoded captions to this."""
        return self.tokenizer.normalizer.normalize_str(text).strip()

    def tokens(self, text: str) -> list[int]:
        """Ids of a text without special tokens."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids if text.strip() else []

    def encode(
        self, texts: str | Sequence[str], context_length: int, overflow: Overflow = "truncate"
    ) -> Tensor:
        """Captions -> (B, context_length) ids `[BOS] ... [EOS] [PAD]...` (a str gives (context_length,)).

        Args:
            texts: one caption or a list of them; an empty (or all-space) caption is an error.
            context_length: row length, [BOS] and [EOS] included (>= 3).
            overflow: a caption longer than the context is 'truncate'd (a warning is
                logged; its [EOS] is kept as the last id) or is an 'error'.
        """
        single = isinstance(texts, str)
        batch = [texts] if single else list(texts)
        if context_length < 3:
            raise ValueError(f"context_length must be >= 3 ([BOS], one token, [EOS]), got {context_length}")
        if overflow not in ("truncate", "error"):
            raise ValueError(f"overflow must be 'truncate' or 'error', got {overflow!r}")
        out = torch.full((len(batch), context_length), self.pad_id, dtype=torch.long)
        truncated: list[str] = []
        for i, text in enumerate(batch):
            if not isinstance(text, str):
                raise TypeError(f"caption {i} is a {type(text).__name__}, expected str")
            ids = self.tokens(text.strip())
            if not ids:
                raise ValueError(f"caption {i} ({text!r}) is empty: every caption needs at least one token")
            if len(ids) > context_length - 2:
                msg = (
                    f"caption {i} ({text[:40]!r}...) has {len(ids)} tokens, more than the "
                    f"{context_length - 2} that fit the context of {context_length} ([BOS] and [EOS] included)"
                )
                if overflow == "error":
                    raise ValueError(msg)
                truncated.append(msg)
                ids = ids[: context_length - 2]
            row = [self.bos_id, *ids, self.eos_id]
            out[i, : len(row)] = torch.tensor(row)
        if truncated:  # one warning per call, not one per caption
            log.warning("%d caption(s) truncated; first: %s", len(truncated), truncated[0])
        return out[0] if single else out

    def decode(self, ids: Sequence[int] | Tensor) -> str | list[str]:
        """Ids -> text, stopping at the first [EOS] and dropping special tokens.

        A 1-D row gives a str, a (B, L) tensor or list of rows a list of str.
        """
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        if ids and isinstance(ids[0], (list, tuple)):
            return [self.decode(row) for row in ids]  # type: ignore[misc]
        keep: list[int] = []
        for i in ids:
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.bos_id, self.cls_id):
                continue
            keep.append(int(i))
        return self.tokenizer.decode(keep, skip_special_tokens=False).strip()
