"""TokenTransformerTask through `tessera fit`: MaskGIT, next-token and the multimodal sequence on a tiny VQ tokenizer."""

from __future__ import annotations

import json

import pytest
import yaml

VQ = {"channels": [8, 16], "layers_per_block": 1, "norm_groups": 4, "latent_channels": 4, "embed_dim": 4,
      "num_codes": 16, "mid_attention": False}
TINY_TT = {"dim": 32, "depth": 1, "heads": 2}


def _run(model: str, data: dict, multimodal: bool = False) -> dict:
    return {
        "seed_everything": 0,
        "trainer": {"max_steps": 2, "limit_val_batches": 1, "enable_progress_bar": False,
                    "enable_model_summary": False, "num_sanity_val_steps": 0, "log_every_n_steps": 1,
                    "val_check_interval": 2, "check_val_every_n_epoch": None},
        "model": {"class_path": "tessera.train.token_transformer.TokenTransformerTask",
                  "init_args": {"first_stage": "vqvae_f4", "first_stage_args": VQ, "model": model, "model_args": TINY_TT,
                                "multimodal": multimodal, "num_samples_per_class": 1, "maskgit_steps": 2}},
        "data": data,
        "test_after_fit": False,
    }


DIGITS = {"class_path": "tessera.data.DigitsDataModule",
          "init_args": {"img_size": 8, "in_chans": 1, "batch_size": 8, "normalize": "signed", "augment": {"enabled": False}}}
CAPTIONS = {"class_path": "tessera.data.captions.DigitCaptionsDataModule",
            "init_args": {"img_size": 8, "in_chans": 1, "batch_size": 8, "normalize": "signed", "context_length": 6,
                          "vocab_size": 300, "augment": {"enabled": False}}}


@pytest.mark.slow
@pytest.mark.parametrize("model,data,multimodal", [
    ("maskgit_digits", DIGITS, False), ("tokengpt_digits", DIGITS, False), ("tokengpt_digits", CAPTIONS, True),
], ids=["maskgit", "next-token", "multimodal"])
def test_token_transformer_task_trains_and_samples(tmp_path, one_thread, model, data, multimodal):
    pytest.importorskip("lightning")
    import tessera
    from tessera.cli import main

    if "vqvae_f4" not in tessera.list_models(kind="tokenizer"):
        pytest.skip("the VQ-VAE is not registered")
    cfg = _run(model, data, multimodal)
    cfg["trainer"]["default_root_dir"] = str(tmp_path / "run")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["fit", "--config", str(tmp_path / "c.yaml")]) == 0
    run = tmp_path / "run"
    for name in ("model.safetensors", "config.json", "samples.png", "tokens.json"):
        assert (run / name).is_file(), name
    spec = json.loads((run / "tokens.json").read_text())
    assert spec["grid"] == [4, 4] and (spec["layout"] is not None) == multimodal
    again = tessera.create_model(model, checkpoint=run)
    assert again.config.vocab_size == (16 if not multimodal else spec["layout"]["text_vocab"] + 18)
