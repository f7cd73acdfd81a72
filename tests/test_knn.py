"""Evaluation functions: weighted k-NN (DINO's), linear probe, fine-tuning, label fractions, shifts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import tessera
from tessera.eval.knn import extract_features, knn_accuracy, knn_scores, shift_images
from tessera.eval.probe import fine_tune, label_fraction, linear_probe


def brute_force_votes(train, labels, query, k, T, K):
    train, query = F.normalize(train, dim=1), F.normalize(query, dim=1)
    out = torch.zeros(len(query), K)
    for i, q in enumerate(query):
        sims = [(float(q @ t), int(y)) for t, y in zip(train, labels)]
        for s, y in sorted(sims, reverse=True)[:k]:
            out[i, y] += math.exp(s / T)
    return out


def test_weighted_knn_matches_a_brute_force_vote():
    torch.manual_seed(0)
    train, labels, query = torch.randn(40, 5), torch.randint(0, 3, (40,)), torch.randn(7, 5)
    got = knn_scores(train, labels, query, k=20, T=0.07, num_classes=3, chunk=3)
    torch.testing.assert_close(got, brute_force_votes(train, labels, query, 20, 0.07, 3), rtol=1e-4, atol=1e-3)


def test_leave_one_out_ignores_the_query_itself():
    x = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [0.1, 0.99]])
    y = torch.tensor([0, 1, 1, 0])  # each point's nearest other neighbour has the other label
    with_self = knn_scores(x, y, x, k=1, T=0.07, num_classes=2).argmax(1)
    loo = knn_scores(x, y, x, k=1, T=0.07, num_classes=2, exclude_self=True).argmax(1)
    assert torch.equal(with_self, y) and torch.equal(loo, 1 - y)


def test_knn_accuracy_on_separable_clusters_and_bad_shapes():
    torch.manual_seed(0)
    centres = torch.randn(4, 8) * 5
    y = torch.arange(200) % 4
    x = centres[y] + torch.randn(200, 8) * 0.1
    assert knn_accuracy(x[:150], y[:150], x[150:], y[150:]) == 1.0
    with pytest.raises(ValueError, match="same D"):
        knn_scores(x, y, torch.randn(3, 7))


def test_extract_features_uses_the_encoder_api():
    enc = tessera.create_model("vit_small_patch16_224", num_classes=0, img_size=16, patch_size=8, embed_dim=16,
                               depth=1, num_heads=2).eval()
    x, y = torch.randn(5, 3, 16, 16), torch.arange(5)
    f, labels = extract_features(enc, (x, y), batch_size=2)
    with torch.no_grad():
        torch.testing.assert_close(f, enc.forward_tokens(x)[:, 0])
    assert torch.equal(labels, y)


def test_linear_probe_learns_a_linear_rule():
    torch.manual_seed(0)
    x = torch.randn(300, 6)
    y = (x[:, 0] + x[:, 1] > 0).long()
    res = linear_probe(x[:200], y[:200], x[200:], y[200:], epochs=30, lr=0.05)
    assert res.accuracy > 0.9 and res.losses[-1] < res.losses[0]


@pytest.mark.slow
def test_fine_tune_trains_a_copy_and_leaves_the_encoder_alone():
    torch.manual_seed(0)
    enc = tessera.create_model("vit_small_patch16_224", num_classes=0, img_size=8, patch_size=4, embed_dim=16,
                               depth=1, num_heads=2, in_chans=1)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    y = torch.arange(64) % 2
    x = torch.randn(64, 1, 8, 8) * 0.1 + y.view(-1, 1, 1, 1).float()  # class = brightness
    res = fine_tune(enc, (x[:48], y[:48]), (x[48:], y[48:]), epochs=15, lr=3e-3, batch_size=16)
    assert res.accuracy == 1.0 and res.losses[-1] < res.losses[0]
    assert all(torch.equal(v, before[k]) for k, v in enc.state_dict().items())


def test_label_fraction_is_stratified_and_seeded():
    y = torch.arange(1000) % 10
    idx = label_fraction(y, 0.01, seed=0)
    assert len(idx) == 10 and sorted(y[idx].tolist()) == list(range(10))
    assert torch.equal(idx, label_fraction(y, 0.01, seed=0))
    assert not torch.equal(idx, label_fraction(y, 0.01, seed=1))
    assert len(label_fraction(y, 1.0)) == 1000
    with pytest.raises(ValueError, match="fraction"):
        label_fraction(y, 0.0)


def test_shift_images_moves_content_and_keeps_the_background():
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 4] = 1.0
    g = torch.Generator().manual_seed(0)
    y = shift_images(x, 2, g)
    assert y.shape == x.shape and y.sum() == 1.0
    r, c = (y[0, 0] == 1).nonzero()[0].tolist()
    assert abs(r - 4) <= 2 and abs(c - 4) <= 2
