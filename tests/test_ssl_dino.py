"""DINO / DINOv2 wrappers: schedules, loss terms, centre and teacher updates, multi-crop, bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import tessera
from tessera.core import tiny_overrides
from tessera.ssl.dino import (
    DINOHead,
    cross_view_loss,
    sinkhorn_knopp,
    teacher_momentum,
    teacher_temperature,
)
from tessera.ssl.dinov2 import ibot_loss, koleo_loss
from tessera.ssl.multicrop import MultiCrop, random_resized_crops


def tiny(name="dino_vit_small_patch16_224", **kw):
    return tessera.create_model(name, **{**tiny_overrides(name), **kw})


def test_schedules_follow_the_paper():
    assert teacher_temperature(0, 30) == pytest.approx(0.04)
    assert teacher_temperature(15, 30) == pytest.approx(0.055)
    assert teacher_temperature(30, 30) == teacher_temperature(99, 30) == pytest.approx(0.07)
    assert teacher_momentum(0, 100) == pytest.approx(0.996)
    assert teacher_momentum(50, 100) == pytest.approx(0.998)
    assert teacher_momentum(100, 100) == pytest.approx(1.0)


def test_cross_view_loss_skips_identical_views():
    torch.manual_seed(0)
    s = [torch.randn(3, 5) for _ in range(4)]  # 2 global + 2 local student views
    t = [torch.randn(3, 5).softmax(-1) for _ in range(2)]
    terms = [
        (-t[a] * F.log_softmax(s[b] / 0.1, -1)).sum(-1).mean() for a in range(2) for b in range(4) if a != b
    ]
    assert len(terms) == 6
    torch.testing.assert_close(cross_view_loss(s, t, 0.1), torch.stack(terms).mean())


def test_head_last_layer_is_weight_normalised_and_bottleneck_l2():
    head = DINOHead(8, 16, hidden_dim=12, bottleneck_dim=4)
    assert head.last_layer.g is None  # norm_last_layer: g fixed to 1
    x = torch.randn(5, 8)
    z = F.normalize(head.mlp(x), dim=-1)
    w = head.last_layer.v / head.last_layer.v.norm(dim=1, keepdim=True)
    torch.testing.assert_close(head(x), z @ w.t())
    assert sum(isinstance(m, torch.nn.Linear) for m in head.mlp) == 3
    assert DINOHead(8, 16, 12, 4, norm_last_layer=False).last_layer.g is not None


def test_bn_head_standardises_the_batch_in_the_eval_mode_teacher_too():
    # The official teacher runs in train mode, so its head's BatchNorm uses batch statistics; tessera's
    # EMA teacher runs in eval mode, where a BatchNorm with running statistics would not remove the
    # batch's common part (and the near-identical random-init features of small data would collapse).
    torch.manual_seed(0)
    model = tiny(use_bn_in_head=True)
    bns = [m for m in model.teacher.module.head.mlp if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(bns) == 2 and not model.teacher.module.training
    C = bns[0].num_features
    y = bns[0](torch.randn(6, C) + 5.0)  # a large common part
    torch.testing.assert_close(y.mean(0), torch.zeros(C), atol=1e-5, rtol=0)
    # patch tokens (B, N, C) go through the same head
    head = DINOHead(8, 16, hidden_dim=12, bottleneck_dim=4, use_bn=True).eval()
    tokens = torch.randn(3, 5, 8)
    torch.testing.assert_close(head(tokens).reshape(15, 16), head(tokens.reshape(15, 8)))
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in tiny().student.head.mlp)  # off by default


def test_forward_changes_no_state_and_updates_do():
    model = tiny().train()
    g, l = model.example_inputs(4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = model(g, l, teacher_temp=0.04)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert float(out.teacher_temp) == pytest.approx(0.04)
    # centre: c <- 0.9 c + 0.1 batch mean of the teacher logits
    model.update_center(out)
    torch.testing.assert_close(model.center, 0.1 * out.batch_center)
    # teacher: theta_t <- lambda theta_t + (1 - lambda) theta_s
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(1.0)
    model.update_teacher(0.75)
    for (n, ps), pt in zip(model.student.named_parameters(), model.teacher.module.parameters()):
        torch.testing.assert_close(pt, 0.75 * before[f"teacher.module.{n}"] + 0.25 * ps, msg=n)


def test_centre_is_averaged_over_ranks_when_a_group_is_up(tmp_path):
    import torch.distributed as dist

    model = tiny()
    out = model(*model.example_inputs(2))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model.update_center(out)  # all_reduce over one rank: the same as alone
    finally:
        dist.destroy_process_group()
    torch.testing.assert_close(model.center, 0.1 * out.batch_center)


def test_collapse_diagnostics_tell_uniform_from_one_hot():
    model = tiny()
    g, l = model.example_inputs(4)
    with torch.no_grad():
        healthy = model(g, l)
        uniform = model(g, l, teacher_temp=1e4)  # a hot teacher: uniform targets
    K = model.config.out_dim
    assert float(uniform.teacher_entropy) == pytest.approx(math.log(K), rel=1e-3)
    assert model.collapse(uniform) == "uniform"
    assert float(healthy.teacher_entropy) < 0.9 * math.log(K)
    with torch.no_grad():
        model.center.zero_()
        model.center[0, 3] = -1e3  # ... a centre far from the outputs: the KL grows
        far = model(g, l)
    assert far.kl_teacher_center > healthy.kl_teacher_center
    one_hot = type(healthy)(**{**vars(healthy), "teacher_entropy": torch.tensor(0.0),
                               "teacher_batch_entropy": torch.tensor(0.0)})
    assert model.collapse(one_hot) == "one-hot"


def test_sinkhorn_balances_prototypes():
    torch.manual_seed(0)
    q = sinkhorn_knopp(torch.randn(16, 8) * 0.3, temp=0.1, iterations=50)
    torch.testing.assert_close(q.sum(1), torch.ones(16), atol=1e-4, rtol=0)
    torch.testing.assert_close(q.sum(0), torch.full((8,), 2.0), atol=1e-3, rtol=0)


def test_koleo_grows_when_two_features_meet():
    spread = torch.eye(4)
    close = spread.clone()
    close[1] = close[0] + 1e-3
    assert koleo_loss(close) > koleo_loss(spread)
    assert koleo_loss(spread) == pytest.approx(-math.log(math.sqrt(2)), abs=1e-5)


def test_ibot_averages_per_image():
    mask = torch.tensor([[True, True, False], [False, False, False], [True, False, False]])
    s = torch.randn(3, 4)
    t = torch.randn(3, 4).softmax(-1)
    ce = (-t * F.log_softmax(s / 0.1, -1)).sum(-1)
    expected = ((ce[0] + ce[1]) / 2 + ce[2]) / 3
    torch.testing.assert_close(ibot_loss(s, t, mask, 0.1), expected)


def test_dinov2_masks_only_the_student_and_has_all_terms():
    model = tiny("dinov2_vit_small_patch14", centering="centering")
    g, l, mask = model.example_inputs(2)
    with torch.no_grad():
        out = model(g, l, mask)
        same = model(g, l, mask)
        other = model(g, l, torch.zeros_like(mask))
    torch.testing.assert_close(out.loss, same.loss)
    assert out.ibot_loss > 0 and float(other.ibot_loss) == 0.0
    torch.testing.assert_close(out.loss, out.dino_loss + out.ibot_loss + 0.1 * out.koleo_loss)
    model.update_center(out)
    torch.testing.assert_close(model.patch_center, 0.1 * out.batch_patch_center)
    with pytest.raises(ValueError, match="mask"):
        model(g, l, mask[:, :-1])


def test_multicrop_shapes_and_seeded_draws():
    x = torch.rand(3, 1, 32, 32)
    mc = MultiCrop(global_size=32, local_size=16, num_local=4)
    g1, l1 = mc(x, torch.Generator().manual_seed(0))
    g2, l2 = mc(x, torch.Generator().manual_seed(0))
    assert g1.shape == (2, 3, 1, 32, 32) and l1.shape == (4, 3, 1, 16, 16)
    assert torch.equal(g1, g2) and torch.equal(l1, l2)
    assert not torch.equal(g1[0], g1[1])


def test_full_crop_is_the_identity():
    x = torch.rand(2, 3, 16, 16)
    y = random_resized_crops(x, 16, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0)
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)
    flipped = random_resized_crops(x, 16, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=1.0)
    torch.testing.assert_close(flipped, x.flip(-1), atol=1e-5, rtol=0)


def test_translate_shifts_each_crop_by_at_most_that_many_pixels():
    x = torch.zeros(64, 1, 16, 16)
    x[..., 8, 8] = 1.0  # a point: its centroid in the crop tells the shift
    g = torch.Generator().manual_seed(0)
    y = random_resized_crops(x, 16, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, generator=g, translate=3)
    grid = torch.arange(16.0)
    w = y[:, 0]
    cy = (w.sum(2) * grid).sum(1) / w.sum((1, 2))
    cx = (w.sum(1) * grid).sum(1) / w.sum((1, 2))
    shift = torch.stack([cy - 8, cx - 8], 1)
    assert shift.abs().max() <= 3 + 1e-4
    assert shift.abs().max() > 2  # it does shift, by different amounts per image
    assert shift.std(0).min() > 0.5
    # off by default: the same draws as before (no extra random numbers)
    a = random_resized_crops(x, 16, (0.5, 1.0), generator=torch.Generator().manual_seed(1))
    b = random_resized_crops(x, 16, (0.5, 1.0), generator=torch.Generator().manual_seed(1), translate=0)
    assert torch.equal(a, b)


def test_fine_tuning_the_frozen_teacher_trains_its_weights():
    # DINO's features_encoder is the EMA teacher, whose parameters never take gradients: fine-tuning
    # a copy of it must still train the encoder, not only the new linear head.
    from tessera.eval.probe import fine_tune

    torch.manual_seed(0)
    model = tiny()
    teacher = model.features_encoder
    assert not any(p.requires_grad for p in teacher.parameters())
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 2
    res = fine_tune(teacher, (x, y), (x, y), epochs=2, lr=1e-2, batch_size=4)
    before = dict(teacher.named_parameters())
    changed = [n for n, p in res.classifier.encoder.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) > len(before) // 2
    assert not any(p.requires_grad for p in teacher.parameters())  # the original is left as it is


def test_bad_views_are_clear_errors():
    model = tiny()
    g, l = model.example_inputs(2)
    with pytest.raises(ValueError, match="5-D"):
        model(g[0])
    with pytest.raises(ValueError, match="smaller than one patch"):
        model(g, torch.randn(2, 2, 3, 2, 2))
    with pytest.raises(ValueError, match="local_views"):
        model(g, l[:, :1])
    with pytest.raises(ValueError, match="not an encoder"):
        tessera.create_model("dino_vit_small_patch16_224", encoder="unet_digits")
    with pytest.raises(ValueError, match="mask_ratio_min"):
        tiny("dinov2_vit_small_patch14", mask_ratio_min=0.0)
