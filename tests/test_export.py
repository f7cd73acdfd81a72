"""torch.export and ONNX export with dynamic batch and size, checked against eager (timm#1844: Swin)."""

import pytest
import torch

import tessera
from tessera.export import ExportError, export_onnx, export_program

VIT = dict(embed_dim=32, depth=1, num_heads=2, img_size=32, patch_size=8, num_classes=5, dynamic_img_size=True)
SWIN = dict(embed_dim=16, depths=(2, 2), num_heads=(1, 2), window_size=4, img_size=32, num_classes=5)


def test_vit_program_takes_any_batch_and_size():
    model = tessera.create_model("vit_base_patch16_224", **VIT).eval()
    program = export_program(model, dynamic_size=True).module()
    for shape in [(3, 3, 40, 48), (1, 3, 32, 32), (2, 3, 64, 16)]:
        x = torch.randn(shape)
        with torch.no_grad():
            torch.testing.assert_close(program(x), model(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("fast_path", [True, False])
def test_swin_program_takes_any_batch(fast_path):
    model = tessera.create_model("swin_tiny_patch4_window7_224", **SWIN).eval()
    model.set_fast_path(fast_path)
    program = export_program(model).module()
    for batch in (1, 3, 7):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(program(x), model(x), rtol=0, atol=1e-5)


def test_swin_program_takes_any_batch_and_size_from_its_smallest_side():
    """One graph, timm#1844's case: padding, window gathers and the shift rule follow the symbolic size.

    At 32 px the second stage is exactly one window (no shift); at 36 and 44 px both stages pad and shift.
    """
    model = tessera.create_model("swin_tiny_patch4_window7_224", **SWIN).eval()
    assert model.min_dynamic_size() == 28  # stage grids 7 and 4 = the window
    program = export_program(model, dynamic_size=True).module()
    for shape in [(1, 3, 32, 32), (3, 3, 36, 44), (2, 3, 28, 64)]:
        x = torch.randn(shape)
        with torch.no_grad():
            torch.testing.assert_close(program(x), model(x), rtol=0, atol=1e-5)
    with pytest.raises(Exception):  # below the graph's range: refused by its input check
        program(torch.randn(1, 3, 24, 24))
    with pytest.raises(ExportError, match="serves sides from 28 px"):
        export_program(model, img_size=24, dynamic_size=True)


def test_swin_t_dynamic_range_starts_below_its_native_size():
    model = tessera.create_model("swin_tiny_patch4_window7_224", num_classes=0)
    assert model.min_dynamic_size() == 196  # last stage ceil(196 / 32) = 7 = the window; 224 is inside


class SizeDependent(torch.nn.Module):
    """Computes differently above 40 px, as Swin does where a stage stops fitting in one window
    (exporting Swin itself that way takes torch minutes to reach the same answer)."""

    patch_size = 8
    input_size = (3, 32, 32)

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        return x.mean((1, 2, 3)) * self.scale if x.shape[-1] > 40 else x.amax((1, 2, 3)) * self.scale


def test_a_graph_that_depends_on_the_size_is_refused_clearly():
    with pytest.raises(ExportError, match="dynamic image size.*one size at a time"):
        export_program(SizeDependent(), dynamic_size=True)
    assert export_program(SizeDependent()).module()(torch.ones(3, 3, 32, 32)).shape == (3,)


@pytest.mark.slow
def test_onnx_export_is_checked_by_onnxruntime_at_three_sizes(tmp_path):
    pytest.importorskip("onnxruntime")
    model = tessera.create_model("vit_base_patch16_224", **VIT).eval()
    diffs = export_onnx(model, tmp_path / "vit.onnx", dynamic_size=True)
    assert len(diffs) == 3 and max(diffs.values()) <= 1e-4
    assert (tmp_path / "vit.onnx").stat().st_size > 0


@pytest.mark.slow
def test_swin_onnx_export_with_dynamic_size_is_checked_by_onnxruntime(tmp_path):
    pytest.importorskip("onnxruntime")
    model = tessera.create_model("swin_tiny_patch4_window7_224", **SWIN).eval()
    diffs = export_onnx(model, tmp_path / "swin.onnx", dynamic_size=True, verify_sizes=[32, 36, 28])
    assert list(diffs) == ["32x36, batch 1", "36x40, batch 2", "28x32, batch 3"]
    assert max(diffs.values()) <= 1e-4


def test_export_command_refuses_a_bad_output_name(tmp_path, capsys):
    from tessera.cli import main

    assert main(["export", "vit_base_patch16_224", "--out", str(tmp_path / "model.txt")]) == 2
    assert ".onnx or .pt2" in capsys.readouterr().err
