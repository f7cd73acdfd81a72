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


# ---------------------------------------------------------------- converters: shared helpers, registration


def test_fuse_qkv_orders_rows_q_k_v_and_names_what_is_missing():
    from tessera.io.convert.common import fuse_qkv

    q, k, v = torch.full((2, 3), 1.0), torch.full((2, 3), 2.0), torch.full((2, 3), 3.0)
    fused = fuse_qkv({"attn.qkv.weight": {"v": v, "q": q, "k": k}}, "toy")
    assert torch.equal(fused["attn.qkv.weight"], torch.cat([q, k, v]))
    with pytest.raises(ValueError, match=r"toy checkpoint: 'attn.qkv.bias' .*found only \['q', 'v'\]"):
        fuse_qkv({"attn.qkv.bias": {"q": q[0], "v": v[0]}}, "toy")


def test_fit_pos_grid_takes_the_saved_grid_else_a_square_one():
    from tessera.io.convert.common import fit_pos_grid
    from tessera.layers import resample_abs_pos_embed

    pos = torch.randn(1, 1 + 24, 8)  # a CLS entry + a 4 x 6 grid
    assert fit_pos_grid(pos, (4, 6), 1, saved_grid=(4, 6)) is pos
    # same number of entries, other shape: resampled from the saved grid, not kept as it is
    torch.testing.assert_close(fit_pos_grid(pos, (6, 4), 1, saved_grid=(4, 6)), resample_abs_pos_embed(pos, (6, 4), (4, 6), 1))
    assert fit_pos_grid(pos, (6, 4), 1) is pos  # a foreign file whose size fits: kept
    square = torch.randn(1, 16, 8)  # foreign, 4 x 4
    torch.testing.assert_close(fit_pos_grid(square, (2, 3)), resample_abs_pos_embed(square, (2, 3), (4, 4), 0))
    odd = torch.randn(1, 15, 8)
    assert fit_pos_grid(odd, (4, 4)) is odd  # no grid to infer: left to the loader's shape check


def test_fit_rel_pos_table_takes_the_saved_window_else_a_square_one():
    from tessera.io.convert.common import fit_rel_pos_table
    from tessera.layers import resize_rel_pos_table

    table = torch.randn(7 * 11, 2)  # window (4, 6): (2*4-1)(2*6-1) offsets
    assert fit_rel_pos_table(table, (4, 6), (4, 6)) is table
    torch.testing.assert_close(fit_rel_pos_table(table, (6, 4), (4, 6)), resize_rel_pos_table(table, (6, 4), (4, 6)))
    assert fit_rel_pos_table(table, (6, 4)) is table  # foreign and fitting: kept
    w7 = torch.randn(13 * 13, 2)
    torch.testing.assert_close(fit_rel_pos_table(w7, (12, 12)), resize_rel_pos_table(w7, (12, 12), (7, 7)))
    even = torch.randn(16, 2)
    assert fit_rel_pos_table(even, (3, 3)) is even


def test_a_family_registers_its_converter_from_its_own_module(tmp_path):
    """No central list: a class with `family` and a converter registered anywhere is converted on load."""
    from tessera.io.convert import register_converter

    class _Renamed(_Toy):
        family = "test-io-renamed-toy"

    @register_converter("test-io-renamed-toy")
    def convert(state, model, source_config=None):
        return {k.replace("trunk.", "body."): v for k, v in state.items()}

    src = _Toy()
    torch.save({k.replace("body.", "trunk."): v for k, v in src.state_dict().items()}, tmp_path / "w.pth")
    dst = load_checkpoint(_Renamed(), tmp_path / "w.pth")
    assert torch.equal(dst.body.weight, src.body.weight)
    with pytest.raises(ValueError, match="registered twice"):
        register_converter("test-io-renamed-toy")(lambda s, m, c=None: s)
