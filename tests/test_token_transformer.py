"""Token transformer over codes: MaskGIT schedule and decoding, next-token sampling with a KV cache, multimodal layout."""

from __future__ import annotations

import math

import pytest
import torch

from tessera.generative import (
    KVCache,
    MultimodalLayout,
    TokenTransformer,
    TokenTransformerConfig,
    generate,
    maskgit_mask_counts,
    maskgit_sample,
    random_mask,
    sample_logits,
)

@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: thread start-up costs more than it saves (and a shared CPU oversubscribes)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)



def model(objective: str = "causal", **kw) -> TokenTransformer:
    torch.manual_seed(0)
    cfg = dict(vocab_size=12, seq_len=10, objective=objective, num_classes=3, dim=32, depth=2, heads=4)
    return TokenTransformer(TokenTransformerConfig(**{**cfg, **kw})).eval()


# ---------------------------------------------------------------- MaskGIT schedule


def test_maskgit_counts_for_256_tokens_and_8_steps():
    # floor(256 cos(pi/2 t/8)), t = 1..7, then all revealed (the hand-computed counts)
    assert maskgit_mask_counts(256, 8) == [251, 236, 212, 181, 142, 97, 49, 0]


def test_maskgit_counts_always_reveal_at_least_one():
    counts = maskgit_mask_counts(10, 10)
    assert counts[-1] == 0 and all(a > b for a, b in zip([10] + counts, counts))
    with pytest.raises(ValueError, match="steps"):
        maskgit_mask_counts(4, 8)


def test_training_mask_follows_the_cosine_schedule():
    g = torch.Generator().manual_seed(0)
    mask = random_mask(torch.zeros(4000, 64, dtype=torch.long), g)
    frac = mask.float().mean(dim=1)
    assert (mask.sum(dim=1) >= 1).all()
    # E[cos(pi r / 2)] over r ~ U(0, 1) = 2 / pi (plus < 1/N from the ceil)
    assert abs(frac.mean().item() - 2 / math.pi) < 0.02


# ---------------------------------------------------------------- losses and masks


