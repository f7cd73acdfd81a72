"""`hf-hub:org/name` model names, read from the Hugging Face cache (offline-first).

    model = tessera.io.hub.create_model_from_hub("hf-hub:org/name")      # or "hf-hub:org/name@revision"

The repository is looked up in huggingface_hub's cache (`HF_HUB_CACHE`, by
default ~/.cache/huggingface/hub) without touching the network; only when it
is missing and `HF_HUB_OFFLINE` is not set is it downloaded. Three kinds of
repository load:
- tessera's (`save_pretrained`: config.json with "architecture" and "config");
- timm's (config.json with "architecture", e.g. "vit_base_patch16_224.augreg_in21k",
  and a timm-layout model.safetensors);
- transformers' ViT / DeiT / Swin (config.json with "model_type"), whose sizes
  are read from the config.
The weights go through `create_model(name, checkpoint=folder)`, so every
layout the converters know is read. `push_to_hub(model, "org/name")` publishes
a `save_pretrained` folder (what `hf-hub:org/name` then loads).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["HUB_PREFIX", "create_model_from_hub", "hub_folder", "is_hub_name", "push_to_hub"]

HUB_PREFIX = "hf-hub:"


def is_hub_name(name: str) -> bool:
    """Whether `name` is a Hugging Face Hub name (`hf-hub:org/name[@revision]`)."""
    return isinstance(name, str) and name.startswith(HUB_PREFIX)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_folder(name: str, cache_dir: str | Path | None = None) -> Path:
    """The local snapshot folder of `hf-hub:org/name[@revision]`, from the cache first.

    Raises:
        ValueError: the name is malformed, or the repository is not cached and cannot be
            downloaded (offline), with the command that fetches it.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    if not is_hub_name(name):
        raise ValueError(f"not a hub name: {name!r}; expected '{HUB_PREFIX}org/name'")
    repo, _, revision = name[len(HUB_PREFIX):].partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ValueError(f"hub name {name!r} must look like '{HUB_PREFIX}org/name' (optionally '@revision')")
    cache_dir = cache_dir or os.environ.get("HF_HUB_CACHE") or None
    try:
        return Path(snapshot_download(repo, revision=revision or None, cache_dir=cache_dir, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError):
        pass
    where = cache_dir or "the Hugging Face cache (HF_HUB_CACHE, default ~/.cache/huggingface/hub)"
    fetch = f"`huggingface-cli download {repo}{f' --revision {revision}' if revision else ''}`"
    if _offline():
        raise ValueError(
            f"{name} is not cached in {where} and HF_HUB_OFFLINE is set; fetch it once while online with {fetch} "
            "(then it loads offline)"
        )
    try:
        return Path(snapshot_download(repo, revision=revision or None, cache_dir=cache_dir))
    except Exception as err:  # noqa: BLE001 - network, authentication, missing repository
        raise ValueError(f"{name} is not cached in {where} and could not be downloaded ({err}); fetch it with {fetch}") from None


# transformers config -> (tessera base name, overrides)
def _from_transformers(cfg: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    kind = cfg.get("model_type")
    archs = cfg.get("architectures") or []
    labels = cfg.get("id2label") or {}
    num_classes = len(labels) if any("Classification" in a for a in archs) else 0
    img = cfg.get("image_size", 224)
    common = {"img_size": img, "patch_size": cfg.get("patch_size", 16), "in_chans": cfg.get("num_channels", 3),
              "num_classes": num_classes, "qkv_bias": bool(cfg.get("qkv_bias", True))}
    if kind in ("vit", "deit"):
        dim = cfg["hidden_size"]
        distilled = kind == "deit" and any("WithTeacher" in a for a in archs)
        base = "deit_base_distilled_patch16_224" if distilled else "vit_base_patch16_224"
        return base, {**common, "embed_dim": dim, "depth": cfg["num_hidden_layers"],
                      "num_heads": cfg["num_attention_heads"], "mlp_ratio": cfg.get("intermediate_size", 4 * dim) / dim}
    if kind == "swin":
        return "swin_tiny_patch4_window7_224", {
            **common, "patch_size": cfg.get("patch_size", 4), "embed_dim": cfg["embed_dim"],
            "depths": tuple(cfg["depths"]), "num_heads": tuple(cfg["num_heads"]),
            "window_size": cfg.get("window_size", 7), "mlp_ratio": float(cfg.get("mlp_ratio", 4.0)),
        }
    raise ValueError(f"transformers model_type {kind!r} has no tessera family (ViT, DeiT and Swin do)")


def create_model_from_hub(name: str, cache_dir: str | Path | None = None, **kwargs: Any) -> nn.Module:
    """Build and load the model of `hf-hub:org/name` (tessera, timm or transformers repository).

    kwargs are passed to `tessera.create_model` (e.g. num_classes to replace the head).
    """
    from tessera.core.registry import create_model
    from tessera.io.checkpoint import CheckpointError, read_tessera_config

    folder = hub_folder(name, cache_dir)
    saved = read_tessera_config(folder)
    if saved is not None:
        return create_model(saved["architecture"], checkpoint=folder, **kwargs)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{name} ({folder}) has no config.json: cannot tell which model it holds")
    try:
        cfg = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"malformed JSON in {str(config_path)!r}: {err}") from None
    if isinstance(cfg.get("architecture"), str):  # timm: "vit_base_patch16_224.augreg_in21k"
        base = cfg["architecture"].split(".")[0]
        overrides = {"num_classes": cfg["num_classes"]} if "num_classes" in cfg else {}
        return create_model(base, checkpoint=folder, **{**overrides, **kwargs})
    if "model_type" in cfg:
        base, overrides = _from_transformers(cfg)
        return create_model(base, checkpoint=folder, **{**overrides, **kwargs})
    raise CheckpointError(f"{str(config_path)!r} is neither tessera's, timm's nor transformers' config")


def check_repo_id(repo_id: str) -> None:
    """Raise before any work when `repo_id` is not 'org/name' or the Hub is switched off (HF_HUB_OFFLINE)."""
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo_id must look like 'org/name', got {repo_id!r}")
    if _offline():
        raise ValueError(f"cannot publish {repo_id}: HF_HUB_OFFLINE is set")


def upload_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload tessera model",
    api: Any = None,
) -> str:
    """Upload a saved folder (model.safetensors + config.json) as Hub repository `repo_id`; its `hf-hub:` name."""
    check_repo_id(repo_id)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message)
    return f"{HUB_PREFIX}{repo_id}"


def push_to_hub(model: nn.Module, repo_id: str, **hub_kwargs: Any) -> str:
    """Publish `model.save_pretrained(...)` to the Hub as `repo_id`; returns the `hf-hub:` name that loads it.

    Keyword arguments are `upload_folder`'s (private, token, commit_message, and `api`: a
    `huggingface_hub.HfApi`, one with the default endpoint and token when None). The same as
    `model.save_pretrained(folder, push_to_hub=True, repo_id=repo_id)` without keeping a folder.

    Raises:
        ValueError: HF_HUB_OFFLINE is set, or repo_id is not 'org/name' (before anything is written).
    """
    import tempfile

    check_repo_id(repo_id)
    with tempfile.TemporaryDirectory() as tmp:
        folder = model.save_pretrained(Path(tmp) / "export")
        return upload_folder(folder, repo_id, **hub_kwargs)
