"""Reading weights from any supported layout into a tessera model.

A checkpoint is a file or a folder. Files: safetensors, or a pickle
(`.pth`, `.pt`, `.bin`, `.ckpt`) read with `torch.load(weights_only=True)` only;
the format is told from the file's first bytes, not its name (a safetensors
file called `.ckpt` is read as safetensors). Folders: tessera's (`config.json`
+ `model.safetensors`) or Hugging Face's (`model.safetensors`, sharded
`model.safetensors.index.json`, or `pytorch_model.bin`); a shard must lie
inside its folder. Foreign key layouts are translated by the model family's
converter (`tessera.io.convert`), detected from the keys. Every unreadable
input raises `CheckpointError` naming the file.
"""

from __future__ import annotations

import json
import logging
import pickle
import struct
import warnings
from pathlib import Path
from typing import Literal

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
    "diffusion_pytorch_model.safetensors",  # diffusers' model folders
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.bin",
)
# Wrappers that training scripts put around the weights (official Swin: "model").
_WRAPPER_KEYS = ("model", "state_dict", "module", "model_state")
# Key prefixes that wrappers add: DDP / DataParallel, torch.compile, Lightning's `self.model`.
# They nest (`_orig_mod.module.` from torch.compile(DDP(model))), so they are stripped repeatedly.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not fit the model."""


def sniff_format(path: Path) -> Literal["safetensors", "pickle", "empty", "unknown"]:
    """The file's format from its first bytes (never from its name).

    safetensors: an 8-byte little-endian header length, then the JSON header's '{'.
    torch.save: a zip archive ('PK') or a legacy pickle (protocol byte 0x80).
    """
    with open(path, "rb") as f:
        head = f.read(9)
    if not head:
        return "empty"
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return "pickle"
    return "unknown"


def _safetensors_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    _check_safetensors_header(path)
    try:
        with safe_open(str(path), "pt") as f:
            return f.metadata() or {}
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error type and OSError
        raise CheckpointError(f"corrupt safetensors file {str(path)!r}: {err}") from None


def _check_safetensors_header(path: Path) -> None:
    """The header length must fit in the file (a corrupt length would otherwise ask for exabytes)."""
    size = path.stat().st_size
    if size < 8:
        raise CheckpointError(f"corrupt safetensors file {str(path)!r}: {size} bytes, shorter than the 8-byte header length")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    if n > size - 8:
        raise CheckpointError(
            f"corrupt safetensors file {str(path)!r}: its header claims {n} bytes but the file has {size - 8} "
            "after the length field (truncated or not a safetensors file)"
        )


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"malformed JSON in {str(path)!r}: {err}") from None


def _tessera_meta(meta: object, where: str, strict: bool = True) -> dict | None:
    """Check a tessera `{"architecture", "config"}` record; None when it is not tessera's.

    A folder's config.json may be foreign (transformers: "architectures", "model_type";
    timm: "architecture" with "pretrained_cfg", "num_classes", ...): with `strict=False`
    a record is tessera's only when it has "config" or nothing but "architecture".
    """
    if not isinstance(meta, dict) or "architecture" not in meta:
        return None  # a foreign config (transformers: "architectures", "model_type", ...)
    if not strict and "config" not in meta and set(meta) != {"architecture"}:
        return None  # timm's config.json
    if not isinstance(meta["architecture"], str) or not isinstance(meta.get("config"), dict):
        raise CheckpointError(
            f"{where} names architecture {meta['architecture']!r} but has no 'config' object "
            f"(found keys {sorted(map(str, meta))}); expected {{'architecture': NAME, 'config': {{...}}}}"
        )
    return meta


def read_tessera_config(path: str | Path) -> dict | None:
    """`{"architecture", "config"}` of a tessera checkpoint, or None for foreign ones.

    Raises:
        CheckpointError: naming the file, when it is corrupt or its record is malformed.
    """
    path = Path(path)
    if path.is_dir() and (path / "model.safetensors").is_file():
        # The weights file carries its own config: it is the one record written
        # atomically with the weights, so a save that died between the two files
        # (config.json is a copy for people and other tools) still loads as one export.
        meta = read_tessera_config(path / "model.safetensors")
        if meta is not None:
            return meta
    if path.is_file() and sniff_format(path) == "safetensors":
        text = _safetensors_metadata(path).get("tessera")
        if not text:
            return None
        try:
            meta = json.loads(text)
        except json.JSONDecodeError as err:
            raise CheckpointError(f"malformed 'tessera' metadata in {str(path)!r}: {err}") from None
        if not isinstance(meta, dict) or "architecture" not in meta:
            raise CheckpointError(f"'tessera' metadata in {str(path)!r} has no 'architecture'")
        return _tessera_meta(meta, f"the 'tessera' metadata of {str(path)!r}")
    if path.is_dir() and (path / "config.json").is_file():
        return _tessera_meta(_read_json(path / "config.json"), str(path / "config.json"), strict=False)
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
    kind = sniff_format(path)
    if kind == "empty":
        raise CheckpointError(f"checkpoint file {str(path)!r} is empty (0 bytes)")
    if kind == "safetensors" or (kind == "unknown" and path.suffix == ".safetensors"):
        from safetensors.torch import load_file

        _check_safetensors_header(path)
        try:
            return load_file(str(path))
        except Exception as err:  # noqa: BLE001 - SafetensorError, OSError, ...
            raise CheckpointError(f"corrupt safetensors file {str(path)!r}: {err}") from None
    if kind == "pickle" or path.suffix in _PICKLE_SUFFIXES:
        return _unwrap(_load_pickle(path), path)
    raise CheckpointError(
        f"unsupported checkpoint file {str(path)!r}: not safetensors or a torch.save file by its content; "
        f"expected .safetensors, {', '.join(_PICKLE_SUFFIXES)} or a folder"
    )


