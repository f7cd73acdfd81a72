"""Faults during training (issue 18): two kills in a row, non-finite gradients, resume with changed
settings, stale temporary files; EMA warm-up."""

from __future__ import annotations

import signal

import pytest
import torch

from test_train_resume import _argv, _final, _run

# 1257 training digits / 256 = 4 steps per epoch (drop_last): two epochs are 8 steps
BIG_BATCH = ("--data.init_args.batch_size", "256")


def _kill(step: int) -> tuple[str, ...]:
    return ("--trainer.callbacks+=killer.KillAtStep", f"--trainer.callbacks.step={step}")


@pytest.mark.slow
def test_two_kills_in_a_row_end_at_the_right_step(tmp_path):
    """Kill after step 3 (mid-epoch 0), resume, kill after step 7 (mid-epoch 1), resume: 8 steps in all.

    The first resumed run crosses an epoch boundary after restoring mid-epoch; its checkpoints must
    say epoch 1 (they said 0, and the second resume replayed an epoch: 12 steps)."""
    cut = tmp_path / "cut"
    first = _run(tmp_path, _argv(cut, *BIG_BATCH, *_kill(3)))
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    assert _final(cut)["global_step"] == 2
    second = _run(tmp_path, _argv(cut, *BIG_BATCH, "--ckpt_path", "last", *_kill(7)))
    assert second.returncode == -signal.SIGKILL, second.stderr[-3000:]
    mid = _final(cut)
    assert mid["global_step"] == 6 and mid["epoch"] == 1, (mid["global_step"], mid["epoch"])
    assert mid["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["epoch"] == 1
    assert mid["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["batches"] == 2
    third = _run(tmp_path, _argv(cut, *BIG_BATCH, "--ckpt_path", "last"))
    assert third.returncode == 0, third.stderr[-3000:]
    assert _final(cut)["global_step"] == 8


# ------------------------------------------------------------------ in-process faults

from test_train import TINY_SWIN, tiny_argv  # noqa: E402

from tessera.train.classification import ClassificationTask  # noqa: E402
from tessera.train.cli import lightning_main  # noqa: E402


class _InfGrad(torch.autograd.Function):
    """Identity forward, infinite gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


class InfGradAtStep(ClassificationTask):
    """Test task: finite loss, infinite gradient of the head bias at optimizer step 3."""

    def loss(self, logits, x, y, target):
        value = super().loss(logits, x, y, target)
        if self.trainer.global_step == 3:
            b = self.model.head.bias
            value = value + (_InfGrad.apply(b) - b.detach()).sum()  # adds exactly 0 to the loss
        return value


class NaNWeightsAtStep(ClassificationTask):
    """Test task: a weight turns NaN in the 4th optimizer step without a non-finite loss or gradient."""

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        if self.trainer.global_step == 3:  # counted after this hook: this is step 4, then checkpointed
            with torch.no_grad():
                self.model.head.weight[0, 0] = float("nan")


def _all_finite(ckpt) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in ckpt["state_dict"].values() if v.is_floating_point())


@pytest.mark.slow
def test_infinite_gradient_never_reaches_a_checkpoint(tmp_path, capsys):
    root = tmp_path / "inf"
    assert lightning_main(tiny_argv(root, "--model.class_path", f"{__name__}.InfGradAtStep", epochs=2)) == 1
    err = capsys.readouterr().err
    assert "gradient is NaN or inf" in err and "step 3" in err and "model.head.bias" in err
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2 and _all_finite(ckpt)
    assert f"the last good checkpoint is {root / 'checkpoints' / 'last.ckpt'}" in err


@pytest.mark.slow
def test_non_finite_weights_are_never_saved_nor_called_good(tmp_path, capsys):
    root = tmp_path / "nanw"
    assert lightning_main(tiny_argv(root, "--model.class_path", f"{__name__}.NaNWeightsAtStep", epochs=2)) == 1
    err = capsys.readouterr().err
    assert "this checkpoint was not written" in err and "model.head.weight" in err
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2 and _all_finite(ckpt)  # the one the message names is good


@pytest.mark.slow
def test_resume_with_a_changed_learning_rate_applies_it_and_warns(tmp_path, caplog):
    root = tmp_path / "lr"
    assert lightning_main(tiny_argv(root, "--model.init_args.lr", "0.001")) == 0
    before = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)
    lr_before = before["optimizer_states"][0]["param_groups"][0]["lr"]
    with caplog.at_level("WARNING"):
        code = lightning_main(tiny_argv(root, "--model.init_args.lr", "0.004", "--ckpt_path", "last", epochs=2))
    assert code == 0
    assert "lr: 0.001 -> 0.004" in caplog.text and "lr applied" in caplog.text
    after = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)
    assert after["global_step"] == 8
    base = after["lr_schedulers"][0]["base_lrs"]
    assert all(b == pytest.approx(4 * a) for a, b in zip(before["lr_schedulers"][0]["base_lrs"], base))
    assert after["optimizer_states"][0]["param_groups"][0]["initial_lr"] == pytest.approx(0.004)
    assert lr_before > 0


def test_stale_temporary_checkpoint_files_are_removed(tmp_path):
    import subprocess
    import sys

    from tessera.train.checkpoint_io import atomic_save

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".last.ckpt.tmp-{int(dead.stdout)}"  # left by a process killed mid-save
    stale.write_bytes(b"half a checkpoint")
    live = tmp_path / f".last.ckpt.tmp-{1}"  # pid 1 runs: someone may still be writing it
    live.write_bytes(b"in progress")
    atomic_save(tmp_path / "last.ckpt", lambda f: f.write(b"whole"))
    assert (tmp_path / "last.ckpt").read_bytes() == b"whole"
    assert not stale.exists() and live.exists()


def test_ema_warmup_first_update_equals_the_model_as_emamodel():
    """The EMA callback follows EMAModel's rule: d_0 = 0, so the first update equals the model."""
    from torch import nn

    from tessera.core.ema import EMAModel
    from tessera.train.callbacks import EMA, warmup_decay

    ref = EMAModel(nn.Linear(2, 2), decay=0.99)
    for n in range(40):
        assert warmup_decay(0.99, n) == ref.current_decay()
        ref.num_updates += 1

    class Host(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))

    class FakeTrainer:
        global_step = 0

    host, trainer = Host(), FakeTrainer()
    ema = EMA(0.99)
    ema.on_fit_start(trainer, host)
    with torch.no_grad():
        for p in host.model.parameters():
            p.add_(1.0)
        host.model[1].running_mean.add_(5.0)
        host.model[1].num_batches_tracked += 7
    trainer.global_step = 1
    ema.on_train_batch_end(trainer, host)
    for k, v in host.model.state_dict().items():  # parameters and buffers alike
        assert torch.equal(ema.shadow[k], v), k
    ema.on_train_batch_end(trainer, host)  # same optimizer step (accumulating): no second update
    assert ema.updates == 1
