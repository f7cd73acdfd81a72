import pickle
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from tessera.io import CheckpointError, load_checkpoint, read_state_dict
from tessera.models import TesseraModel


@dataclass(frozen=True)
class _Cfg:
    dim: int = 4
    num_classes: int = 3


class _Toy(TesseraModel):
    head_keys = ("head.",)

    def __init__(self, cfg=_Cfg()):
        super().__init__(cfg)
        self.body = nn.Linear(cfg.dim, cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)
        self.register_buffer("derived", torch.ones(2), persistent=False)


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_tessera_layout_round_trip(tmp_path):
    src, dst = _Toy(), _Toy()
    src.arch = "toy"
    src.save_pretrained(tmp_path)
    load_checkpoint(dst, tmp_path)
    for a, b in zip(src.parameters(), dst.parameters()):
        assert torch.equal(a, b)
    assert not list(tmp_path.glob("*.tmp"))


def test_official_style_pth_with_model_key(tmp_path):
    src, dst = _Toy(), _Toy()
    torch.save({"model": src.state_dict(), "epoch": 3}, tmp_path / "ckpt.pth")
    load_checkpoint(dst, tmp_path / "ckpt.pth")
    assert torch.equal(src.body.weight, dst.body.weight)


def test_lightning_prefix_is_stripped(tmp_path):
    src, dst = _Toy(), _Toy()
    torch.save({"state_dict": {f"model.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "x.ckpt")
    load_checkpoint(dst, tmp_path / "x.ckpt")
    assert torch.equal(src.head.bias, dst.head.bias)


def test_pickle_that_runs_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": _Evil()}}, f)
    with pytest.raises(CheckpointError, match="arbitrary unpickling"):
        read_state_dict(path)


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        read_state_dict(bad)
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "nope.safetensors")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no weights in folder"):
        read_state_dict(empty)
    with pytest.raises(CheckpointError, match="unsupported"):
        (tmp_path / "w.txt").write_text("x")
        read_state_dict(tmp_path / "w.txt")


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    torch.save(_Toy(_Cfg(dim=5)).state_dict(), tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match=r"'body.weight' has shape \(5, 5\).*\(4, 4\)"):
        load_checkpoint(_Toy(), tmp_path / "w.pth")


def test_missing_keys_are_an_error_unless_head_is_dropped(tmp_path):
    sd = _Toy().state_dict()
    torch.save({k: v for k, v in sd.items() if k != "body.bias"}, tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match="missing.*body.bias"):
        load_checkpoint(_Toy(), tmp_path / "w.pth")
    torch.save(_Toy(_Cfg(num_classes=7)).state_dict(), tmp_path / "h.pth")
    model = load_checkpoint(_Toy(), tmp_path / "h.pth", drop_head=True)
    assert model.head.weight.shape == (3, 4)
