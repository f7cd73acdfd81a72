"""The training engine end to end on tiny models: run folder, predict, determinism, NaN stop, EMA, KD, atomic saves."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import tessera
from tessera.train.checkpoint_io import AtomicCheckpointIO
from tessera.train.classification import ClassificationTask, warmup_cosine
from tessera.train.cli import lightning_main, predict_main

TINY_SWIN = {"patch_size": 4, "window_size": 2, "embed_dim": 16, "depths": [1, 1], "num_heads": [1, 2]}


def tiny_argv(root: Path, *extra: str, model_args: dict | None = None, epochs: int = 1) -> list[str]:
    """`tessera fit` arguments for a seconds-long run of a tiny Swin on 16 px digits."""
    return [
        "fit",
        "--trainer.default_root_dir", str(root),
        "--trainer.max_epochs", str(epochs),
        "--trainer.limit_train_batches", "4",
        "--trainer.limit_val_batches", "2",
        "--trainer.limit_test_batches", "2",
        "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.num_sanity_val_steps", "0",
        "--model.init_args.model_args", json.dumps(model_args or TINY_SWIN),
        "--data.init_args.img_size", "16",
        "--data.init_args.batch_size", "16",
        "--checkpoint.every_n_train_steps", "2",
        *extra,
    ]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run") / "digits"
    assert lightning_main(tiny_argv(root)) == 0
    return root


@pytest.mark.slow
def test_fit_writes_the_run_folder(run_folder):
    for name in ("model.safetensors", "config.json", "preprocess.json", "checkpoints/last.ckpt", "metrics.csv",
                 "loss.png", "accuracy.png", "confusion_matrix.png", "config.yaml", "best/model.safetensors"):
        assert (run_folder / name).is_file(), name
    for png in ("loss.png", "accuracy.png", "confusion_matrix.png"):
        assert (run_folder / png).read_bytes()[:4] == b"\x89PNG"
    header = (run_folder / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss", "val/acc1", "test/acc1", "test/loss"} <= set(header)
    # the exported weights load through the public API and are the EMA weights of the last checkpoint
    model = tessera.create_model("swin_tiny_patch4_window7_224", checkpoint=run_folder)
    assert model.config.img_size == 16 and model.config.in_chans == 1 and model.config.num_classes == 10
    ckpt = torch.load(run_folder / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4
    ema = ckpt["tessera_ema"]["shadow"]
    saved = load_file(run_folder / "model.safetensors")
    assert torch.equal(saved["head.weight"], ema["head.weight"])
    assert not torch.equal(saved["head.weight"], ckpt["state_dict"]["model.head.weight"])


@pytest.mark.slow
def test_predict_prints_topk(run_folder, tmp_path, capsys):
    x, y = tessera.data.load_digits_images(16)
    paths = []
    for i in range(3):
        p = tmp_path / f"digit{i}.png"
        Image.fromarray((x[i, 0].numpy() * 255).round().astype(np.uint8), "L").save(p)
        paths.append(str(p))
    assert predict_main(["--checkpoint", str(run_folder), "--images", *paths, "--topk", "3", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    rec = json.loads(lines[0])
    assert rec["image"] == paths[0] and len(rec["topk"]) == 3
    assert {"class", "index", "prob"} <= set(rec["topk"][0])
    probs = [t["prob"] for t in rec["topk"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    assert predict_main(["--checkpoint", str(run_folder), "--images", paths[1], "--topk", "2"]) == 0
    text = capsys.readouterr().out.strip()
    assert text.startswith(f"{paths[1]}: ") and text.count("%") == 2
    with pytest.raises(ValueError, match="not an exported tessera run"):
        predict_main(["--checkpoint", str(tmp_path), "--images", paths[0]])


@pytest.mark.slow
def test_same_seed_same_metrics(run_folder, tmp_path):
    again = tmp_path / "again"
    assert lightning_main(tiny_argv(again)) == 0
    assert (again / "metrics.csv").read_text() == (run_folder / "metrics.csv").read_text()
    a = load_file(run_folder / "model.safetensors")
    b = load_file(again / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


class NaNAtStep(ClassificationTask):
    """Test task: the loss turns NaN at optimizer step 3."""

    def loss(self, logits, x, y, target):
        value = super().loss(logits, x, y, target)
        return value * float("nan") if self.trainer.global_step == 3 else value


@pytest.mark.slow
def test_nan_loss_stops_naming_the_step(tmp_path, capsys):
    root = tmp_path / "nan"
    argv = tiny_argv(root, "--model.class_path", f"{__name__}.NaNAtStep", epochs=2)
    argv[argv.index("--model.init_args.model_args") + 1] = json.dumps(TINY_SWIN)
    assert lightning_main(argv) == 1
    err = capsys.readouterr().err
    assert "nan at step 3" in err and "last.ckpt" in err
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2  # the last good one
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_warmup_cosine_schedule():
    lrs = [warmup_cosine(s, 100, 10, 0.01) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert max(lrs) == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.01, abs=2e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_atomic_checkpoint_survives_a_crash_during_save(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(1000)}, path)

    def crash(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt("killed during save")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(1000)}, path)
    monkeypatch.undo()
    state = torch.load(path, weights_only=True)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(1000))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary left behind


@pytest.mark.slow
def test_ema_one_update_per_optimizer_step_and_restored(tmp_path):
    import lightning as L

    from tessera.data import DigitsDataModule
    from tessera.train.callbacks import EMA

    task = ClassificationTask(model_args=TINY_SWIN, ema_decay=0.9)
    dm = DigitsDataModule(img_size=16, batch_size=16)
    trainer = L.Trainer(max_steps=3, accumulate_grad_batches=2, limit_val_batches=0, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        enable_checkpointing=False)
    trainer.fit(task, datamodule=dm)
    ema = next(c for c in trainer.callbacks if isinstance(c, EMA))
    assert trainer.global_step == 3 and ema.updates == 3  # 6 micro-batches, 3 optimizer steps
    trainer.save_checkpoint(tmp_path / "x.ckpt")
    ckpt = torch.load(tmp_path / "x.ckpt", weights_only=True)
    assert ckpt["tessera_ema"]["updates"] == 3
    fresh = EMA(0.9)
    fresh.on_load_checkpoint(trainer, task, ckpt)
    assert fresh.updates == 3 and all(torch.equal(fresh.shadow[k], ema.shadow[k]) for k in ema.shadow)
    w = task.model.head.weight.detach().clone()
    with ema.applied(task):
        assert torch.equal(task.model.head.weight, ema.shadow["head.weight"])
        assert not torch.equal(task.model.head.weight, w)
    assert torch.equal(task.model.head.weight, w)


def test_tasks_hand_lightning_one_ema_callback_or_none():
    from tessera.train.callbacks import EMA
    from tessera.train.diffusion import DiffusionTask

    for task in (ClassificationTask(model_args=TINY_SWIN, ema_decay=0.9), DiffusionTask(ema_decay=0.9)):
        first = task.configure_callbacks()
        assert len(first) == 1 and isinstance(first[0], EMA) and first[0].decay == 0.9
        assert task.configure_callbacks()[0] is first[0]  # kept from fit to test
    assert ClassificationTask(model_args=TINY_SWIN, ema_decay=0.0).configure_callbacks() == []
    assert ClassificationTask(model_args=TINY_SWIN, ema_decay=0.9, ema_eval=False).configure_callbacks()[0].eval_with_ema is False
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="ema_decay must be in"):
            ClassificationTask(model_args=TINY_SWIN, ema_decay=bad)
        with pytest.raises(ValueError, match="ema_decay must be in"):
            DiffusionTask(ema_decay=bad)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_distillation_into_a_distilled_deit(tmp_path, kind):
    import lightning as L

    from tessera.data import DigitsDataModule
    from tessera.train import DistillationTask

    teacher_dir = tmp_path / "teacher"
    teacher = tessera.create_model("swin_tiny_patch4_window7_224", img_size=16, in_chans=1, num_classes=10,
                                   **{k: tuple(v) if isinstance(v, list) else v for k, v in TINY_SWIN.items()})
    teacher.save_pretrained(teacher_dir)
    student = {"patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2}
    task = DistillationTask(teacher_name="swin_tiny_patch4_window7_224", teacher_checkpoint=str(teacher_dir),
                            distillation=kind, model_name="deit_tiny_distilled_patch16_224", model_args=student)
    trainer = L.Trainer(max_steps=2, limit_val_batches=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                        default_root_dir=tmp_path)
    trainer.fit(task, datamodule=DigitsDataModule(img_size=16, batch_size=16))
    assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["train/loss"])
    assert "train/teacher_agree" in trainer.callback_metrics
    assert not any(k.startswith("teacher") for k in task.state_dict())  # not checkpointed
    assert all(not p.requires_grad for p in task.teacher.parameters())
