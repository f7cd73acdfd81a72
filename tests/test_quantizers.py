"""Quantizers (tessera.layers.quantizers): gradients, lookups, EMA, k-means, restarts, Gumbel."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tessera.layers.quantizers import GumbelQuantizer, VectorQuantizer, codebook_perplexity, kmeans


def brute_force_nearest(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """(B, D, H, W), (K, D) -> (B, H, W), by computing every distance explicitly."""
    B, D, H, W = z.shape
    vecs = z.permute(0, 2, 3, 1).reshape(-1, 1, D)
    d = ((vecs - codebook[None]) ** 2).sum(-1)  # (N, K)
    return d.argmin(1).view(B, H, W)


@pytest.mark.parametrize("placement", ["paper", "legacy"])
def test_gradient_split_between_encoder_and_codebook(placement):
    beta = 0.25
    vq = VectorQuantizer(8, 4, beta=beta, beta_placement=placement)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = vq(z)
    out.loss.backward()
    e = vq.codebook.detach()[out.indices].permute(0, 3, 1, 2)  # (B, D, H, W)
    N = z.numel()
    w_commit, w_code = (beta, 1.0) if placement == "paper" else (1.0, beta)
    # encoder: w_commit * 2 (z - e) / N
    torch.testing.assert_close(z.grad, w_commit * 2 * (z.detach() - e) / N)
    # codebook: w_code * 2 (e - z) / N summed over the vectors assigned to each code
    expected = torch.zeros_like(vq.codebook)
    flat_z = z.detach().permute(0, 2, 3, 1).reshape(-1, 4)
    flat_e = e.permute(0, 2, 3, 1).reshape(-1, 4)
    expected.index_add_(0, out.indices.flatten(), w_code * 2 * (flat_e - flat_z) / N)
    torch.testing.assert_close(vq.codebook.grad, expected)


def test_straight_through_passes_the_decoder_gradient_unchanged():
    vq = VectorQuantizer(8, 4)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    g = torch.randn(2, 4, 3, 3)
    (vq(z).z_q * g).sum().backward()
    torch.testing.assert_close(z.grad, g)


def test_nearest_code_matches_brute_force_and_lookup():
    vq = VectorQuantizer(32, 6).eval()
    vq.codebook.data.normal_()
    z = torch.randn(3, 6, 5, 4)
    out = vq(z)
    assert torch.equal(out.indices, brute_force_nearest(z, vq.codebook.detach()))
    torch.testing.assert_close(out.z_q, vq.lookup(out.indices))
    assert out.indices.dtype == torch.int64 and out.indices.shape == (3, 5, 4)


def test_cosine_codebook_picks_the_largest_cosine():
    vq = VectorQuantizer(16, 4, cosine=True).eval()
    z = torch.randn(2, 4, 3, 3)
    out = vq(z)
    cos = F.normalize(z.permute(0, 2, 3, 1), dim=-1) @ F.normalize(vq.codebook.detach(), dim=-1).t()
    assert torch.equal(out.indices, cos.argmax(-1))
    torch.testing.assert_close(out.z_q.norm(dim=1), torch.ones(2, 3, 3))


def test_factorised_lookup_runs_in_the_small_dimension():
    vq = VectorQuantizer(16, 8, codebook_dim=2)
    assert vq.codebook.shape == (16, 2)
    z = torch.randn(2, 8, 3, 3, requires_grad=True)
    out = vq(z)
    assert out.z_q.shape == z.shape
    out.loss.backward()
    assert vq.proj_in.weight.grad is not None and vq.codebook.grad is not None


def test_ema_update_matches_a_hand_computation():
    K, D, g, eps = 3, 2, 0.9, 1e-5
    vq = VectorQuantizer(K, D, ema=True, decay=g)
    vq.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 5.0]]))
    vq.embed_sum.copy_(vq.codebook)
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 11.0]]).t().reshape(1, D, 1, 3)
    vq.train()(z)
    n_i = torch.tensor([2.0, 1.0, 0.0])
    N = (1 - g) * n_i  # cluster sizes start at 0
    m = torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 5.0]]) * g + (1 - g) * torch.tensor(
        [[1.0, 1.0], [9.0, 11.0], [0.0, 0.0]]
    )
    smoothed = (N + eps) / (N.sum() + K * eps) * N.sum()
    torch.testing.assert_close(vq.cluster_size, N)
    torch.testing.assert_close(vq.codebook, m / smoothed[:, None])


def test_ema_codebook_gets_no_gradient_and_loss_is_the_commitment():
    vq = VectorQuantizer(8, 4, ema=True, beta=0.25)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = vq.eval()(z)
    torch.testing.assert_close(out.loss, 0.25 * out.commitment_loss)
    assert not vq.codebook.requires_grad


def test_kmeans_init_places_codes_on_the_clusters():
    torch.manual_seed(0)
    centres = torch.tensor([[5.0, 5.0], [-5.0, 5.0], [0.0, -6.0]])
    x = (centres[torch.arange(300) % 3] + 0.1 * torch.randn(300, 2)).t().reshape(1, 2, 15, 20)
    vq = VectorQuantizer(3, 2, kmeans_init=True).train()
    assert not bool(vq.initialised)
    vq(x)
    assert bool(vq.initialised)
    err = torch.cdist(centres, vq.codebook.detach()).min(1).values
    assert err.max() < 0.1
    # the cluster helper itself
    c, counts = kmeans(x.flatten(2).squeeze(0).t(), 3)
    assert counts.sum() == 300


def test_restart_reseeds_dead_codes_from_the_batch():
    vq = VectorQuantizer(8, 2, ema=True, restart_after=2).train()
    vq.codebook.copy_(torch.tensor([[0.0, 0.0]] + [[100.0 + i, 100.0] for i in range(7)]))
    vq.embed_sum.copy_(vq.codebook)
    z = torch.randn(1, 2, 4, 4)
    for _ in range(2):
        vq(z)
    # codes 1..7 were never chosen for 2 steps: re-seeded from batch vectors, EMA state reset
    flat = z.permute(0, 2, 3, 1).reshape(-1, 2)
    for k in range(1, 8):
        assert torch.cdist(vq.codebook[k : k + 1], flat).min() < 1e-5
        assert vq.cluster_size[k] == 1.0
    assert (vq.restart_clock[1:] == 0).all()
    before = vq.usage().item()
    out = vq(z)  # re-seeded codes now win some vectors
    assert out.indices.unique().numel() > 1 and out.usage.item() >= before


def test_usage_and_perplexity():
    idx = torch.tensor([0, 0, 1, 1])
    torch.testing.assert_close(codebook_perplexity(idx, 4), torch.tensor(2.0))
    torch.testing.assert_close(codebook_perplexity(torch.arange(4), 4), torch.tensor(4.0))
    vq = VectorQuantizer(4, 2).eval()
    vq.codebook.data.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]]))
    out = vq(torch.zeros(1, 2, 2, 2))
    assert out.usage.item() == 0.25 and out.perplexity.item() == pytest.approx(1.0)


def test_autocast_bf16_gives_the_fp32_indices():
    torch.manual_seed(0)
    vq = VectorQuantizer(512, 16).eval()
    vq.codebook.data.normal_()
    z = torch.randn(4, 16, 8, 8)
    ref = vq(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vq(z)
    assert torch.equal(out.indices, ref.indices)
    assert out.loss.dtype == torch.float32


def test_bad_input():
    with pytest.raises(ValueError, match="at least 2 codes"):
        VectorQuantizer(1, 4)
    with pytest.raises(ValueError, match="at least 2 codes"):
        GumbelQuantizer(1, 4, 4)
    vq = VectorQuantizer(8, 4)
    with pytest.raises(ValueError, match=r"\[0, 8\).*\[0, 8\]"):
        vq.lookup(torch.tensor([[[0, 8]]]))
    with pytest.raises(ValueError, match=r"\[-1, 3\]"):
        vq.lookup(torch.tensor([[[-1, 3]]]))
    with pytest.raises(ValueError, match="integer"):
        vq.lookup(torch.zeros(1, 1, 1))
    with pytest.raises(ValueError, match="4 channels, got 3"):
        vq(torch.randn(1, 3, 2, 2))
    with pytest.raises(ValueError, match="beta_placement"):
        VectorQuantizer(8, 4, beta_placement="taming")


# ------------------------------------------------------------------ Gumbel / dVAE


def test_gumbel_eval_is_argmax_and_deterministic():
    q = GumbelQuantizer(16, 4, 3).eval()
    h = torch.randn(2, 4, 3, 3)
    a, b = q(h), q(h)
    assert torch.equal(a.z_q, b.z_q)
    assert torch.equal(a.indices, q.proj(h).argmax(1))
    torch.testing.assert_close(a.z_q, q.lookup(a.indices))


def test_gumbel_kl_to_uniform_prior():
    q = GumbelQuantizer(4, 2, 3, kl_weight=1.0)
    nn_init = torch.nn.init
    nn_init.zeros_(q.proj.weight), nn_init.zeros_(q.proj.bias)
    assert q(torch.randn(1, 2, 2, 2)).loss.abs() < 1e-6  # uniform q: KL = 0
    q.proj.bias.data = torch.tensor([20.0, 0.0, 0.0, 0.0])
    # nearly one-hot q: KL -> log K
    assert q(torch.randn(1, 2, 2, 2)).loss.item() == pytest.approx(math.log(4), abs=1e-3)


def test_gumbel_training_samples_relaxed_or_hard_codes_with_gradients():
    h = torch.randn(2, 4, 3, 3, requires_grad=True)
    soft = GumbelQuantizer(8, 4, 3, temperature=1.0).train()
    out = soft(h)
    out.z_q.sum().backward()
    assert h.grad is not None and soft.codebook.grad is not None
    hard = GumbelQuantizer(8, 4, 3, straight_through=True).train()
    out = hard(h)
    # hard samples are exactly code vectors
    torch.testing.assert_close(out.z_q, hard.lookup(out.indices))
    with pytest.raises(ValueError, match="temperature"):
        GumbelQuantizer(8, 4, 3, temperature=0.0)


# ------------------------------------------------------------------ peer parity


def test_parity_with_vector_quantize_pytorch():
    vqp = pytest.importorskip("vector_quantize_pytorch")
    torch.manual_seed(0)
    K, D = 16, 4
    peer = vqp.VectorQuantize(dim=D, codebook_size=K, decay=0.9, commitment_weight=0.25, accept_image_fmap=True)
    ours = VectorQuantizer(K, D, ema=True, decay=0.9, beta=0.25)
    ours.codebook.copy_(peer._codebook.embed[0])
    ours.embed_sum.copy_(peer._codebook.embed_avg[0])
    ours.cluster_size.copy_(peer._codebook.cluster_size[0])
    z = torch.randn(2, D, 4, 4)
    # one EMA training step: same codes, quantised vectors, loss and updated codebook
    peer.train(), ours.train()
    q_p, idx_p, loss_p = peer(z)
    out = ours(z)
    assert torch.equal(out.indices, idx_p)
    torch.testing.assert_close(out.z_q, q_p)
    torch.testing.assert_close(out.loss, loss_p.reshape(()))
    torch.testing.assert_close(ours.codebook, peer._codebook.embed[0], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ DDP synchronisation


def _ddp_worker(rank: int, world: int, port: int, folder: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 2, ema=True, kmeans_init=True, decay=0.9).train()
    z = torch.randn(2 * world, 2, 3, 3)
    vq(z[2 * rank : 2 * rank + 2])  # each rank sees its own half of the batch
    torch.save({"codebook": vq.codebook, "size": vq.cluster_size}, f"{folder}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_ema_and_kmeans_are_synchronised_across_ranks(tmp_path):
    import os

    import torch.multiprocessing as mp

    port = 29600 + os.getpid() % 1000
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    torch.testing.assert_close(r0["codebook"], r1["codebook"])
    # the counts are the whole (two-rank) batch's: 2 ranks x 2 images x 9 positions, after one EMA step
    n_kmeans = 36.0
    assert r0["size"].sum().item() == pytest.approx(0.9 * n_kmeans + 0.1 * 36.0)


def test_single_process_never_calls_a_collective(monkeypatch):
    import torch.distributed as dist

    def boom(*a, **k):
        raise AssertionError("collective called in a single process")

    monkeypatch.setattr(dist, "all_reduce", boom)
    monkeypatch.setattr(dist, "broadcast", boom)
    vq = VectorQuantizer(8, 2, ema=True, kmeans_init=True, restart_after=1).train()
    for _ in range(3):
        out = vq(torch.randn(2, 2, 3, 3))  # k-means, EMA and restarts all ran: `boom` would have raised
    assert torch.isfinite(out.loss)
