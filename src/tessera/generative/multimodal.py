"""One transformer over text and image tokens (notes 003, "Recipe for Large World Models", step 3:
"require the single transformer to indicate output modality").

A joint vocabulary and a fixed sequence layout for a causal `TokenTransformer`:

    ids:  0 = <text>, 1 = <image>            modality tokens: "the next segment is text / image"
          2 .. 2 + V_t - 1                   text ids of the text tokenizer (+2)
          2 + V_t .. 2 + V_t + K - 1         image codes of the image tokenizer (+2 + V_t)

    text -> image:  <text> [BOS] w_1 .. [EOS] [PAD].. <image> c_1 .. c_N
    image -> text:  <image> c_1 .. c_N <text> [BOS] w_1 .. [EOS] [PAD]..

The text segment always has the tokenizer's context length L, so both orders have
2 + L + N tokens; [PAD] positions are never scored (they are attended to, as any prompt is).
Training mixes both orders; sampling continues a prompt that ends with the modality token
of the wanted output, drawing only ids of that modality.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tessera.generative.token_transformer import TokenTransformer, generate

__all__ = ["MultimodalLayout"]


@dataclass(frozen=True)
class MultimodalLayout:
    """text_vocab: V_t; num_codes: K; text_len: L; image_len: N; pad_id / eos_id: the text tokenizer's."""

    text_vocab: int
    num_codes: int
    text_len: int
    image_len: int
    pad_id: int = 0
    eos_id: int = 2

    TEXT = 0
    IMAGE = 1

    @property
    def vocab_size(self) -> int:
        return 2 + self.text_vocab + self.num_codes

    @property
    def seq_len(self) -> int:
        return 2 + self.text_len + self.image_len

    @property
    def text_range(self) -> tuple[int, int]:
        return 2, 2 + self.text_vocab

    @property
    def image_range(self) -> tuple[int, int]:
        return 2 + self.text_vocab, self.vocab_size

    def _check(self, text: Tensor | None, codes: Tensor | None) -> None:
        if text is not None and (text.ndim != 2 or text.shape[1] != self.text_len):
            raise ValueError(f"text must be (B, {self.text_len}) token rows, got {tuple(text.shape)}")
        if text is not None and text.numel() and (text.min() < 0 or text.max() >= self.text_vocab):
            raise ValueError(f"text ids must lie in [0, {self.text_vocab})")
        if codes is not None:
            codes = codes.flatten(1)
            if codes.shape[1] != self.image_len or (codes.numel() and (codes.min() < 0 or codes.max() >= self.num_codes)):
                raise ValueError(f"codes must be (B, {self.image_len}) ids in [0, {self.num_codes}), got {tuple(codes.shape)}")

    def sequence(self, text: Tensor, codes: Tensor, text_first: Tensor | bool) -> tuple[Tensor, Tensor]:
        """(tokens (B, 2 + L + N), scored (B, 2 + L + N) bool) for text -> image rows where `text_first`."""
        self._check(text, codes)
        B = text.shape[0]
        codes = codes.flatten(1)
        T = torch.full((B, 1), self.TEXT, dtype=torch.long, device=text.device)
        I = torch.full((B, 1), self.IMAGE, dtype=torch.long, device=text.device)
        t, c = text + 2, codes + 2 + self.text_vocab
        ti = torch.cat([T, t, I, c], dim=1)                                   # <text> text <image> codes
        it = torch.cat([I, c, T, t], dim=1)                                   # <image> codes <text> text
        first = torch.as_tensor(text_first, device=text.device).expand(B)[:, None]
        tokens = torch.where(first, ti, it)
        return tokens, tokens != self.pad_id + 2                              # every position but text [PAD]

    @torch.no_grad()
    def text_to_image(self, model: TokenTransformer, text: Tensor, **sampling) -> Tensor:
        """Codes (B, N) for text rows (B, L): prompt <text> text <image>, draw N image ids."""
        self._check(text, None)
        B = text.shape[0]
        T = torch.full((B, 1), self.TEXT, dtype=torch.long)
        I = torch.full((B, 1), self.IMAGE, dtype=torch.long)
        prompt = torch.cat([T, text + 2, I], dim=1)
        out = generate(model, self.image_len, prompt=prompt, allowed=self.image_range, **sampling)
        return out[:, -self.image_len :] - (2 + self.text_vocab)

    @torch.no_grad()
    def image_to_text(self, model: TokenTransformer, codes: Tensor, **sampling) -> Tensor:
        """Text rows (B, L) for codes (B, N): prompt <image> codes <text>, draw L text ids ([PAD] after [EOS])."""
        self._check(None, codes)
        codes = codes.flatten(1)
        B = codes.shape[0]
        T = torch.full((B, 1), self.TEXT, dtype=torch.long)
        I = torch.full((B, 1), self.IMAGE, dtype=torch.long)
        prompt = torch.cat([I, codes + 2 + self.text_vocab, T], dim=1)
        out = generate(model, self.text_len, prompt=prompt, allowed=self.text_range, **sampling)
        text = out[:, -self.text_len :] - 2
        after_eos = (text == self.eos_id).long().cumsum(dim=1) - (text == self.eos_id).long() > 0
        return text.masked_fill(after_eos, self.pad_id)
