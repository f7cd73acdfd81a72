"""CoCa: losses (and their parity with lucidrains' CoCa-pytorch), masks, KV-cached generation, bad input, metrics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import tessera
from tessera.core import tiny_overrides
from tessera.eval.captioning import bleu4, exact_match, token_f1
from tessera.eval.retrieval import recall_at_k, retrieval_recall, zero_shot_accuracy
from tessera.ssl.coca import EOS_ID, PAD_ID, caption_loss, contrastive_loss, gather_with_grad
from tessera.ssl.coca_generate import filter_top_k_top_p, generate


def tiny(**kw):
    torch.manual_seed(0)
    return tessera.create_model("coca_vit_tiny", **{**tiny_overrides("coca_vit_tiny"), "context_length": 10, **kw}).eval()


@pytest.fixture(scope="module")
def model():
    return tiny()


# ------------------------------------------------------------------ losses


def test_contrastive_loss_is_symmetric_infonce():
    torch.manual_seed(0)
    x, y = F.normalize(torch.randn(5, 8), dim=-1), F.normalize(torch.randn(5, 8), dim=-1)
    s = torch.tensor(10.0)
    logits = s * x @ y.T
    ref = 0.5 * (-logits.log_softmax(1).diag().mean() - logits.log_softmax(0).diag().mean())
    torch.testing.assert_close(contrastive_loss(x, y, s), ref)
    torch.testing.assert_close(contrastive_loss(x, y, s), contrastive_loss(y, x, s))
    assert contrastive_loss(x, x, torch.tensor(100.0)) < 0.01  # aligned pairs, sharp temperature
    assert gather_with_grad(x) is x  # one process: no collective


def test_caption_loss_ignores_padding():
    torch.manual_seed(0)
    logits, targets = torch.randn(2, 4, 7), torch.tensor([[5, 6, EOS_ID, PAD_ID], [5, EOS_ID, PAD_ID, PAD_ID]])
    changed = logits.clone()
    changed[targets == PAD_ID] = 100.0
    torch.testing.assert_close(caption_loss(logits, targets), caption_loss(changed, targets))
    keep = targets != PAD_ID
    torch.testing.assert_close(caption_loss(logits, targets), F.cross_entropy(logits[keep], targets[keep]))
    assert caption_loss(logits, targets, label_smoothing=0.1) != caption_loss(logits, targets)


def test_forward_combines_the_losses_with_the_paper_weights(model):
    x, ids = model.example_inputs(3)
    out = model(x, ids)
    assert model.config.contrastive_loss_weight == 1.0 and model.config.caption_loss_weight == 2.0
    torch.testing.assert_close(out.loss, out.contrastive_loss + 2 * out.caption_loss)
    assert out.logits.shape == (3, 9, model.config.vocab_size)
    torch.testing.assert_close(out.image_embed.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(out.logit_scale, torch.tensor(1 / 0.07))


def test_temperature_is_clamped():
    m = tiny()
    with torch.no_grad():
        m.logit_scale.fill_(math.log(1000.0))
    assert float(m(*m.example_inputs(2)).logit_scale) == pytest.approx(100.0)


def test_text_embedding_never_sees_padding(model):
    _, ids = model.example_inputs(3)  # rows of different lengths, padded
    assert (ids == PAD_ID).any()
    before = model.embed_text(ids)
    m = tiny()
    with torch.no_grad():
        m.token_embed.weight[PAD_ID] += 5.0  # a different padding vector
    torch.testing.assert_close(m.embed_text(ids), before)


def test_tied_and_untied_output_embedding():
    tied, untied = tiny(), tiny(tie_embedding=False)
    c = tied.config
    assert tied.to_logits is None
    assert untied.num_params() - tied.num_params() == c.vocab_size * c.dim


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("coca_pytorch") is None,
    reason="coca-pytorch (lucidrains) not installed",
)
def test_loss_maths_match_lucidrains_coca_pytorch():
    """Feed our loss functions what CoCa-pytorch's forward computes and compare its total loss."""
    from coca_pytorch.coca_pytorch import CoCa as PeerCoCa

    torch.manual_seed(0)
    enc = torch.nn.Sequential(torch.nn.Flatten(2), torch.nn.Linear(16, 24))  # (B, 3, 4, 4) -> (B, 3, 24) tokens
    peer = PeerCoCa(
        dim=32, num_tokens=50, unimodal_depth=1, multimodal_depth=1, image_dim=24, num_img_queries=4,
        dim_head=8, heads=2, img_encoder=enc, caption_loss_weight=2.0, contrastive_loss_weight=1.0,
    ).eval()
    seen = {}
    peer.to_logits.register_forward_hook(lambda m, i, o: seen.__setitem__("logits", o))
    peer.text_to_latents.register_forward_hook(lambda m, i, o: seen.__setitem__("text", o))
    peer.img_to_latents.register_forward_hook(lambda m, i, o: seen.__setitem__("image", o))
    text = torch.tensor([[1, 7, 8, 9, 2, 0], [1, 11, 2, 0, 0, 0], [1, 12, 13, 14, 15, 2]])
    images = torch.randn(3, 3, 4, 4)
    with torch.no_grad():
        total = peer(text, images, return_loss=True)
    scale = peer.temperature.exp()  # CoCa-pytorch: unclamped, s = exp(t)
    ours = 1.0 * contrastive_loss(seen["image"], seen["text"], scale) + 2.0 * caption_loss(seen["logits"], text[:, 1:])
    torch.testing.assert_close(ours, total)


