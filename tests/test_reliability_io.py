"""Hostile checkpoint input (issue 18): shards outside the folder, half-done saves, corrupt and
misnamed files, nested wrapper prefixes, non-finite weights, malformed configs and indexes."""

from __future__ import annotations

import json
import struct
import warnings

import pytest
import torch
from safetensors.torch import save_file

import tessera
from tessera.io import CheckpointError, read_state_dict
from tessera.io.checkpoint import read_tessera_config

TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=3)
NAME = "vit_base_patch16_224"


def _vit(**kw):
    return tessera.create_model(NAME, **{**TINY_VIT, **kw})


def _sharded(folder, state, shard_names):
    """A Hugging Face style sharded folder: index + one shard per name."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = sorted(state)
    weight_map = {}
    for i, name in enumerate(shard_names):
        part = {k: state[k].contiguous() for k in keys[i :: len(shard_names)]}
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        save_file(part, str(target))
        weight_map.update({k: name for k in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def test_sharded_index_cannot_name_a_shard_outside_its_folder(tmp_path):
    state = _vit().state_dict()
    ok = _sharded(tmp_path / "ok", state, ["a.safetensors", "b.safetensors"])
    assert set(read_state_dict(ok)) == set(state)
    # a second "run" outside the checkpoint folder that the index points into
    _sharded(tmp_path / "run", state, ["model-1.safetensors", "model-2.safetensors"])
    evil = tmp_path / "ckpt" / "inner"
    evil.mkdir(parents=True)
    index = json.loads((tmp_path / "run" / "model.safetensors.index.json").read_text())
    index["weight_map"] = {k: f"../../run/{v}" for k, v in index["weight_map"].items()}
    (evil / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"outside the checkpoint folder"):
        read_state_dict(evil)
    index["weight_map"] = {k: str(tmp_path / "run" / v) for k, v in index["weight_map"].items()}  # absolute
    (evil / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"outside the checkpoint folder"):
        read_state_dict(evil)


def test_index_without_weight_map_or_malformed_is_a_checkpoint_error(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}}))
    with pytest.raises(CheckpointError, match="weight_map"):
        read_state_dict(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="malformed JSON.*index.json"):
        read_state_dict(tmp_path)


def test_save_pretrained_failing_half_way_leaves_the_old_or_the_new_export(tmp_path, monkeypatch):
    old, new = _vit(), _vit(num_classes=5)
    old.save_pretrained(tmp_path)
    import safetensors.torch

    def boom(*a, **k):
        raise OSError("disk full")

    # dies while writing the weights: the old export is intact
    monkeypatch.setattr(safetensors.torch, "save_model", boom)
    with pytest.raises(OSError):
        new.save_pretrained(tmp_path)
    monkeypatch.undo()
    back = tessera.create_model(NAME, checkpoint=tmp_path)
    assert back.config.num_classes == 3 and torch.equal(back.head.weight, old.head.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]  # no temp files
    # dies after the weights, while writing config.json: the new export loads as a whole
    real_write_text = type(tmp_path).write_text

    def fail_config(self, *a, **k):
        if self.name.startswith("config.json"):
            raise OSError("disk full")
        return real_write_text(self, *a, **k)

    monkeypatch.setattr(type(tmp_path), "write_text", fail_config)
    with pytest.raises(OSError):
        new.save_pretrained(tmp_path)
    monkeypatch.undo()
    back = tessera.create_model(NAME, checkpoint=tmp_path)
    assert back.config.num_classes == 5 and torch.equal(back.head.weight, new.head.weight)


@pytest.mark.parametrize("damage", ["truncated", "zero_bytes", "huge_header"])
def test_damaged_safetensors_is_a_checkpoint_error_naming_the_file(tmp_path, damage):
    _vit().save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "zero_bytes":
        path.write_bytes(b"")
    else:
        path.write_bytes(struct.pack("<Q", 2**62) + data[8:])
    for checkpoint in (tmp_path, path):  # the folder, and the file itself
        with pytest.raises(CheckpointError, match="model.safetensors"):
            tessera.create_model(NAME, checkpoint=checkpoint)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        read_state_dict(path)


def test_format_is_sniffed_from_content_not_the_name(tmp_path):
    model = _vit()
    model.save_pretrained(tmp_path / "export")
    misnamed = tmp_path / "weights.ckpt"
    misnamed.write_bytes((tmp_path / "export" / "model.safetensors").read_bytes())
    back = tessera.create_model(NAME, checkpoint=misnamed)  # config from the metadata, weights as safetensors
    assert torch.equal(back.head.weight, model.head.weight)
    pickled = tmp_path / "weights.safetensors"  # a torch.save file with a safetensors name
    torch.save(model.state_dict(), pickled)
    assert torch.equal(read_state_dict(pickled)["head.weight"], model.head.weight)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "_orig_mod.module.", "module._orig_mod.", "model._orig_mod."])
def test_nested_wrapper_prefixes_are_invisible_to_loading(tmp_path, prefix):
    model = _vit()
    torch.save({"state_dict": {prefix + k: v for k, v in model.state_dict().items()}}, tmp_path / "w.pth")
    back = tessera.create_model(NAME, checkpoint=tmp_path / "w.pth", **TINY_VIT)
    assert torch.equal(back.head.weight, model.head.weight)


def test_non_finite_weights_warn_naming_the_tensors(tmp_path):
    model = _vit()
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
        model.head.bias[1] = float("inf")
    model.save_pretrained(tmp_path)
    with pytest.warns(RuntimeWarning, match=r"non-finite.*head\.bias.*head\.weight") as record:
        tessera.create_model(NAME, checkpoint=tmp_path)
    assert any(str(tmp_path) in str(w.message) or "head.weight" in str(w.message) for w in record)
    _vit().save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        tessera.create_model(NAME, checkpoint=tmp_path)  # finite weights: silent


def test_malformed_config_json_and_metadata_name_the_file(tmp_path):
    model = _vit()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    folder = tmp_path / "f"
    folder.mkdir()
    save_file(state, str(folder / "model.safetensors"))  # foreign weights: config.json decides
    (folder / "config.json").write_text("{'architecture': oops")
    with pytest.raises(CheckpointError, match=r"malformed JSON in .*config.json"):
        tessera.create_model(NAME, checkpoint=folder)
    (folder / "config.json").write_text(json.dumps({"architecture": NAME}))
    with pytest.raises(CheckpointError, match=r"config.json.*no 'config'"):
        tessera.create_model(NAME, checkpoint=folder)
    meta_only = tmp_path / "m.safetensors"
    save_file(state, str(meta_only), metadata={"tessera": json.dumps({"architecture": NAME})})
    with pytest.raises(CheckpointError, match=r"m.safetensors.*no 'config'"):
        read_tessera_config(meta_only)
    save_file(state, str(meta_only), metadata={"tessera": "{broken"})
    with pytest.raises(CheckpointError, match=r"malformed 'tessera' metadata in .*m.safetensors"):
        tessera.create_model(NAME, checkpoint=meta_only)
