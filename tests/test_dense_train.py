"""DenseTask through `tessera fit`: segmentation and depth runs, metrics, previews, export, exact resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tessera
from tessera.core import tiny_overrides

DATA = {"img_size": 32, "n_train": 16, "n_val": 8, "n_test": 8, "digits": [0, 1], "textures": "procedural",
        "batch_size": 8}


def _argv(root: Path, model: str, epochs: int = 1, **task) -> list[str]:
    args = {k: v for k, v in tiny_overrides(model).items()}
    args["num_classes"] = 3 if "depth" not in model else 1
    argv = [
        "fit",
        "--model", "tessera.train.dense.DenseTask",
        "--model.init_args.model_name", model,
        "--model.init_args.model_args", json.dumps(args),
        "--data", "tessera.data.dense.SceneDataModule",
        *[a for k, v in DATA.items() for a in (f"--data.init_args.{k}", json.dumps(v) if isinstance(v, list) else str(v))],
        "--trainer.default_root_dir", str(root),
        "--trainer.max_epochs", str(epochs),
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.num_sanity_val_steps", "0",
        "--trainer.log_every_n_steps", "1",
        "--checkpoint.every_n_train_steps", "1",
        "--seed_everything", "0",
    ]
    for k, v in task.items():
        argv += [f"--model.init_args.{k}", str(v)]
    return argv


@pytest.mark.slow
@pytest.mark.parametrize("model", ["upernet_swin_tiny", "dpt_vit_base_patch16_384_depth"])
def test_fit_logs_metrics_writes_previews_and_exports(model, tmp_path):
    from tessera.train.callbacks import read_metrics
    from tessera.train.cli import lightning_main

    torch.set_num_threads(1)
    assert lightning_main(_argv(tmp_path, model, aux_weight=0.4)) == 0
    metrics = read_metrics(tmp_path / "metrics.csv")
    keys = ["val/miou", "test/miou", "test/pixel_acc"] if "depth" not in model else [
        "val/abs_rel", "test/abs_rel", "test/rmse", "test/delta1", "test/abs_rel_aligned"]
    for key in keys:
        assert key in metrics and all(torch.isfinite(torch.tensor(v)) for _, v in metrics[key]), key
    assert (tmp_path / "predictions.png").is_file()
    exported = tessera.create_model(model, checkpoint=tmp_path).eval()
    with torch.no_grad():
        y = exported(torch.rand(1, 3, 32, 32))
    assert y.shape == (1, 3 if "depth" not in model else 1, 32, 32)


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


def _run(tmp_path: Path, argv: list[str]) -> subprocess.CompletedProcess:
    (tmp_path / "killer.py").write_text(KILLER)
    (tmp_path / "main.py").write_text(MAIN.format(here=str(tmp_path)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, str(tmp_path / "main.py"), *argv], capture_output=True, text=True,
                          env=env, timeout=300, cwd=tmp_path)


@pytest.mark.slow
def test_segmentation_run_killed_mid_epoch_resumes_exactly(tmp_path):
    # 24 scenes / batch 8 = 3 steps per epoch, 2 epochs; random scale-crops and dropout make every
    # draw count. Killed after step 5, before its checkpoint: the run resumes from step 4, one
    # batch into the second epoch.
    base = ["--trainer.limit_val_batches", "1", "--test_after_fit", "false", "--data.init_args.n_train", "24"]
    ref = _run(tmp_path, _argv(tmp_path / "ref", "upernet_swin_tiny", epochs=2) + base)
    assert ref.returncode == 0, ref.stderr[-3000:]
    cut = _argv(tmp_path / "cut", "upernet_swin_tiny", epochs=2) + base
    killed = _run(tmp_path, cut + ["--trainer.callbacks+=killer.KillAtStep", "--trainer.callbacks.step=5"])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    mid = torch.load(tmp_path / "cut" / "checkpoints" / "last.ckpt", weights_only=True)
    (loader,) = mid["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert mid["global_step"] == 4 and (loader["epoch"], loader["batches"]) == (1, 1)
    resumed = _run(tmp_path, cut + ["--ckpt_path", "last"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = torch.load(tmp_path / "ref" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 6
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
