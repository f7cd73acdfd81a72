"""Caption generation for CoCa: greedy, beam search, top-k / top-p sampling, with a KV cache.

The image encoder and the poolers run once per image; each step feeds only the
new token through both decoders, reusing the cached keys and values of the
earlier positions (and the cross-attention keys/values of the image tokens).
`use_cache=False` recomputes the whole prefix every step: the reference path,
which gives the same tokens (tests/test_coca.py).

Every function returns token rows (B, L') `[BOS] w_1 .. [EOS] [PAD]..` that
`TextTokenizer.decode` turns into text.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from tessera.ssl.coca import BOS_ID, EOS_ID, PAD_ID, CoCa, KVCache

Method = Literal["greedy", "beam", "sample"]


class _Stepper:
    """Next-token logits (B, V) for rows that grow by one id per call, cached or recomputed."""

    def __init__(self, model: CoCa, image_tokens: Tensor, use_cache: bool) -> None:
        self.model, self.image_tokens = model, image_tokens
        self.cache: KVCache | None = model.new_cache() if use_cache else None

    def __call__(self, ids: Tensor) -> Tensor:
        if self.cache is None:
            return self.model.caption_logits(ids, self.image_tokens)[:, -1]
        new = ids[:, self.cache.length :]  # only the ids the cache has not seen
        return self.model.decode_step(new, self.image_tokens, self.cache)[:, -1]

    def reorder(self, index: Tensor) -> None:
        self.image_tokens = self.image_tokens[index]
        if self.cache is not None:
            self.cache.reorder(index)


def _max_new(model: CoCa, max_new_tokens: int | None) -> int:
    limit = model.config.context_length - 1
    if max_new_tokens is None:
        return limit
    if not 1 <= max_new_tokens <= limit:
        raise ValueError(f"max_new_tokens must be in [1, {limit}] (the context length minus [BOS]), got {max_new_tokens}")
    return max_new_tokens


def _pad_after_eos(ids: Tensor) -> Tensor:
    """Replace everything after the first [EOS] of each row by [PAD]."""
    after = (ids == EOS_ID).int().cumsum(1) - (ids == EOS_ID).int() > 0
    return ids.masked_fill(after, PAD_ID)


def filter_top_k_top_p(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Logits (B, V) with everything outside the top-k and outside the nucleus (cumulative prob. top_p) set to -inf.

    The most likely token always survives, so a row is never all -inf.
    """
    if top_k < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need top_k >= 0 and 0 < top_p <= 1, got top_k={top_k}, top_p={top_p}")
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens before it already reach top_p.
        drop_sorted = probs.cumsum(-1) - probs >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


