"""Issue 11's measurements (`tessera reproduce ldm-guidance | pixel-vs-latent | token-generation`) and the code cache."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from tessera.cli import main


def test_latent_generation_experiments_are_registered():
    from tessera.experiments import experiments

    assert {"ldm-guidance", "pixel-vs-latent", "token-generation", "multimodal"} <= set(experiments())


def test_class_grid_keeps_one_row_per_class(tmp_path):
    from PIL import Image

    from tessera.experiments.latent_generation import class_requests, save_class_grid

    y = class_requests(3, 4)
    assert y.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    x = y.float().view(-1, 1, 1, 1).expand(-1, 1, 2, 2) - 1   # class c -> value c - 1 in [-1, 1]
    save_class_grid(x, 4, tmp_path / "g.png", columns=2)
    img = Image.open(tmp_path / "g.png")
    # 3 rows x 2 columns of 2x2 tiles at scale 2 (save_grid pads between tiles): taller than wide
    assert img.size[1] > img.size[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ldm-guidance", "pixel-vs-latent", "token-generation"])
def test_quick_experiment_writes_its_table(tmp_path, one_thread, name):
    assert main(["reproduce", name, "--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    raw = result["raw"]
    if name == "ldm-guidance":
        assert set(raw) == {"0.0", "1.0", "3.0", "5.0"} and isinstance(result["claim_holds"], bool)
        assert (tmp_path / "grid_guidance3.png").read_bytes()[:4] == b"\x89PNG"
    elif name == "pixel-vs-latent":
        assert {"pixel DDPM", "LDM guidance 1", "LDM guidance 3"} <= set(raw)
        assert all(r["train_step_s"] > 0 for r in raw.values())
        # quick runs have no metrics.csv: no steps, so no compute figure (never a made-up one)
        assert all(r["steps_trained"] is None and r["train_compute_min"] is None for r in raw.values())
        # the budget ladder retrained the LDM's recipe for real (2 steps in the quick form) and exported it
        assert [e["steps"] for e in result["ladder"]] == [2]
        assert (tmp_path / "ldm_budget_2" / "ldm.json").is_file()
        assert result["ladder"][0]["train_compute_min"] == pytest.approx(2 * raw["LDM guidance 1"]["train_step_s"] / 60)
    else:
        assert {"MaskGIT 8 steps", "MaskGIT 16 steps", "next-token, T = 1 (KV cache)", "next-token, top-k 100"} <= set(raw)
        # one grid per sampler, none overwriting another
        assert {p.name for p in tmp_path.glob("grid_*.png")} == {
            "grid_maskgit_8_steps.png", "grid_maskgit_16_steps.png", "grid_next_token_t_1_kv_cache.png",
            "grid_next_token_top_k_100.png"}
        # a random model is no better than the codes' unigram distribution
        assert result["nll_bits_per_token"] > 0 and result["unigram_entropy_bits"] <= 4.0 + 1e-6
    for entry in raw.values():
        if isinstance(entry, dict) and "accuracy" in entry:
            assert 0.0 <= entry["accuracy"] <= 1.0 and entry["fd"] >= 0.0
    assert "|" in (tmp_path / "results.md").read_text()


@pytest.mark.slow
def test_quick_multimodal_measures_both_directions(tmp_path, one_thread):
    assert main(["reproduce", "multimodal", "--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    to_image, to_caption = result["caption_to_image"], result["image_to_caption"]
    assert 0.0 <= to_image["accuracy"] <= 1.0 and to_image["fd"] >= 0.0 and to_image["seconds_per_image"] > 0
    # a random model writes no valid caption: exact matches are 0 (a check that could not pass by accident)
    assert to_caption["exact"] == 0.0 and 0.0 <= to_caption["valid_caption"] <= 1.0
    assert (tmp_path / "grid_caption_to_image.png").read_bytes()[:4] == b"\x89PNG"


def test_multimodal_refuses_a_run_without_a_layout(tmp_path, monkeypatch):
    from tessera.experiments import latent_generation

    runs = latent_generation.make_quick_runs(tmp_path / "runs")
    monkeypatch.setattr(latent_generation, "make_quick_runs", lambda folder: {**runs, "multimodal": runs["nexttoken"]})
    with pytest.raises(ValueError, match="not a multimodal run"):
        latent_generation.multimodal(tmp_path / "out", quick=True)


def test_experiment_names_the_training_command_of_a_missing_run(tmp_path, monkeypatch):
    from tessera.experiments import latent_generation

    monkeypatch.setattr(latent_generation, "RUNS", {k: str(tmp_path / k) for k in latent_generation.RUNS})
    with pytest.raises(FileNotFoundError, match="configs/ldm_fmnist.yaml"):
        latent_generation.ldm_guidance(tmp_path / "out")


VQ = {"channels": [8, 16], "layers_per_block": 1, "norm_groups": 4, "latent_channels": 4, "embed_dim": 4,
      "num_codes": 16, "mid_attention": False, "img_size": 8, "in_chans": 1}


def _vq_cache(tmp_path):
    import tessera
    from tessera.data import Augment, DigitsDataModule
    from tessera.train.latent_diffusion import cache_latents

    vq = tessera.create_model("vqvae_f4", **VQ).eval()
    vq.save_pretrained(tmp_path / "vq")
    dm = DigitsDataModule(img_size=8, in_chans=1, batch_size=8, normalize="signed", augment=Augment(enabled=False))
    return vq, cache_latents(vq, dm, tmp_path / "codes.safetensors"), dm


def test_cache_of_a_discrete_first_stage_holds_its_codes(tmp_path, one_thread):
    from safetensors.torch import load_file

    from tessera.train.latent_diffusion import LatentDataModule

    vq, path, images = _vq_cache(tmp_path)
    data = load_file(str(path))
    assert data["train_codes"].dtype == torch.int64 and data["train_codes"].shape[1:] == (4, 4)   # f = 2 at 8 px
    x = torch.stack([images.test_set[i][0] for i in range(3)])
    with torch.no_grad():
        assert torch.equal(data["test_codes"][:3], vq.encode(x).codes)
    assert torch.equal(data["test_labels"][:3], torch.as_tensor([int(images.test_set[i][1]) for i in range(3)]))
    dm = LatentDataModule(str(path), batch_size=4, key="codes")
    codes, labels = next(iter(dm.train_dataloader()))
    assert codes.shape == (4, 4, 4) and labels.shape == (4,)
    with pytest.raises(ValueError, match="'latents' or 'codes'"):
        LatentDataModule(str(path), key="pixels")


def test_code_key_of_a_continuous_cache_is_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    from tessera.train.latent_diffusion import LatentDataModule

    save_file({f"{s}_{k}": torch.zeros(2, 4, 2, 2) if k == "latents" else torch.zeros(2, dtype=torch.long)
               for s in ("train", "val", "test") for k in ("latents", "labels")}, str(tmp_path / "c.safetensors"))
    with pytest.raises(ValueError, match="holds no codes"):
        LatentDataModule(str(tmp_path / "c.safetensors"), key="codes").setup()


@pytest.mark.slow
def test_token_transformer_trains_from_cached_codes(tmp_path, one_thread):
    pytest.importorskip("lightning")
    import tessera

    _, path, _ = _vq_cache(tmp_path)
    cfg = {
        "seed_everything": 0,
        "trainer": {"max_steps": 2, "limit_val_batches": 1, "enable_progress_bar": False, "enable_model_summary": False,
                    "num_sanity_val_steps": 0, "log_every_n_steps": 1, "val_check_interval": 2,
                    "check_val_every_n_epoch": None, "default_root_dir": str(tmp_path / "run")},
        "model": {"class_path": "tessera.train.token_transformer.TokenTransformerTask",
                  "init_args": {"first_stage": "vqvae_f4", "first_stage_checkpoint": str(tmp_path / "vq"),
                                "first_stage_args": {"img_size": 8, "in_chans": 1}, "inputs": "codes",
                                "model": "tokengpt_digits", "model_args": {"dim": 16, "depth": 1, "heads": 2},
                                "num_samples_per_class": 1}},
        "data": {"class_path": "tessera.train.latent_diffusion.LatentDataModule",
                 "init_args": {"path": str(path), "batch_size": 8, "key": "codes"}},
        "test_after_fit": False,
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["fit", "--config", str(tmp_path / "c.yaml")]) == 0
    model = tessera.create_model("tokengpt_digits", checkpoint=tmp_path / "run")
    assert model.config.vocab_size == 16 and model.config.seq_len == 16 and model.config.num_classes == 10
    assert (tmp_path / "run" / "samples.png").is_file()


def test_codes_input_rejects_latents_and_multimodal():
    from tessera.train.token_transformer import TokenTransformerTask

    with pytest.raises(ValueError, match="multimodal"):
        TokenTransformerTask(inputs="codes", multimodal=True)
    with pytest.raises(ValueError, match="'images' or 'codes'"):
        TokenTransformerTask(inputs="latents")


def test_cache_latents_takes_the_data_of_another_config(tmp_path, one_thread):
    """A fit config that reads the cache (LatentDataModule) is cached with the first stage's own data section."""
    from safetensors.torch import load_file

    import tessera

    tessera.create_model("vqvae_f4", **VQ).save_pretrained(tmp_path / "vq")
    fit = {"model": {"init_args": {"first_stage": "vqvae_f4", "first_stage_checkpoint": str(tmp_path / "vq"),
                                   "first_stage_args": {"img_size": 8, "in_chans": 1}}},
           "data": {"class_path": "tessera.train.latent_diffusion.LatentDataModule",
                    "init_args": {"path": str(tmp_path / "codes.safetensors"), "key": "codes"}}}
    first = {"data": {"class_path": "tessera.data.DigitsDataModule",
                      "init_args": {"img_size": 8, "in_chans": 1, "normalize": "signed", "augment": {"enabled": False}}}}
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(fit))
    (tmp_path / "first.yaml").write_text(yaml.safe_dump(first))
    out = tmp_path / "codes.safetensors"
    assert main(["cache-latents", "--config", str(tmp_path / "fit.yaml"), "--data", str(tmp_path / "first.yaml"),
                 "--out", str(out)]) == 0
    data = load_file(str(out))
    assert data["train_codes"].shape[1:] == (4, 4) and len(data["test_codes"]) == len(data["test_labels"]) > 0


