"""EnergyTask through `tessera fit`: a tiny run, exact resume including the replay buffer, the divergence guard."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from tessera.energy import ReplayBuffer

TINY = {
    "seed_everything": 0,
    "trainer": {
        "max_steps": 6,
        "max_epochs": -1,
        "limit_val_batches": 1,
        "val_check_interval": 3,
        "check_val_every_n_epoch": None,
        "num_sanity_val_steps": 0,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "log_every_n_steps": 1,
        "accelerator": "cpu",
        "devices": 1,
    },
    "model": {
        "class_path": "tessera.train.energy.EnergyTask",
        "init_args": {
            "model": "ebm_mlp_2d",
            "model_args": {"hidden": 16, "depth": 2},
            "sgld_steps": 3,
            "buffer_size": 64,
            "grid_size": 24,
        },
    },
    "data": {
        "class_path": "tessera.data.toy2d.Toy2DDataModule",
        "init_args": {"dataset": "8gaussians", "n_train": 160, "n_val": 50, "n_test": 50, "batch_size": 32},
    },
    "checkpoint": {"every_n_train_steps": 2},
    "test_after_fit": False,
}


pytestmark = pytest.mark.usefixtures("one_thread")


def fit(tmp_path, name: str, *extra: str, cfg: dict | None = None) -> int:
    from tessera.cli import main

    cfg = json.loads(json.dumps(cfg or TINY))
    cfg["trainer"]["default_root_dir"] = str(tmp_path / name)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return main(["fit", "--config", str(path), *extra])


def test_replay_buffer_draws_reinitialises_and_pushes():
    buf = ReplayBuffer(100, (2,), -1.0, 1.0, reinit_prob=0.0)
    assert buf.samples.shape == (100, 2) and buf.samples.abs().max() <= 1
    x, idx = buf.draw(10, torch.Generator().manual_seed(0))
    assert torch.equal(x, buf.samples[idx])
    buf.push(torch.full((10, 2), 7.0), idx)
    assert (buf.samples[idx] == 7).all()
    fresh = ReplayBuffer(100, (2,), -1.0, 1.0, reinit_prob=1.0)
    fresh.samples.fill_(7.0)
    x, _ = fresh.draw(50, torch.Generator().manual_seed(0))
    assert x.abs().max() <= 1  # all fresh noise
    some = ReplayBuffer(4000, (2,), -1.0, 1.0, reinit_prob=0.05)
    some.samples.fill_(7.0)
    x, _ = some.draw(4000, torch.Generator().manual_seed(0))
    share = float((x[:, 0] != 7).float().mean())
    assert 0.05 - 4 * 0.0035 < share < 0.05 + 4 * 0.0035  # binomial standard error sqrt(.05 .95 / 4000)
    with pytest.raises(ValueError, match="reinit_prob"):
        ReplayBuffer(10, (2,), reinit_prob=1.5)
    assert "samples" in buf.state_dict()


@pytest.mark.slow
def test_tiny_fit_writes_metrics_density_and_exported_energy(tmp_path, one_thread):
    import tessera

    assert fit(tmp_path, "run") == 0
    run = tmp_path / "run"
    for f in ("model.safetensors", "density.png", "checkpoints/last.ckpt", "metrics.csv"):
        assert (run / f).is_file(), f
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["state_dict"]["buffer.samples"].shape == (64, 2)
    text = (run / "metrics.csv").read_text()
    assert "val/loglik" in text and "val/mmd" in text and "train/e_neg" in text
    model = tessera.create_model("ebm_mlp_2d", checkpoint=run)
    assert model.energy(torch.zeros(3, 2)).shape == (3,)
    # the measurement commands run on the run folder
    from tessera.cli import main

    assert main(["ebm-eval", "samplers", "--run", str(run), "--steps", "20"]) == 0
    report = json.loads((run / "ebm_eval_samplers.json").read_text())
    assert set(report["samplers"]) >= {"metropolis_s0.5", "langevin_eps0.01", "mala_eps0.05"}


@pytest.mark.slow
def test_resume_mid_epoch_matches_the_uninterrupted_run_including_the_buffer(tmp_path, one_thread):
    assert fit(tmp_path, "ref") == 0
    # 160 / 32 = 5 batches per epoch: stop after 4 steps (mid-epoch), resume to 6 (across the epoch end)
    assert fit(tmp_path, "cut", "--trainer.max_steps", "4") == 0
    cut = torch.load(tmp_path / "cut" / "checkpoints" / "last.ckpt", weights_only=True)
    assert cut["global_step"] == 4
    assert fit(tmp_path, "cut", "--ckpt_path", "last") == 0
    a = torch.load(tmp_path / "ref" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 6
    assert not torch.equal(a["state_dict"]["buffer.samples"], cut["state_dict"]["buffer.samples"])
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    sa, sb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)


@pytest.mark.slow
def test_divergence_guard_stops_naming_the_step(tmp_path, one_thread, capsys):
    cfg = json.loads(json.dumps(TINY))
    cfg["model"]["init_args"]["energy_bound"] = 1e-6
    assert fit(tmp_path, "bad", cfg=cfg) == 1
    err = capsys.readouterr().err
    assert "energies diverged at step 0" in err


def test_bad_task_settings_are_clear_errors():
    from tessera.train.energy import EnergyTask

    with pytest.raises(ValueError, match="step_size"):
        EnergyTask(sgld_step_size=0.0)
    with pytest.raises(ValueError, match="alpha"):
        EnergyTask(alpha=-1.0)
