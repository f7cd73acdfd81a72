"""CoCa training end to end: `tessera fit` on captioned digits, exact resume, export, `tessera caption`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

TINY = {
    "encoder_args": {"patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 1},
    "dim": 16, "unimodal_depth": 1, "multimodal_depth": 1, "num_heads": 1, "num_caption_queries": 2, "embed_dim": 8,
}


CONFIG = """
seed_everything: 0
model:
  class_path: tessera.train.coca.CoCaTask
  init_args:
    model_name: coca_vit_tiny
    model_args: {model_args}
    beam_width: 2
data:
  class_path: tessera.data.captions.DigitCaptionsDataModule
  init_args:
    img_size: 8
    batch_size: 64
"""


def _fit(root: Path, *extra: str) -> int:
    from tessera.train.cli import lightning_main

    config = root.parent / "coca_tiny.yaml"
    config.write_text(CONFIG.format(model_args=json.dumps(TINY)))
    return lightning_main([
        "fit",
        "--config", str(config),
        "--trainer.default_root_dir", str(root),
        "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "4",
        "--trainer.limit_val_batches", "1",
        "--trainer.limit_test_batches", "1",
        "--trainer.num_sanity_val_steps", "0",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.log_every_n_steps", "1",
        "--checkpoint.every_n_train_steps", "2",
        *extra,
    ])


KEEP = """
import shutil
import lightning as L

class KeepStep2(L.Callback):
    \"\"\"Copy last.ckpt when it holds step 2 (checkpoint callbacks run after this one).\"\"\"

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == 3:
            ckpt = trainer.default_root_dir + "/checkpoints/"
            shutil.copy(ckpt + "last.ckpt", ckpt + "kept_step2.ckpt")
"""


@pytest.mark.slow
def test_fit_resume_export_and_caption(tmp_path, capsys, monkeypatch):
    torch.set_num_threads(1)
    (tmp_path / "coca_keep.py").write_text(KEEP)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _fit(tmp_path / "ref", "--trainer.callbacks+=coca_keep.KeepStep2") == 0
    run = tmp_path / "ref"
    for name in ("model.safetensors", "config.json", "preprocess.json", "tokenizer.json", "coca_test.json"):
        assert (run / name).is_file(), name
    test = json.loads((run / "coca_test.json").read_text())
    for key in ("i2t_r1", "t2i_r10", "zero_shot_acc", "greedy_exact", "beam_bleu4", "beam_token_f1"):
        assert 0.0 <= test["metrics"][key] <= 1.0, key

    # Resume from the step-2 checkpoint: the same weights as the uninterrupted run.
    cut = tmp_path / "cut"
    cut.mkdir()
    step2 = run / "checkpoints" / "kept_step2.ckpt"
    assert torch.load(step2, weights_only=True)["global_step"] == 2
    assert _fit(cut, "--ckpt_path", str(step2), "--test_after_fit", "false") == 0
    a = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(cut / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # `tessera caption` on image files, with a grid.
    from PIL import Image

    from tessera.cli.caption import COMMANDS

    paths = []
    for i in range(3):
        p = tmp_path / f"digit{i}.png"
        Image.fromarray((np.random.default_rng(i).random((8, 8)) * 255).astype(np.uint8)).save(p)
        paths.append(str(p))
    capsys.readouterr()
    assert COMMANDS["caption"](["--checkpoint", str(run), "--images", *paths, "--json", "--grid", str(tmp_path / "g.png")]) == 0
    lines = [json.loads(s) for s in capsys.readouterr().out.splitlines() if s.startswith("{")]
    assert [d["image"] for d in lines] == paths and all(isinstance(d["caption"], str) for d in lines)
    assert (tmp_path / "g.png").is_file()
    assert COMMANDS["caption"](["--checkpoint", str(run), "--images", paths[0], "--method", "beam", "--beam-width", "2"]) == 0
    with pytest.raises(ValueError, match="beam_width"):
        COMMANDS["caption"](["--checkpoint", str(run), "--images", paths[0], "--method", "beam", "--beam-width", "0"])
