"""`hf-hub:org/name` from a Hugging Face cache built here, offline (issue 18): tessera, timm and
transformers repositories load; a missing one says it is not cached and how to fetch it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import tessera
from tessera.io.hub import create_model_from_hub, hub_folder

TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=3)
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _snapshot(cache: Path, repo: str) -> Path:
    """The folder huggingface_hub keeps a repository's files in: models--org--name/snapshots/<commit>/."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)
    snap = root / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    return snap


@pytest.fixture
def offline(monkeypatch, tmp_path):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def test_tessera_repository_loads_from_the_cache(offline):
    model = tessera.create_model("vit_base_patch16_224", **TINY_VIT).eval()
    model.save_pretrained(_snapshot(offline, "someone/tiny-vit"))
    back = create_model_from_hub("hf-hub:someone/tiny-vit").eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(back(x), model(x))
    assert hub_folder("hf-hub:someone/tiny-vit@main").name == COMMIT


def test_timm_repository_loads_from_the_cache(offline):
    model = tessera.create_model("vit_base_patch16_224", **TINY_VIT).eval()
    snap = _snapshot(offline, "timm/vit_tiny_test.augreg_in21k")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(snap / "model.safetensors"))
    (snap / "config.json").write_text(json.dumps({
        "architecture": "vit_base_patch16_224.augreg_in21k", "num_classes": 3, "num_features": 32,
        "pretrained_cfg": {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3},
    }))
    overrides = {k: v for k, v in TINY_VIT.items() if k != "num_classes"}
    back = create_model_from_hub("hf-hub:timm/vit_tiny_test.augreg_in21k", **overrides).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(back(x), model(x))


def test_transformers_repository_loads_from_the_cache(offline):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=2,
                                    num_attention_heads=3, intermediate_size=96, num_labels=5, layer_norm_eps=1e-6)
    hf = transformers.ViTForImageClassification(config).eval()
    hf.save_pretrained(_snapshot(offline, "google/vit-tiny-test"))
    ours = create_model_from_hub("hf-hub:google/vit-tiny-test").eval()
    assert ours.config.embed_dim == 48 and ours.config.num_classes == 5 and ours.config.mlp_ratio == 2.0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (ours(x) - hf(x).logits).abs().max() < 1e-4


def test_missing_repository_says_it_is_not_cached_and_how_to_fetch_it(offline):
    with pytest.raises(ValueError, match=r"hf-hub:nobody/absent is not cached .*HF_HUB_OFFLINE.*huggingface-cli download nobody/absent"):
        create_model_from_hub("hf-hub:nobody/absent")
    with pytest.raises(ValueError, match="must look like"):
        hub_folder("hf-hub:no-slash")


def test_push_to_hub_uploads_a_folder_that_loads_back_by_its_hub_name(tmp_path, monkeypatch):
    """Publishing goes through huggingface_hub's HfApi (a stand-in here: no network); what it uploads,
    placed in a cache, loads back with the returned hf-hub: name."""
    from tessera.io.hub import push_to_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    uploads = []

    class FakeApi:
        def create_repo(self, repo_id, private=None, exist_ok=False):
            uploads.append(("create", repo_id))

        def upload_folder(self, repo_id, folder_path, commit_message):
            snap = _snapshot(tmp_path / "hub", repo_id)
            for f in Path(folder_path).iterdir():
                (snap / f.name).write_bytes(f.read_bytes())
            uploads.append(("upload", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))

    model = tessera.create_model("vit_base_patch16_224", **TINY_VIT).eval()
    name = push_to_hub(model, "me/tiny", api=FakeApi())
    assert name == "hf-hub:me/tiny"
    assert uploads == [("create", "me/tiny"), ("upload", "me/tiny", ["config.json", "model.safetensors"])]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    back = create_model_from_hub(name, cache_dir=tmp_path / "hub").eval()
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(back(x), model(x))
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE"):
        push_to_hub(model, "me/tiny", api=FakeApi())


def test_create_model_takes_hub_names(offline):
    """The public entry point, as timm users write it: tessera.create_model("hf-hub:org/name")."""
    model = tessera.create_model("vit_base_patch16_224", **TINY_VIT).eval()
    model.save_pretrained(_snapshot(offline, "someone/tiny-vit"))
    back = tessera.create_model("hf-hub:someone/tiny-vit").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))
    with pytest.raises(ValueError, match="no checkpoint"):
        tessera.create_model("hf-hub:someone/tiny-vit", checkpoint="elsewhere")


def test_save_pretrained_push_to_hub_uploads_the_folder_it_writes(tmp_path, monkeypatch):
    """transformers' form: `save_pretrained(folder, push_to_hub=True, repo_id=...)` keeps the folder and uploads it;
    a bad repo_id or offline mode is refused before the folder is written."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls = []

    class FakeApi:
        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls.append(("create", repo_id, private))

        def upload_folder(self, repo_id, folder_path, commit_message):
            calls.append(("upload", repo_id, sorted(p.name for p in Path(folder_path).iterdir()), commit_message))

    model = tessera.create_model("vit_base_patch16_224", **TINY_VIT)
    out = model.save_pretrained(tmp_path / "kept", push_to_hub=True, repo_id="me/tiny", private=True,
                                commit_message="v1", api=FakeApi())
    assert (out / "model.safetensors").is_file()
    assert calls == [("create", "me/tiny", True), ("upload", "me/tiny", ["config.json", "model.safetensors"], "v1")]
    with pytest.raises(ValueError, match="org/name"):
        model.save_pretrained(tmp_path / "bad", push_to_hub=True, repo_id="tiny", api=FakeApi())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE"):
        model.save_pretrained(tmp_path / "offline", push_to_hub=True, repo_id="me/tiny", api=FakeApi())
    with pytest.raises(ValueError, match="push_to_hub=True"):
        model.save_pretrained(tmp_path / "nohub", repo_id="me/tiny")
    assert not any((tmp_path / d).exists() for d in ("bad", "offline", "nohub"))
    assert len(calls) == 2
