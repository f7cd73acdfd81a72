"""SSL training through `tessera fit`: DINO and SimMIM tasks, exact resume, NaN stop, `tessera ssl-eval`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tessera.train.ssl import DINOTask

TINY_VIT = {"patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2, "dynamic_img_size": True}
DINO_ARGS = {"encoder_args": TINY_VIT, "out_dim": 32, "hidden_dim": 32, "bottleneck_dim": 8,
             "local_crop_size": 8, "num_local_crops": 2}


def dino_argv(root: Path, *extra: str, steps: int = 6, model: str = "dino_vit_small_patch16_224") -> list[str]:
    # 1257 training digits / 256 = 4 steps per epoch (drop_last)
    return [
        "fit", "--config", "configs/dino_digits.yaml",
        "--trainer.default_root_dir", str(root),
        "--trainer.max_epochs", "2", "--trainer.max_steps", str(steps),
        "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1",
        "--trainer.check_val_every_n_epoch", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.num_sanity_val_steps", "0", "--trainer.log_every_n_steps", "1",
        "--model.init_args.model_name", model,
        "--model.init_args.model_args", json.dumps(DINO_ARGS),
        "--model.init_args.warmup_teacher_temp_epochs", "1",
        "--data.init_args.img_size", "16", "--data.init_args.batch_size", "256",
        "--checkpoint.every_n_train_steps", "2", "--test_after_fit", "false",
        *extra,
    ]


@pytest.fixture(scope="module")
def dino_run(tmp_path_factory):
    from tessera.train.cli import lightning_main

    root = tmp_path_factory.mktemp("dino") / "run"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert lightning_main(dino_argv(root)) == 0
    finally:
        torch.set_num_threads(n)
    return root


@pytest.mark.slow
def test_dino_fit_updates_teacher_and_centre_and_logs_collapse_watch(dino_run):
    from tessera.train.callbacks import read_metrics

    ckpt = torch.load(dino_run / "checkpoints" / "last.ckpt", weights_only=True)
    sd = ckpt["state_dict"]
    assert ckpt["global_step"] == 6
    assert sd["model.center"].abs().sum() > 0
    assert int(sd["model.teacher.num_updates"]) == 6
    student = {k[len("model.student."):]: v for k, v in sd.items() if k.startswith("model.student.")}
    teacher = {k[len("model.teacher.module."):]: v for k, v in sd.items() if k.startswith("model.teacher.module.")}
    assert student.keys() == teacher.keys()
    assert any(not torch.equal(student[k], teacher[k]) for k in student)
    # the last layer was frozen in epoch 0 (4 steps), trained in epoch 1
    metrics = read_metrics(dino_run / "metrics.csv")
    for key in ("train/loss", "train/teacher_entropy", "train/kl_teacher_center", "train/teacher_momentum",
                "train/teacher_temp", "val/knn_acc"):
        assert key in metrics, key
    temps = [v for _, v in metrics["train/teacher_temp"]]
    assert temps[0] == pytest.approx(0.04) and temps[-1] == pytest.approx(0.07)
    assert (dino_run / "model.safetensors").is_file()


@pytest.mark.slow
def test_ssl_eval_command_on_the_run_folder(dino_run, capsys, one_thread):
    from tessera.cli.ssl_eval import ssl_eval_main

    assert ssl_eval_main([str(dino_run), "--json", "--test-shift", "2", "--finetune", "--fractions", "0.1",
                          "--seeds", "0", "--epochs", "1", "--min-steps", "2"]) == 0
    res = json.loads(capsys.readouterr().out)
    for key in ("knn", "linear_probe", "knn_pixels", "knn_random_init"):
        assert 0.0 <= res[key] <= 1.0
    assert res["knn_pixels"] > 0.5  # raw-pixel k-NN on digits is far above chance
    assert set(res["finetune"]["0.1"]) == {"pretrained", "scratch", "labels"}
    assert (dino_run / "ssl_eval.json").is_file()


class NaNDINO(DINOTask):
    """Test task: the loss turns NaN at optimizer step 3."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.trainer.global_step == 3 else loss


@pytest.mark.slow
def test_non_finite_dino_loss_stops_naming_the_step(tmp_path, capsys, one_thread):
    from tessera.train.cli import lightning_main

    argv = dino_argv(tmp_path / "nan", "--model.class_path", f"{__name__}.NaNDINO")
    assert lightning_main(argv) == 1
    assert "nan at step 3" in capsys.readouterr().err


@pytest.mark.slow
def test_simmim_fit_reports_loss_and_mean_fill(tmp_path, one_thread):
    from tessera.train.callbacks import read_metrics
    from tessera.train.cli import lightning_main

    args = {"encoder_args": {"patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2}, "mask_patch_size": 8}
    argv = ["fit", "--config", "configs/simmim_digits.yaml", "--trainer.default_root_dir", str(tmp_path / "s"),
            "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
            "--trainer.check_val_every_n_epoch", "1", "--trainer.enable_progress_bar", "false",
            "--trainer.num_sanity_val_steps", "0", "--trainer.log_every_n_steps", "1",
            "--model.init_args.model_args", json.dumps(args), "--data.init_args.img_size", "16",
            "--data.init_args.batch_size", "256", "--test_after_fit", "false"]
    assert lightning_main(argv) == 0
    m = read_metrics(tmp_path / "s" / "metrics.csv")
    assert len(m["train/loss"]) == 3 and "val/mean_fill_loss" in m


MAIN = """
import os, signal, sys
import lightning as L
sys.path.insert(0, {tests!r})

class KillAtStep(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step
    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)

from tessera.train.cli import lightning_main
sys.exit(lightning_main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("model", ["dino_vit_small_patch16_224", "dinov2_vit_small_patch14"])
def test_resume_after_sigkill_restores_teacher_and_centre_exactly(tmp_path, model):
    script = tmp_path / "main.py"
    script.write_text(MAIN.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cwd = Path(__file__).parent.parent

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, env=env,
                              timeout=600, cwd=cwd)

    ref = run(*dino_argv(tmp_path / "ref", model=model))
    assert ref.returncode == 0, ref.stderr[-3000:]
    killed = run(*dino_argv(tmp_path / "cut", "--trainer.callbacks+=__main__.KillAtStep",
                            "--trainer.callbacks.step=5", model=model))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = run(*dino_argv(tmp_path / "cut", "--ckpt_path", "last", model=model))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = torch.load(tmp_path / "ref" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 6
    for key in a["state_dict"]:  # student, teacher, centre(s)
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
