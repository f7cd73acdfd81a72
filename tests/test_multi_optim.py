"""The multi-optimizer task base (tessera.train.multi_optim) and the tokenizer task on it:
schedules per optimizer, clipping of unscaled gradients, states in the checkpoint, exact resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tessera.train.multi_optim import MultiOptimizerTask, OptimizerSpec


class TwoNets(MultiOptimizerTask):
    """Two linear maps, each with its own optimizer, loss and schedule; records the gradient it clipped."""

    def __init__(self, clip: float = 0.0) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 1), torch.nn.Linear(4, 1)
        self.clip = clip
        self.seen: list[tuple[str, float, float]] = []

    def optimizer_specs(self):
        return [
            OptimizerSpec("a", 0.1, warmup_steps=2, min_lr_ratio=0.5, clip_grad_norm=self.clip),
            OptimizerSpec("b", 0.01, clip_grad_norm=self.clip),
        ]

    def optimizer_params(self, name):
        return getattr(self, name).parameters()

    def training_step(self, batch, batch_idx):
        (x,) = batch
        for name in ("a", "b"):
            net = getattr(self, name)
            loss = (net(x).float() * 1000).square().mean()
            # the true gradient norm, by autograd in fp32 outside the scaler
            with torch.autocast("cpu", enabled=False):
                true = (net(x.float()) * 1000).square().mean()
            g = torch.autograd.grad(true, list(net.parameters()))
            self.step_optimizer(name, loss)
            self.seen.append((name, float(torch.linalg.vector_norm(torch.stack([t.norm() for t in g]))), self.last_grad_norm[name]))
        self.finish_step()


def fit(task, steps=4, precision="32-true"):
    data = DataLoader(TensorDataset(torch.randn(16, 4)), batch_size=4)
    trainer = L.Trainer(max_steps=2 * steps, accelerator="cpu", precision=precision, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(task, data)
    return trainer


def test_each_optimizer_has_its_schedule_and_the_step_count_is_per_batch():
    task = TwoNets()
    trainer = fit(task, steps=4)
    assert int(task.step_count) == 4 and trainer.global_step == 8  # global_step counts optimizer steps
    sa, sb = (s["scheduler"] if isinstance(s, dict) else s for s in trainer.lr_scheduler_configs)
    assert sa.scheduler.last_epoch == 4 and sb.scheduler.last_epoch == 4
    assert task.current_lr("b") == pytest.approx(0.01)
    assert task.current_lr("a") < 0.1  # cosine towards 0.05 after the 2-step warm-up


def test_clipping_bounds_each_optimizers_gradient():
    task = TwoNets(clip=0.5)
    fit(task, steps=2)
    for p in list(task.a.parameters()) + list(task.b.parameters()):
        assert p.grad is None or p.grad.norm() <= 0.5 + 1e-5


def test_clipping_sees_unscaled_gradients_under_16_bit_mixed_precision():
    task = TwoNets(clip=0.0)
    try:
        fit(task, steps=2, precision="16-mixed")
    except (RuntimeError, ValueError) as err:  # a Lightning/torch build without CPU fp16 autocast
        pytest.skip(f"16-mixed on CPU unavailable: {err}")
    # the norm clipped is the true one (fp16 rounding aside), not the one multiplied by the loss scale (65536)
    for name, true, seen in task.seen:
        if seen == seen and seen != float("inf"):
            assert seen == pytest.approx(true, rel=2e-2), name


def test_optimizer_specs_are_checked():
    with pytest.raises(ValueError, match="lr"):
        OptimizerSpec("g", 0.0)
    with pytest.raises(ValueError, match="clip_grad_norm"):
        OptimizerSpec("g", 1e-3, clip_grad_norm=-1)


# ------------------------------------------------------------------ exact resume after SIGKILL (tokenizer task)

KILLER = '''
import os, signal
import lightning as L

class KillAtStep(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
'''

MAIN = '''
import sys
sys.path.insert(0, {here!r})
from tessera.train.cli import lightning_main
sys.exit(lightning_main(sys.argv[1:]))
'''

TINY_VQGAN = {"channels": [8, 16], "layers_per_block": 1, "norm_groups": 4, "latent_channels": 4, "embed_dim": 4,
              "num_codes": 16, "disc_layers": 2, "disc_channels": 8, "disc_start": 3, "ema": True,
              "kmeans_init": True, "restart_after": 2, "dropout": 0.1}


def _argv(root: Path, *extra: str) -> list[str]:
    # digits: 1257 training images / 128 = 9 batches per epoch; the generator and (from batch 3)
    # the discriminator step, so global_step (optimizer steps) grows by 2 per batch after batch 3.
    return [
        "fit",
        "--model", "tessera.train.tokenizer.TokenizerTask",
        "--model.model_name", "vqgan_f4",
        "--model.model_args", json.dumps(TINY_VQGAN),
        "--model.lr", "1e-3", "--model.warmup_steps", "3", "--model.min_lr_ratio", "0.1",
        "--model.clip_grad_norm", "1.0", "--model.ema_decay", "0.9", "--model.num_grid", "4",
        "--data", "tessera.data.DigitsDataModule",
        "--data.img_size", "16", "--data.in_chans", "3", "--data.batch_size", "128", "--data.normalize", "signed",
        "--data.augment.enabled", "false",
        "--trainer.default_root_dir", str(root),
        "--trainer.max_epochs", "2",
        "--trainer.limit_val_batches", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.num_sanity_val_steps", "0",
        "--trainer.log_every_n_steps", "1",
        "--checkpoint.every_n_train_steps", "1",
        "--test_after_fit", "false",
        *extra,
    ]


def _run(tmp_path: Path, argv: list[str]) -> subprocess.CompletedProcess:
    (tmp_path / "killer.py").write_text(KILLER)
    script = tmp_path / "main.py"
    script.write_text(MAIN.format(here=str(tmp_path)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, env=env,
                          timeout=600, cwd=tmp_path)


@pytest.mark.slow
def test_tokenizer_task_resumes_exactly_after_sigkill(tmp_path):
    ref = _run(tmp_path, _argv(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr[-3000:]
    # batch 13 ends at global_step 3 + 2 * 10 = 23 (batches 0-2: generator only)
    killed = _run(tmp_path, _argv(tmp_path / "cut", "--trainer.callbacks+=killer.KillAtStep",
                                  "--trainer.callbacks.step=23"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    mid = torch.load(tmp_path / "cut" / "checkpoints" / "last.ckpt", weights_only=True)
    assert mid["global_step"] == 21 and int(mid["state_dict"]["step_count"]) == 12
    resumed = _run(tmp_path, _argv(tmp_path / "cut", "--ckpt_path", "last"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = torch.load(tmp_path / "ref" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 33 and int(b["state_dict"]["step_count"]) == 18
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    for key in a["tessera_ema"]["shadow"]:
        assert torch.equal(a["tessera_ema"]["shadow"][key], b["tessera_ema"]["shadow"][key]), key
    assert len(a["optimizer_states"]) == len(b["optimizer_states"]) == 2
    for oa, ob in zip(a["optimizer_states"], b["optimizer_states"]):
        for i in oa["state"]:
            assert torch.equal(oa["state"][i]["exp_avg_sq"], ob["state"][i]["exp_avg_sq"])
    assert [s["last_epoch"] for s in a["lr_schedulers"]] == [s["last_epoch"] for s in b["lr_schedulers"]] == [18, 15]
    assert (tmp_path / "ref" / "reconstructions.png").is_file()
    assert (tmp_path / "ref" / "model.safetensors").is_file()


# ------------------------------------------------------------------ tokenizer task parts (no trainer)


def _task(**kw):
    from tessera.core import tiny_overrides
    from tessera.train.tokenizer import TokenizerTask

    name = kw.pop("model_name", "vqvae_f4")
    task = TokenizerTask(model_name=name, model_args=tiny_overrides(name), **kw)
    task.configure_model()
    return task


def test_collapsed_codebook_is_a_warning_with_the_figures(caplog):
    task = _task(collapse_usage=0.1, collapse_steps=3)
    with caplog.at_level("WARNING", logger="tessera.train.tokenizer"):
        for step in range(2):
            task._check_collapse(step, 0.0625, 1.3)
        assert not caplog.records
        task._check_collapse(2, 0.0625, 1.3)
    text = caplog.records[0].getMessage()
    assert "collapse at step 2" in text and "(1 of 16 codes)" in text and "perplexity 1.3" in text


def test_dvae_temperature_anneals_exponentially():
    task = _task(model_name="dvae_f4", tau_start=1.0, tau_end=1 / 16, tau_steps=100)
    assert task.temperature(0) == 1.0
    assert task.temperature(50) == pytest.approx(0.25)
    assert task.temperature(100) == task.temperature(500) == pytest.approx(1 / 16)


def test_generator_and_discriminator_parameters_are_split():
    task = _task(model_name="vqgan_f4")
    gen = {id(p) for g in task.optimizer_params("generator") for p in g["params"]}
    disc = {id(p) for g in task.optimizer_params("discriminator") for p in g["params"]}
    assert gen and disc and not gen & disc
    assert gen | disc == {id(p) for p in task.model.parameters()}
    assert [s.name for s in task.optimizer_specs()] == ["generator", "discriminator"]


def test_psnr():
    from tessera.train.tokenizer import psnr

    x = torch.zeros(2, 1, 4, 4)
    assert psnr(x, x + 0.2).item() == pytest.approx(10 * torch.log10(torch.tensor(1 / 0.01)).item(), rel=1e-5)


def test_vqgan_starts_from_a_trained_vqvae_and_its_discriminator_fresh(tmp_path):
    vqvae = _task(model_name="vqvae_f4").model
    with torch.no_grad():
        for p in vqvae.parameters():
            p.add_(0.5)  # not the initial values a fresh model would have
    vqvae.save_pretrained(tmp_path / "vqvae")
    torch.manual_seed(0)
    task = _task(model_name="vqgan_f4", init_from=str(tmp_path / "vqvae"))
    torch.manual_seed(0)
    fresh = _task(model_name="vqgan_f4").model
    gan = task.model.state_dict()
    for k, v in vqvae.state_dict().items():
        torch.testing.assert_close(gan[k], v)
    for k, v in fresh.state_dict().items():
        if k.startswith("discriminator."):
            torch.testing.assert_close(gan[k], v)  # same seed, not loaded: the fresh initialisation
    # other sizes, or a folder that is not a tokenizer of this kind: a clear error naming the keys
    import tessera
    from tessera.core import tiny_overrides

    other = tessera.create_model("vqvae_f4", **{**tiny_overrides("vqvae_f4"), "num_codes": 32})
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(Exception, match="shape"):
        _task(model_name="vqgan_f4", init_from=str(tmp_path / "other"))
    tessera.create_model("autoencoder_kl_f4", **tiny_overrides("autoencoder_kl_f4")).save_pretrained(tmp_path / "kl")
    with pytest.raises(ValueError, match="does not fit VQGAN"):
        _task(model_name="vqgan_f4", init_from=str(tmp_path / "kl"))