@pytest.mark.slow
def test_pixel_vs_latent_compute_is_steps_times_the_measured_step(tmp_path, one_thread, monkeypatch):
    from pathlib import Path

    from tessera.experiments import latent_generation

    made = latent_generation.make_quick_runs

    def with_metrics(folder):
        runs = made(folder)
        (Path(runs["pixel"]) / "metrics.csv").write_text("epoch,step,train/loss\n0,40,1.0\n0,120,0.5\n")
        return runs

    monkeypatch.setattr(latent_generation, "make_quick_runs", with_metrics)
    raw = latent_generation.pixel_vs_latent(tmp_path, quick=True)["raw"]
    assert raw["pixel DDPM"]["steps_trained"] == 120
    assert raw["pixel DDPM"]["train_compute_min"] == pytest.approx(120 * raw["pixel DDPM"]["train_step_s"] / 60)
    assert raw["LDM guidance 1"]["train_compute_min"] is None


def test_budget_ladder_trains_cheapest_first_and_stops_at_the_pixel_models_fd(tmp_path, monkeypatch):
    from pathlib import Path

    from tessera.experiments import latent_generation

    runs = latent_generation.make_quick_runs(tmp_path / "q")
    trained = []

    def fake_train(run, folder, steps):
        trained.append(steps)
        return Path(runs["ldm"])

    monkeypatch.setattr(latent_generation, "train_ldm_budget", fake_train)
    fds = iter([5.0, 2.0, 1.0])
    ladder = latent_generation.ldm_budget_ladder(runs["ldm"], tmp_path, (40, 10, 20), target_fd=2.5,
                                                 score=lambda model: (0.5, next(fds), 0.01))
    assert trained == [10, 20]   # 40 is never trained: 20 steps already matched
    assert [(e["steps"], e["fd"]) for e in ladder] == [(10, 5.0), (20, 2.0)]


def test_budget_run_is_reused_when_exported_and_needs_the_runs_config(tmp_path):
    from tessera.experiments.latent_generation import train_ldm_budget

    done = tmp_path / "done"
    done.mkdir()
    (done / "ldm.json").write_text("{}")
    assert train_ldm_budget(tmp_path / "no_run", done, 10) == done     # exported already: nothing trained
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        train_ldm_budget(tmp_path / "no_run", tmp_path / "new", 10)
