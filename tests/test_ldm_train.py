"""LatentDiffusionTask through `tessera fit`, `tessera sample-ldm` on its run, cached latents, exact resume."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

FIRST_STAGE = {"channels": [8, 16], "layers_per_block": 1, "norm_groups": 4, "latent_channels": 4, "mid_attention": False}
TINY_UNET = {"widths": [8, 16], "depth": 1, "transformer_levels": [1], "heads": [2, 2], "context_dim": 8, "norm_groups": 4}

TINY_RUN = {
    "seed_everything": 0,
    "trainer": {
        "max_steps": 4,
        "limit_val_batches": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 1,
        "val_check_interval": 2,
        "check_val_every_n_epoch": None,
        "deterministic": True,
    },
    "model": {
        "class_path": "tessera.train.latent_diffusion.LatentDiffusionTask",
        "init_args": {
            "first_stage": "autoencoder_kl_f4",
            "first_stage_args": FIRST_STAGE,
            "unet": "ldm_unet_digits",
            "unet_args": TINY_UNET,
            "T": 10,
            "ema_decay": 0.9,
            "num_samples_per_class": 1,
            "sample_steps": 2,
        },
    },
    "data": {
        "class_path": "tessera.data.DigitsDataModule",
        "init_args": {"img_size": 16, "in_chans": 1, "batch_size": 8, "normalize": "signed", "augment": {"enabled": False}},
    },
    "checkpoint": {"every_n_train_steps": 2},
    "test_after_fit": False,
}


def _fit(tmp_path, cfg, name="run", *extra):
    from tessera.cli import main

    pytest.importorskip("lightning")
    if "autoencoder_kl_f4" not in __import__("tessera").list_models(kind="tokenizer"):
        pytest.skip("the KL autoencoder is not registered")
    run = tmp_path / name
    cfg = json.loads(json.dumps(cfg))
    cfg["trainer"]["default_root_dir"] = str(run)
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["fit", "--config", str(tmp_path / f"{name}.yaml"), *extra]) == 0
    return run


@pytest.mark.slow
def test_ldm_task_trains_exports_and_samples_with_guidance(tmp_path, capsys, one_thread):
    from tessera.cli import main

    run = _fit(tmp_path, TINY_RUN)
    for name in ("ldm.json", "unet/model.safetensors", "first_stage/config.json", "cond_encoder.safetensors",
                 "samples.png", "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    spec = json.loads((run / "ldm.json").read_text())
    assert spec["cond_encoder"] == {"type": "class", "num_classes": 10, "dim": 8} and spec["scale_factor"] > 0
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert "tessera_ema" in ckpt and ckpt["global_step"] == 4

    a, b = tmp_path / "a.png", tmp_path / "b.png"
    args = ["sample-ldm", "--checkpoint", str(run), "--class", "7", "--num", "2", "--steps", "2", "--guidance", "3"]
    assert main([*args, "--out", str(a)]) == 0 and main([*args, "--out", str(b)]) == 0
    assert a.read_bytes() == b.read_bytes()
    capsys.readouterr()
    assert main(["sample-ldm", "--checkpoint", str(run), "--class", "10"]) == 2
    assert "[0, 10)" in capsys.readouterr().err
    assert main(["sample-ldm", "--checkpoint", str(run), "--guidance", "-1"]) == 2
    assert "guidance" in capsys.readouterr().err
    assert main(["sample-ldm", "--checkpoint", str(run), "--prompt", "a seven"]) == 2


KILLER = """
import os, signal
import lightning as L


class KillAtStep(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
"""

MAIN = """
import sys
sys.path.insert(0, {here!r})
from tessera.train.cli import lightning_main
sys.exit(lightning_main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_ldm_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    import os
    import subprocess
    import sys

    if "autoencoder_kl_f4" not in __import__("tessera").list_models(kind="tokenizer"):
        pytest.skip("the KL autoencoder is not registered")
    (tmp_path / "killer.py").write_text(KILLER)
    (tmp_path / "main.py").write_text(MAIN.format(here=str(tmp_path)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}

    def run(name, *extra):
        cfg = json.loads(json.dumps(TINY_RUN))
        cfg["trainer"]["default_root_dir"] = str(tmp_path / name)
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        argv = [sys.executable, str(tmp_path / "main.py"), "fit", "--config", str(tmp_path / f"{name}.yaml"), *extra]
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)

    assert run("full").returncode == 0
    killed = run("part", "--trainer.callbacks+=killer.KillAtStep", "--trainer.callbacks.step=3")
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = run("part", "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "part" / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 4
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    for k, v in a["tessera_ema"]["shadow"].items():
        assert torch.equal(v, b["tessera_ema"]["shadow"][k]), k


@pytest.mark.slow
def test_ldm_task_trains_from_a_cached_latent_file(tmp_path, one_thread):
    from tessera.cli import main

    if "autoencoder_kl_f4" not in __import__("tessera").list_models(kind="tokenizer"):
        pytest.skip("the KL autoencoder is not registered")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(TINY_RUN))
    cache = tmp_path / "latents.safetensors"
    assert main(["cache-latents", "--config", str(tmp_path / "c.yaml"), "--out", str(cache)]) == 0
    from safetensors.torch import load_file

    data = load_file(str(cache))
    assert data["train_latents"].shape[1:] == (4, 8, 8) and len(data["train_labels"]) == len(data["train_latents"])
    cfg = json.loads(json.dumps(TINY_RUN))
    cfg["model"]["init_args"]["inputs"] = "latents"
    cfg["data"] = {"class_path": "tessera.train.latent_diffusion.LatentDataModule",
                   "init_args": {"path": str(cache), "batch_size": 8}}
    run = _fit(tmp_path, cfg, "cached")
    assert (run / "samples.png").is_file() and (run / "ldm.json").is_file()


@pytest.mark.slow
def test_text_conditioned_ldm_trains_and_samples_from_prompts(tmp_path, capsys, one_thread):
    from tessera.cli import main

    cfg = json.loads(json.dumps(TINY_RUN))
    cfg["model"]["init_args"].update(conditioning="text", text_encoder_args={"depth": 1, "heads": 2})
    cfg["data"] = {"class_path": "tessera.data.captions.DigitCaptionsDataModule",
                   "init_args": {"img_size": 16, "in_chans": 1, "batch_size": 8, "normalize": "signed",
                                 "context_length": 6, "vocab_size": 300, "augment": {"enabled": False}}}
    run = _fit(tmp_path, cfg, "text")
    spec = json.loads((run / "ldm.json").read_text())
    assert spec["cond_encoder"]["type"] == "text" and spec["cond_encoder"]["context_len"] == 6
    # a prompt with characters the captions never had: byte-level BPE spells them in bytes
    args = ["sample-ldm", "--checkpoint", str(run), "--prompt", "a handwritten seven", "--prompt", "ein Schnee☃mann",
            "--num", "2", "--steps", "2", "--out", str(tmp_path / "t.png")]
    assert main(args) == 0 and (tmp_path / "t.png").is_file()
    capsys.readouterr()
    assert main(["sample-ldm", "--checkpoint", str(run), "--class", "3"]) == 2
    assert "--prompt" in capsys.readouterr().err
