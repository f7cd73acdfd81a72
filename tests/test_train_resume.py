"""Reliability: a run SIGKILLed mid-epoch resumes with `--ckpt_path last` to the uninterrupted run's weights;
DDP on two CPU processes keeps both ranks identical."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

TINY_SWIN = {"patch_size": 4, "window_size": 2, "embed_dim": 16, "depths": [1, 1], "num_heads": [1, 2],
             "drop_path_rate": 0.1}

KILLER = '''
import os, signal
import lightning as L

class KillAtStep(L.Callback):
    """SIGKILL this process right after optimizer step `step` (before that step's checkpoint)."""

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


def _argv(root: Path, *extra: str) -> list[str]:
    # 1257 training digits / 128 = 9 steps per epoch (drop_last); mixup and drop-path make
    # the run depend on every random draw, so an inexact resume would show.
    return [
        "fit",
        "--trainer.default_root_dir", str(root),
        "--trainer.max_epochs", "2",
        "--trainer.limit_val_batches", "1",
        "--trainer.limit_test_batches", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.num_sanity_val_steps", "0",
        "--model.init_args.model_args", json.dumps(TINY_SWIN),
        "--model.init_args.mixup_alpha", "0.4",
        "--data.init_args.img_size", "16",
        "--data.init_args.batch_size", "128",
        "--checkpoint.every_n_train_steps", "2",
        "--test_after_fit", "false",
        "--trainer.log_every_n_steps", "1",
        *extra,
    ]


def _run(tmp_path: Path, argv: list[str], extra_env: dict | None = None) -> subprocess.CompletedProcess:
    (tmp_path / "killer.py").write_text(KILLER)
    script = tmp_path / "main.py"
    script.write_text(MAIN.format(here=str(tmp_path)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **(extra_env or {})}
    return subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, env=env,
                          timeout=300, cwd=tmp_path)


def _final(root: Path) -> dict:
    return torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.mark.slow
def test_resume_after_sigkill_mid_epoch_matches_uninterrupted(tmp_path):
    ref = _run(tmp_path, _argv(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr[-3000:]

    killed = _run(tmp_path, _argv(tmp_path / "cut", "--trainer.callbacks+=killer.KillAtStep",
                                  "--trainer.callbacks.step=13"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    mid = _final(tmp_path / "cut")
    assert mid["global_step"] == 12 and mid["epoch"] == 1  # step 12 = 3 batches into the second epoch
    assert mid["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": 3, "batch_size": 128}]

    resumed = _run(tmp_path, _argv(tmp_path / "cut", "--ckpt_path", "last"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = _final(tmp_path / "ref"), _final(tmp_path / "cut")
    assert a["global_step"] == b["global_step"] == 18
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    for key in a["tessera_ema"]["shadow"]:
        assert torch.equal(a["tessera_ema"]["shadow"][key], b["tessera_ema"]["shadow"][key]), key
    sa, sb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    # the metrics history survives the kill: every step's loss, equal to the uninterrupted run's
    from tessera.train.callbacks import read_metrics

    ma, mb = read_metrics(tmp_path / "ref" / "metrics.csv"), read_metrics(tmp_path / "cut" / "metrics.csv")
    assert [s for s, _ in mb["train/loss"]] == list(range(18))
    assert mb["train/loss"] == ma["train/loss"]


@pytest.mark.slow
def test_ddp_two_cpu_processes_keep_identical_weights(tmp_path):
    root = tmp_path / "ddp"
    argv = _argv(root, "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
                 "--trainer.max_epochs", "1", "--trainer.max_steps", "3", "--data.init_args.batch_size", "32")
    # rank 1 saves its own copy next to rank 0's, through a tiny callback
    (tmp_path / "saver.py").write_text(textwrap.dedent('''
        import torch, lightning as L
        class SaveRankWeights(L.Callback):
            def __init__(self, folder: str) -> None:
                self.folder = folder
            def on_fit_end(self, trainer, pl_module) -> None:
                sd = {k: v.detach().cpu() for k, v in pl_module.model.state_dict().items()}
                torch.save({"sd": sd, "world": trainer.world_size, "step": trainer.global_step},
                           f"{self.folder}/rank{trainer.global_rank}.pt")
    '''))
    argv += ["--trainer.callbacks+=saver.SaveRankWeights", f"--trainer.callbacks.folder={tmp_path}"]
    out = _run(tmp_path, argv, {"MASTER_PORT": str(29500 + os.getpid() % 1000)})
    assert out.returncode == 0, out.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["world"] == r1["world"] == 2 and r0["step"] == r1["step"] == 3
    for k in r0["sd"]:
        assert torch.equal(r0["sd"][k], r1["sd"][k]), k
    assert (root / "model.safetensors").is_file()