def _load_pickle(path: Path) -> object:
    try:
        with open(path, "rb") as f:  # a file object: torch.load would pick its reader by the file name
            return torch.load(f, map_location="cpu", weights_only=True)
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
    """The shards listed by a Hugging Face index; each must be a file inside the index's folder."""
    index = _read_json(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(
            f"sharded checkpoint index {str(index_path)!r} has no 'weight_map' object "
            "(expected {\"weight_map\": {\"tensor name\": \"shard file\", ...}})"
        )
    folder = index_path.parent.resolve()
    out: StateDict = {}
    for shard in sorted(set(weight_map.values())):
        target = (folder / shard).resolve()
        if Path(shard).is_absolute() or not target.is_relative_to(folder) or target.suffix == ".json":
            raise CheckpointError(
                f"sharded checkpoint index {str(index_path)!r} names shard {shard!r}, which is outside "
                f"the checkpoint folder {str(folder)!r}; shards must be files in that folder"
            )
        out.update(read_state_dict(target))
    missing = sorted(set(weight_map) - set(out))
    if missing:
        raise CheckpointError(
            f"sharded checkpoint {str(index_path)!r}: tensors {missing[:8]} listed in its weight_map "
            "are in none of the shards"
        )
    return out


def strip_wrapper_prefixes(state: StateDict, model: nn.Module) -> StateDict:
    """Remove wrapper prefixes (`module.`, `_orig_mod.`, `model.`, nested in any order) that the model lacks."""
    own = list(model.state_dict())
    changed = True
    while state and changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in own):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def warn_non_finite(state: StateDict, path: str | Path) -> list[str]:
    """Warn (naming them) about tensors holding NaN or inf; returns their names."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        warnings.warn(
            f"checkpoint {str(path)!r} holds non-finite values (NaN or inf) in {len(bad)} tensor(s): "
            f"{bad[:8]}{' ...' if len(bad) > 8 else ''}; the model's outputs will not be finite",
            RuntimeWarning,
            stacklevel=3,
        )
    return bad


# transformers' ViT / DeiT layout (its LayerNorm epsilon defaults to 1e-12, timm's is 1e-6)
_HF_VIT_KEY = "embeddings.patch_embeddings.projection.weight"
_HF_VIT_TYPES = ("vit", "deit")


def source_norm_eps(path: str | Path, state: StateDict) -> float | None:
    """The LayerNorm epsilon a foreign ViT / DeiT checkpoint was trained with, when it says or implies one.

    A transformers folder's config.json gives `layer_norm_eps`; transformers' key layout without
    a config means its default, 1e-12. None otherwise (timm, official: the model's own 1e-6).
    """
    path = Path(path)
    config = (path if path.is_dir() else path.parent) / "config.json"
    if config.is_file():
        try:
            meta = json.loads(config.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            meta = None
        if isinstance(meta, dict) and meta.get("model_type") in _HF_VIT_TYPES and "layer_norm_eps" in meta:
            return float(meta["layer_norm_eps"])
    if any(k.endswith(_HF_VIT_KEY) for k in state) and not any(".stages." in k or "swin" in k for k in state):
        return 1e-12
    return None


def _adopt_source_norm_eps(model: nn.Module, path: str | Path, state: StateDict) -> None:
    """Give a model with a `norm_eps` config field the checkpoint's epsilon, so its outputs are the peer's.

    Only when the field still has its default: a value the user set is kept.
    """
    import dataclasses

    config = getattr(model, "config", None)
    if config is None or not dataclasses.is_dataclass(config):
        return
    field = next((f for f in dataclasses.fields(config) if f.name == "norm_eps"), None)
    eps = source_norm_eps(path, state) if field is not None else None
    if eps is None or config.norm_eps != field.default or eps == config.norm_eps:
        return
    old = config.norm_eps
    for m in model.modules():
        if isinstance(m, nn.LayerNorm) and m.eps == old:
            m.eps = eps
    model.config = dataclasses.replace(config, norm_eps=eps)
    log.info("LayerNorm epsilon %g from the checkpoint %s (the model's default was %g)", eps, path, old)


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
    if saved is None:
        _adopt_source_norm_eps(model, path, state)
    state = strip_wrapper_prefixes(state, model)
    state = convert_state_dict(state, model, saved["config"] if saved else None)
    warn_non_finite(state, path)
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
    # Tensors a foreign checkpoint may lack and that keep their initial values (a mask
    # token added for masked-image pre-training from a supervised checkpoint).
    optional = getattr(model, "optional_keys", ())
    missing = [k for k in expected if k not in state and k not in optional]
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
