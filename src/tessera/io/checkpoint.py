"""Reading weights from any supported layout into a tessera model.

A checkpoint is a file or a folder. Files: `.safetensors`, or a pickle
(`.pth`, `.pt`, `.bin`, `.ckpt`) read with `torch.load(weights_only=True)` only.
Folders: tessera's (`config.json` + `model.safetensors`) or Hugging Face's
(`model.safetensors`, sharded `model.safetensors.index.json`, or
`pytorch_model.bin`). Foreign key layouts are translated by the model family's
converter (`tessera.io.convert`), detected from the keys.
"""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import torch
from torch import Tensor, nn

from tessera.io.convert import convert_state_dict

log = logging.getLogger(__name__)

StateDict = dict[str, Tensor]

_PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_FOLDER_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# Wrappers that training scripts put around the weights (official Swin: "model").
_WRAPPER_KEYS = ("model", "state_dict", "module", "model_state")


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not fit the model."""


def read_tessera_config(path: str | Path) -> dict | None:
    """`{"architecture", "config"}` of a tessera checkpoint, or None for foreign ones."""
    path = Path(path)
    candidates = [path / "config.json"] if path.is_dir() else []
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            text = (f.metadata() or {}).get("tessera")
        return json.loads(text) if text else None
    for c in candidates:
        if c.is_file():
            meta = json.loads(c.read_text())
            if "architecture" in meta and "config" in meta:
                return meta
    return None


def read_state_dict(path: str | Path) -> StateDict:
    """All tensors of a checkpoint file or folder, unwrapped from training dicts."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {str(path)!r}")
    if path.is_dir():
        for name in _FOLDER_FILES:
            if (path / name).is_file():
                return read_state_dict(path / name)
        found = sorted(p.name for p in path.iterdir())[:10]
        raise CheckpointError(
            f"no weights in folder {str(path)!r}: expected one of {list(_FOLDER_FILES)}, found {found}"
        )
    if path.name.endswith(".index.json"):
        return _read_sharded(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"corrupt safetensors file {str(path)!r}: {err}") from None
    if path.suffix in _PICKLE_SUFFIXES:
        return _unwrap(_load_pickle(path), path)
    raise CheckpointError(
        f"unsupported checkpoint file {str(path)!r}: expected .safetensors, "
        f"{', '.join(_PICKLE_SUFFIXES)} or a folder"
    )


def _load_pickle(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refusing to load {str(path)!r}: it needs arbitrary unpickling, which can run "
            f"code. Only tensors, dicts, lists and numbers are accepted "
            f"(torch.load(weights_only=True)). Detail: {str(err).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"corrupt or truncated checkpoint {str(path)!r}: {err}") from None


def _unwrap(obj: object, path: Path) -> StateDict:
    while isinstance(obj, dict) and not _is_state_dict(obj):
        key = next((k for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if key is None:
            raise CheckpointError(
                f"{str(path)!r} holds a dict without tensors; expected a state dict or one "
                f"under {list(_WRAPPER_KEYS)}, found keys {sorted(map(str, obj))[:10]}"
            )
        obj = obj[key]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{str(path)!r} holds a {type(obj).__name__}, not a state dict")
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    return tensors


def _is_state_dict(obj: dict) -> bool:
    return any(isinstance(v, Tensor) for v in obj.values())


def _read_sharded(index_path: Path) -> StateDict:
    index = json.loads(index_path.read_text())
    out: StateDict = {}
    for shard in sorted(set(index["weight_map"].values())):
        out.update(read_state_dict(index_path.parent / shard))
    return out


def load_checkpoint(
    model: nn.Module, path: str | Path, *, drop_head: bool = False, strict: bool = True
) -> nn.Module:
    """Load a checkpoint of any supported layout into `model`, in place.

    Args:
        model: a tessera model (its `family` picks the converter).
        path: file or folder.
        drop_head: skip classifier weights whose shape does not fit (fine-tuning
            to another number of classes).
        strict: every learned tensor of the model must be in the checkpoint.
    """
    state = read_state_dict(path)
    saved = read_tessera_config(path)
    state = convert_state_dict(state, model, saved["config"] if saved else None)
    expected = model.state_dict()  # non-persistent buffers are not in here
    head_keys = getattr(model, "head_keys", ())
    if drop_head:
        for k in list(state):
            if k.startswith(head_keys) and (k not in expected or state[k].shape != expected[k].shape):
                del state[k]
    for k, v in state.items():
        if k in expected and v.shape != expected[k].shape:
            raise CheckpointError(
                f"checkpoint {str(path)!r} does not fit {type(model).__name__}: "
                f"{k!r} has shape {tuple(v.shape)} in the checkpoint, "
                f"{tuple(expected[k].shape)} in the model"
            )
    missing = [k for k in expected if k not in state]
    if drop_head:
        missing = [k for k in missing if not k.startswith(head_keys)]
    unexpected = [k for k in state if k not in expected]
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not match {type(model).__name__}: "
            f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
        )
    model.load_state_dict(state, strict=False)
    log.info("loaded %d tensors from %s", len(state), path)
    return model