@torch.no_grad()
def generate(
    model: CoCa,
    images: Tensor,
    method: Method = "greedy",
    max_new_tokens: int | None = None,
    beam_width: int = 4,
    length_penalty: float = 1.0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> Tensor:
    """Captions for images (B, C, H, W) as token rows (B, 1 + max_new_tokens).

    Args:
        model: a CoCa model (evaluated in its current mode; call `.eval()` first).
        method: 'greedy' (argmax), 'beam' (beam search) or 'sample' (temperature, top-k, top-p).
        max_new_tokens: tokens to generate at most (default: context length - 1).
        beam_width: beams per image (method 'beam'), >= 1.
        length_penalty: beam scores are log p / length**length_penalty (0: no normalisation).
        temperature: softmax temperature of sampling (> 0).
        top_k: sample among the k most likely tokens (0: all).
        top_p: sample within the smallest set of tokens of total probability >= top_p.
        generator: random generator of sampling (reproducible captions).
        use_cache: reuse keys/values of earlier positions (False: recompute, the reference).
    """
    if method not in ("greedy", "beam", "sample"):
        raise ValueError(f"method must be 'greedy', 'beam' or 'sample', got {method!r}")
    if method == "beam" and (not isinstance(beam_width, int) or beam_width < 1):
        raise ValueError(f"beam_width must be an integer >= 1, got {beam_width!r}")
    if method == "sample" and temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n_new = _max_new(model, max_new_tokens)
    _, image_tokens = model.encode_image(images)  # the encoder runs once
    if method == "beam":
        return _beam_search(model, image_tokens, n_new, beam_width, length_penalty, use_cache)
    B = images.shape[0]
    step = _Stepper(model, image_tokens, use_cache)
    ids = torch.full((B, 1), BOS_ID, dtype=torch.long, device=images.device)
    done = torch.zeros(B, dtype=torch.bool, device=images.device)
    for _ in range(n_new):
        logits = step(ids).float()  # (B, V)
        logits[:, [PAD_ID, BOS_ID]] = float("-inf")  # never generated
        if method == "greedy":
            nxt = logits.argmax(-1)
        else:
            probs = filter_top_k_top_p(logits / temperature, top_k, top_p).softmax(-1)
            nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
        nxt = nxt.masked_fill(done, PAD_ID)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        done |= nxt == EOS_ID
        if done.all():
            break
    return _pad_after_eos(ids)


def _beam_search(
    model: CoCa, image_tokens: Tensor, n_new: int, K: int, length_penalty: float, use_cache: bool
) -> Tensor:
    """Beam search with K beams per image; finished hypotheses scored log p / length**length_penalty."""
    B, device = image_tokens.shape[0], image_tokens.device
    step = _Stepper(model, image_tokens.repeat_interleave(K, dim=0), use_cache)
    ids = torch.full((B * K, 1), BOS_ID, dtype=torch.long, device=device)
    # Only the first beam of each image is live at the start (the others are copies).
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    for t in range(1, n_new + 1):
        logp = step(ids).float().log_softmax(-1)  # (B K, V)
        logp[:, [PAD_ID, BOS_ID]] = float("-inf")
        V = logp.shape[-1]
        cand = (scores[:, :, None] + logp.view(B, K, V)).view(B, K * V)
        top_scores, top_idx = cand.topk(min(2 * K, K * V), dim=-1)  # (B, 2K): enough to keep K alive
        beam_src = torch.zeros(B, K, dtype=torch.long, device=device)
        beam_tok = torch.full((B, K), EOS_ID, dtype=torch.long, device=device)
        new_scores = torch.full((B, K), float("-inf"), device=device)
        for b in range(B):
            alive = 0
            for s, idx in zip(top_scores[b].tolist(), top_idx[b].tolist()):
                if s == float("-inf"):
                    break
                src, tok = divmod(idx, V)
                if tok == EOS_ID or t == n_new:
                    if len(finished[b]) < K or s / t**length_penalty > min(f[0] for f in finished[b]):
                        row = ids[b * K + src, 1:].tolist() + [tok]
                        finished[b].append((s / t**length_penalty, row))
                        finished[b].sort(key=lambda f: -f[0])
                        del finished[b][K:]
                    continue
                beam_src[b, alive], beam_tok[b, alive], new_scores[b, alive] = src, tok, s
                alive += 1
                if alive == K:
                    break
        # Stop an image when its best live beam can no longer beat its worst kept hypothesis
        # (log p only falls as a beam grows; with length_penalty > 0 this is the usual heuristic).
        for b in range(B):
            if len(finished[b]) == K and new_scores[b, 0] / t**length_penalty <= finished[b][-1][0]:
                new_scores[b] = float("-inf")
        if torch.isinf(new_scores).all():
            break
        index = (torch.arange(B, device=device)[:, None] * K + beam_src).flatten()
        ids = torch.cat([ids[index], beam_tok.flatten()[:, None]], dim=1)
        step.reorder(index)
        scores = new_scores
    out = torch.full((B, n_new + 1), PAD_ID, dtype=torch.long, device=device)
    out[:, 0] = BOS_ID
    for b in range(B):
        best = finished[b][0][1] if finished[b] else ids[b * K, 1:].tolist()
        out[b, 1 : 1 + len(best)] = torch.tensor(best[:n_new], device=device)
    return _pad_after_eos(out)
