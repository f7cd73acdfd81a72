"""DiffusionTask through the engine (`tessera fit`), `tessera sample` on its run, and the Fréchet distance."""

import json

import pytest
import torch
import yaml

from tessera.eval.frechet import feature_stats, frechet_distance, frechet_distance_features, sqrtm_psd

# ------------------------------------------------------------------ Fréchet distance


def test_frechet_distance_closed_forms():
    f = torch.randn(500, 6)
    assert frechet_distance_features(f, f) == pytest.approx(0.0, abs=1e-8)
    # diagonal covariances: FD = ||mu1 - mu2||^2 + sum (sqrt(s1) - sqrt(s2))^2
    mu1, mu2 = torch.zeros(3), torch.tensor([1.0, 0.0, 2.0])
    s1, s2 = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 4.0, 1.0])
    expected = 5.0 + (1 - 2) ** 2 + 0 + (3 - 1) ** 2
    assert frechet_distance(mu1, torch.diag(s1), mu2, torch.diag(s2)) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_equals_scipy_sqrtm():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, 8, generator=g), torch.randn(200, 8, generator=g) @ torch.randn(8, 8, generator=g) + 0.5
    mu1, c1 = feature_stats(a)
    mu2, c2 = feature_stats(b)
    covmean = scipy_linalg.sqrtm(c1.numpy() @ c2.numpy()).real
    ref = ((mu1 - mu2) ** 2).sum().item() + c1.trace().item() + c2.trace().item() - 2 * covmean.trace()
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(ref, rel=1e-6)
    s = sqrtm_psd(c1)
    assert torch.allclose(s @ s, c1, atol=1e-8)
    with pytest.raises(ValueError, match="N >= 2"):
        feature_stats(torch.randn(1, 4))


# ------------------------------------------------------------------ training through the engine

TINY_RUN = {
    "seed_everything": 0,
    "trainer": {
        "max_epochs": 1,
        "limit_train_batches": 3,
        "limit_val_batches": 1,
        "num_sanity_val_steps": 0,
        "enable_progress_bar": False,
        "log_every_n_steps": 1,
        "accelerator": "cpu",
        "devices": 1,
    },
    "model": {
        "class_path": "tessera.train.diffusion.DiffusionTask",
        "init_args": {
            "unet": "unet_digits",
            "unet_args": {"widths": [8, 16], "norm_groups": 4, "attn_resolutions": [4]},
            "T": 20,
            "warmup_steps": 1,
            "ema_decay": 0.9,
            "num_samples": 4,
            "sample_steps": 2,
            "lr": 1e-3,
        },
    },
    "data": {
        "class_path": "tessera.data.DigitsDataModule",
        "init_args": {"img_size": 8, "in_chans": 1, "batch_size": 8, "normalize": "signed", "augment": {"enabled": False}},
    },
    "checkpoint": {"every_n_train_steps": 2},
    "test_after_fit": False,
}


@pytest.mark.slow
def test_diffusion_task_trains_through_tessera_fit_and_samples(tmp_path, capsys, one_thread):
    pytest.importorskip("lightning")
    from tessera.cli import main

    cfg = json.loads(json.dumps(TINY_RUN))
    run = tmp_path / "run"
    cfg["trainer"]["default_root_dir"] = str(run)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["fit", "--config", str(tmp_path / "c.yaml")]) == 0
    for name in ("model.safetensors", "config.json", "diffusion.json", "samples.png", "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    spec = json.loads((run / "diffusion.json").read_text())
    assert spec["T"] == 20 and spec["prediction"] == "eps"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert "tessera_ema" in ckpt and ckpt["global_step"] >= 2

    # tessera sample on the run: seeded, reproducible, individual images on request
    out1, out2 = tmp_path / "a.png", tmp_path / "b.png"
    args = ["sample", "--checkpoint", str(run), "--num", "3", "--steps", "2", "--seed", "5"]
    assert main([*args, "--out", str(out1), "--save-images", str(tmp_path / "imgs")]) == 0
    assert main([*args, "--out", str(out2)]) == 0
    assert out1.read_bytes() == out2.read_bytes()
    assert len(list((tmp_path / "imgs").glob("*.png"))) == 3
    assert main(["sample", "--checkpoint", str(run), "--num", "1", "--sampler", "ddpm", "--out", str(tmp_path / "c.png")]) == 0
    # eps from the clipped x0: a different image from plain clipping (the random model's x0 leaves [-1, 1])
    clipped = [*args, "--clip-x0", "--out"]
    assert main([*clipped, str(tmp_path / "d.png")]) == 0
    assert main([*clipped, str(tmp_path / "e.png"), "--eps-from-clipped-x0"]) == 0
    assert (tmp_path / "d.png").read_bytes() != (tmp_path / "e.png").read_bytes()
    # bad input: one clear line
    assert main(["sample", "--checkpoint", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "f.png"), "--eps-from-clipped-x0"]) == 2
    assert "needs --clip-x0" in capsys.readouterr().err
