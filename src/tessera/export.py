"""Export to `torch.export` programs and ONNX, with dynamic batch (and size where the graph allows).

    program = export_program(model, img_size=224, dynamic_size=True)      # torch.export.ExportedProgram
    export_onnx(model, "vit.onnx", img_size=224, dynamic_size=True)       # then checked by onnxruntime

A ViT built with `dynamic_img_size=True` exports one graph for any batch and
any multiple of its patch size (position embeddings are resampled inside the
graph). Swin exports one graph for every multiple of its patch from
`model.min_dynamic_size()` (every stage at least one window; Swin-T: 196) up:
padding, window gathers and the shift rule are computed from the symbolic
sizes (swin_fast.py). A model whose computation changes with the size in a
way the graph cannot hold gives an error that says to export one size at a time.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)


class ExportError(ValueError):
    """A model that cannot be exported as asked (the message says why and what works)."""


def _dynamic_shapes(model: nn.Module, dynamic_size: bool) -> dict:
    batch = torch.export.Dim("batch", min=1, max=4096)
    dims: dict = {0: batch}
    if dynamic_size:
        stride = int(getattr(model, "patch_size", 1))
        low = max(1, -(-min_dynamic_size(model) // stride))
        # Sizes are multiples of the patch stride: H = stride * h.
        dims[2] = stride * torch.export.Dim("h", min=low, max=max(1024, 2 * low))
        dims[3] = stride * torch.export.Dim("w", min=low, max=max(1024, 2 * low))
    return {"x": dims}


def _size_oblivious(enable: bool):
    """torch's `backed_size_oblivious` switch while tracing (a no-op context when off)."""
    import contextlib

    if not enable:
        return contextlib.nullcontext()
    from torch.fx.experimental import _config as fx_config

    return fx_config.patch(backed_size_oblivious=True)


def min_dynamic_size(model: nn.Module) -> int:
    """Smallest side a dynamic-size graph of `model` serves: the model's `min_dynamic_size()`, else one patch."""
    fn = getattr(model, "min_dynamic_size", None)
    return int(fn()) if callable(fn) else int(getattr(model, "patch_size", 1))


def _example(model: nn.Module, img_size: int | None, batch: int = 2) -> torch.Tensor:
    c, h, w = model.input_size
    if img_size is not None:
        h = w = img_size
    p = next(model.parameters())
    return torch.randn(batch, c, h, w, dtype=p.dtype, device=p.device)


def export_program(model: nn.Module, img_size: int | None = None, dynamic_size: bool = False) -> torch.export.ExportedProgram:
    """A `torch.export` program of `model` (eval mode) on images, with a dynamic batch and optionally size.

    Raises:
        ExportError: the graph depends on the input size and `dynamic_size` was asked for.
    """
    model = model.eval()
    x = _example(model, img_size)
    if dynamic_size:
        low = min_dynamic_size(model)
        if min(x.shape[2:]) < low:
            raise ExportError(
                f"a dynamic-size graph of {type(model).__name__} serves sides from {low} px; "
                f"export with img_size >= {low}, or export {x.shape[2]} px alone (dynamic batch only)"
            )
        # Trace where every derived size is at least 2 (torch specialises sizes of 1, e.g. one
        # window per row); the graph then serves the whole range from `low`.
        stride = int(getattr(model, "patch_size", 1))
        side = max(x.shape[2], x.shape[3], 2 * low)
        x = _example(model, -(-side // stride) * stride)
    try:
        # Size-oblivious reasoning: a derived size that is 1 at some inputs (one window per row of a
        # small stage) must not be specialised on by reshapes' stride checks (torch's 0/1 rule).
        with _size_oblivious(dynamic_size):
            program = torch.export.export(model, (x,), dynamic_shapes=_dynamic_shapes(model, dynamic_size))
        if dynamic_size:
            # torch may keep a size it had to specialise on as a runtime assertion instead of
            # failing the export: run the program at a second size to find out.
            stride = int(getattr(model, "patch_size", 1))
            other = torch.randn(1, x.shape[1], 2 * x.shape[2], 2 * x.shape[3] + stride, dtype=x.dtype)
            with torch.no_grad():
                program.module()(other)
        return program
    except Exception as err:  # torch raises several types for a specialised shape
        if not dynamic_size:
            raise
        raise ExportError(
            f"{type(model).__name__} cannot be exported with a dynamic image size: its computation changes with "
            f"the size ({type(err).__name__}: {str(err).splitlines()[0][:200]}). Export one size at a time "
            "(img_size=..., dynamic batch only)"
        ) from None


def export_onnx(
    model: nn.Module,
    path: str | Path,
    img_size: int | None = None,
    dynamic_size: bool = False,
    verify_sizes: list[int] | None = None,
    atol: float = 1e-4,
) -> dict[str, float]:
    """Write an ONNX file (opset of the torch exporter) and check it with onnxruntime against eager.

    Args:
        model: any image model; exported in eval mode.
        path: the .onnx file to write (its folder is created).
        img_size: the example size (default: the model's).
        dynamic_size: dynamic height and width as well as batch.
        verify_sizes: image sizes to check (default: three, when the size is dynamic).
        atol: the largest allowed |onnxruntime - eager| (an error past it).

    Returns:
        {"HxW, batch B": max abs difference} for every checked input.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'tessera[export]'") from None
    model = model.eval()
    program = export_program(model, img_size, dynamic_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _size_oblivious(dynamic_size):  # the ONNX exporter re-traces the program's decompositions
        onnx_program = torch.onnx.export(program, dynamo=True, input_names=["images"], output_names=["output"])
    onnx_program.save(str(path))
    c, h, _ = _example(model, img_size, 1).shape[1:]
    stride = int(getattr(model, "patch_size", 1))
    low = min_dynamic_size(model)
    sizes = verify_sizes or ([h, h + 2 * stride, max(low, stride, h - stride)] if dynamic_size else [h])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    diffs: dict[str, float] = {}
    for i, size in enumerate(sizes):
        x = torch.randn(i + 1, c, size, size + (stride if dynamic_size else 0))
        with torch.no_grad():
            expected = model(x.to(next(model.parameters()).dtype)).float().numpy()
        got = session.run(None, {name: x.numpy()})[0]
        diff = float(abs(got - expected).max())
        diffs[f"{x.shape[2]}x{x.shape[3]}, batch {x.shape[0]}"] = diff
        if not diff <= atol:
            raise ExportError(f"onnxruntime disagrees with eager on {tuple(x.shape)}: max |diff| {diff:.3g} > {atol}")
    log.info("wrote %s; onnxruntime vs eager: %s", path, diffs)
    return diffs