# ------------------------------------------------------------------ generation


@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
def test_kv_cache_gives_the_same_captions(model, method):
    x, _ = model.example_inputs(3)
    kw = dict(beam_width=3)
    a = generate(model, x, method, generator=torch.Generator().manual_seed(1), **kw)
    b = generate(model, x, method, generator=torch.Generator().manual_seed(1), use_cache=False, **kw)
    assert torch.equal(a, b)
    assert a.shape[0] == 3 and a.shape[1] <= model.config.context_length


def test_cached_logits_equal_the_full_prefix(model):
    x, ids = model.example_inputs(2)
    with torch.no_grad():
        _, image_tokens = model.encode_image(x)
        prefix = ids[:, :-1]
        ref = model.caption_logits(prefix, image_tokens)
        cache = model.new_cache()
        parts = [model.decode_step(prefix[:, :3], image_tokens, cache)]  # a prefill, then one id at a time
        parts += [model.decode_step(prefix[:, i : i + 1], image_tokens, cache) for i in range(3, prefix.shape[1])]
        torch.testing.assert_close(torch.cat(parts, 1), ref, rtol=1e-5, atol=1e-5)
        # The training forward's logits are the same numbers (the CLS comes after every text position).
        torch.testing.assert_close(model(x, ids).logits, ref, rtol=1e-5, atol=1e-5)


def test_beam_of_one_without_length_penalty_is_greedy(model):
    x, _ = model.example_inputs(3)
    assert torch.equal(generate(model, x, "beam", beam_width=1, length_penalty=0.0), generate(model, x, "greedy"))


def test_generated_rows_are_padded_after_eos(model):
    x, _ = model.example_inputs(4)
    ids = generate(model, x, "sample", generator=torch.Generator().manual_seed(0), top_k=5)
    for row in ids.tolist():
        if EOS_ID in row:
            assert all(t == PAD_ID for t in row[row.index(EOS_ID) + 1 :])


def test_top_k_top_p_filter():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_top_k_top_p(logits, top_k=2)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_top_k_top_p(logits, top_p=0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_top_k_top_p(logits, top_p=0.1)).tolist() == [[False, True, True, True]]


@pytest.mark.slow
def test_a_tiny_coca_learns_to_caption_and_retrieve():
    """Four colours, four captions: after a few steps greedy captions and retrieval are exact."""
    torch.manual_seed(0)
    m = tiny(vocab_size=16, context_length=5).train()
    colours = torch.eye(3)[[0, 1, 2, 0]] + torch.tensor([0, 0, 0, 1.0])[:, None]  # 4 distinct colours
    x = colours[:, :, None, None].expand(4, 3, 32, 32).contiguous()
    ids = torch.tensor([[1, 5, 6, 2, 0], [1, 7, 2, 0, 0], [1, 8, 9, 10, 2], [1, 11, 12, 2, 0]])
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    for _ in range(60):
        opt.zero_grad()
        m(x, ids).loss.backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        assert torch.equal(generate(m, x), ids)
        r = retrieval_recall(m.embed_image(x), m.embed_text(ids), ks=(1,))
    assert r == {"i2t_r1": 1.0, "t2i_r1": 1.0}


# ------------------------------------------------------------------ bad input


def test_bad_input_is_a_clear_error(model):
    x, ids = model.example_inputs(2)
    empty = ids.clone()
    empty[0, 1:] = PAD_ID
    empty[0, 1] = EOS_ID
    with pytest.raises(ValueError, match="empty"):
        model(x, empty)
    with pytest.raises(ValueError, match="context length"):
        model(x, torch.cat([ids, ids], dim=1))
    with pytest.raises(ValueError, match="integer"):
        model(x, ids.float())
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        model(x, ids + 100)
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(2, 1, 32, 32), ids)
    with pytest.raises(ValueError, match="2 images but 1 captions"):
        model(x, ids[:1])
    with pytest.raises(ValueError, match="beam_width"):
        generate(model, x, "beam", beam_width=0)
    with pytest.raises(ValueError, match="method"):
        generate(model, x, "nucleus")
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, x, max_new_tokens=100)


# ------------------------------------------------------------------ metrics


def test_retrieval_and_zero_shot_metrics():
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.7, 0.1], [0.0, 0.5, 0.2]])
    assert recall_at_k(scores, torch.tensor([0, 1, 2]), ks=(1, 2)) == {1: pytest.approx(1 / 3), 2: pytest.approx(1.0)}
    e = torch.eye(4)
    assert retrieval_recall(e, e[[0, 1, 3, 2]], ks=(1,)) == {"i2t_r1": 0.5, "t2i_r1": 0.5}
    assert zero_shot_accuracy(e[[0, 1, 1]], e[:2], torch.tensor([0, 1, 0])) == pytest.approx(2 / 3)


def test_caption_metrics():
    cand, ref = ["the cat sat on the mat", "a dog"], ["the cat sat on the mat", "a big dog"]
    assert exact_match(cand, ref) == 0.5
    assert token_f1(cand, ref) == pytest.approx((1 + 0.8) / 2)
    # 1-4-gram precisions 8/8, 5/6, 4/4, 3/3; brevity penalty exp(1 - 9/8).
    assert bleu4(cand, ref) == pytest.approx((5 / 6) ** 0.25 * math.exp(1 - 9 / 8))
    assert bleu4(["a b"], ["c d"]) == 0.0