def test_masked_loss_scores_only_masked_positions():
    m = model("masked")
    tokens = torch.randint(0, 12, (2, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[:, 3] = True
    out = m(tokens, torch.tensor([0, 1]), mask)
    want = torch.nn.functional.cross_entropy(out.logits[:, 3], tokens[:, 3])
    torch.testing.assert_close(out.loss, want)
    # unmasked tokens are visible: changing a masked one changes nothing
    other = tokens.clone()
    other[:, 3] = (other[:, 3] + 1) % 12
    torch.testing.assert_close(m(other, torch.tensor([0, 1]), mask).logits, out.logits)
    with pytest.raises(ValueError, match="target_mask"):
        m(tokens, torch.tensor([0, 1]))


def test_causal_logits_do_not_see_the_future():
    m = model("causal")
    tokens = torch.randint(0, 12, (2, 10), generator=torch.Generator().manual_seed(0))
    out = m(tokens, torch.tensor([0, 1]))
    other = tokens.clone()
    other[:, 6:] = (other[:, 6:] + 5) % 12
    again = m(other, torch.tensor([0, 1]))
    torch.testing.assert_close(again.logits[:, :7], out.logits[:, :7])  # position i sees tokens < i
    assert not torch.allclose(again.logits[:, 7:], out.logits[:, 7:])
    scored = torch.zeros(2, 10, dtype=torch.bool)
    scored[:, 4:] = True
    part = m(tokens, torch.tensor([0, 1]), scored).loss
    want = torch.nn.functional.cross_entropy(out.logits[:, 4:].reshape(-1, 12), tokens[:, 4:].reshape(-1))
    torch.testing.assert_close(part, want)


def test_class_prefix_changes_the_prediction_and_is_checked():
    m = model("causal")
    tokens = torch.zeros(1, 10, dtype=torch.long)
    a, b = m(tokens, torch.tensor([0])).logits, m(tokens, torch.tensor([2])).logits
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        m(tokens, torch.tensor([3]))
    with pytest.raises(ValueError, match=r"\[0, 12\)"):
        m(tokens + 12, torch.tensor([0]))


# ---------------------------------------------------------------- sampling


def test_kv_cache_gives_the_same_tokens_as_rerunning_the_sequence():
    m = model("causal")
    y = torch.tensor([0, 2, 1])
    kw = dict(temperature=1.0, top_k=8, top_p=0.95)
    a = generate(m, 10, y=y, generator=torch.Generator().manual_seed(5), use_cache=True, **kw)
    b = generate(m, 10, y=y, generator=torch.Generator().manual_seed(5), use_cache=False, **kw)
    assert a.shape == (3, 10)
    assert torch.equal(a, b)


def test_cached_logits_equal_full_forward_logits():
    m = model("causal")
    tokens = torch.randint(0, 12, (2, 7), generator=torch.Generator().manual_seed(0))
    y = torch.tensor([1, 2])
    cache = KVCache(2)
    m.next_logits(tokens[:, :3], y, cache)
    for n in range(4, 8):
        step = m.next_logits(tokens[:, :n], y, cache)
        full = m.next_logits(tokens[:, :n], y)
        torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-5)


def test_top_k_and_top_p_restrict_the_draws():
    logits = torch.tensor([[4.0, 3.0, 0.0, -1.0, -2.0]]).expand(2000, 5)
    g = torch.Generator().manual_seed(0)
    assert set(sample_logits(logits, 1.0, top_k=2, generator=g).tolist()) <= {0, 1}
    p = logits[0].softmax(-1)  # p0 ~ 0.71, p0 + p1 ~ 0.97
    assert set(sample_logits(logits, 1.0, top_p=0.5, generator=g).tolist()) == {0}
    assert set(sample_logits(logits, 1.0, top_p=float(p[0] + 0.01), generator=g).tolist()) == {0, 1}
    assert (sample_logits(logits, 0.0) == 0).all()


def test_maskgit_sampling_fills_every_token_deterministically():
    m = model("masked")
    y = torch.tensor([0, 1])
    a = maskgit_sample(m, y=y, steps=4, generator=torch.Generator().manual_seed(1))
    b = maskgit_sample(m, y=y, steps=4, generator=torch.Generator().manual_seed(1))
    assert a.shape == (2, 10) and torch.equal(a, b)
    assert a.min() >= 0 and a.max() < 12


def test_generate_refuses_a_too_long_request_before_compute():
    m = model("causal")
    with pytest.raises(ValueError, match="seq_len"):
        generate(m, 11, batch_size=1)
    with pytest.raises(ValueError, match="causal"):
        generate(model("masked"), 2, batch_size=1)


# ---------------------------------------------------------------- multimodal


def test_multimodal_layout_both_orders_and_constrained_sampling():
    lay = MultimodalLayout(text_vocab=7, num_codes=5, text_len=4, image_len=6)
    text = torch.tensor([[1, 5, 2, 0], [1, 6, 3, 2]])
    codes = torch.tensor([[0, 1, 2, 3, 4, 0], [4, 4, 3, 2, 1, 0]])
    tokens, scored = lay.sequence(text, codes, torch.tensor([True, False]))
    assert tokens.shape == (2, lay.seq_len) == (2, 12)
    assert tokens[0].tolist() == [0, 3, 7, 4, 2, 1, 9, 10, 11, 12, 13, 9]  # <text> text+2 <image> codes+9
    assert tokens[1].tolist() == [1, 13, 13, 12, 11, 10, 9, 0, 3, 8, 5, 4]  # <image> codes <text> text
    assert scored[0].tolist()[4] is False and scored.sum() == 23  # only the [PAD] is unscored
    m = model("causal", vocab_size=lay.vocab_size, seq_len=lay.seq_len, num_classes=0)
    out = m(tokens, None, scored)
    assert torch.isfinite(out.loss)
    img = lay.text_to_image(m, text, generator=torch.Generator().manual_seed(0))
    assert img.shape == (2, 6) and img.min() >= 0 and img.max() < 5
    txt = lay.image_to_text(m, codes, generator=torch.Generator().manual_seed(0))
    assert txt.shape == (2, 4) and txt.min() >= 0 and txt.max() < 7
