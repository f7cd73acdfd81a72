"""`tessera caption`: caption images with an exported CoCa run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def caption_main(argv: list[str]) -> int:
    """`tessera caption --checkpoint RUN --images PATHS... [--method greedy|beam|sample] [--grid out.png]`."""
    import torch

    from tessera.data.text import TextTokenizer
    from tessera.data.transforms import Normalize, Resize
    from tessera.ssl.coca import CoCa
    from tessera.ssl.coca_generate import generate
    from tessera.train.cli import load_run

    parser = argparse.ArgumentParser(prog="tessera caption", description=caption_main.__doc__)
    parser.add_argument("--checkpoint", required=True, help="exported CoCa run folder (or RUN/best)")
    parser.add_argument("--images", nargs="+", required=True, help="image files (PNG/JPEG/WebP; alpha on white)")
    parser.add_argument("--method", choices=("greedy", "beam", "sample"), default="greedy")
    parser.add_argument("--beam-width", type=int, default=4, help="beams per image (--method beam)")
    parser.add_argument("--length-penalty", type=float, default=1.0, help="beam score = log p / length**this")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    parser.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest tokens (0: all)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    parser.add_argument("--seed", type=int, default=0, help="seed of sampling")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.add_argument("--grid", default=None, help="also write a PNG grid of the images with their captions")
    parser.add_argument("--json", action="store_true", help="print one JSON object per line")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    model, pre = load_run(args.checkpoint)
    if not isinstance(model, CoCa):
        raise ValueError(f"{args.checkpoint!r} holds a {type(model).__name__}, not a CoCa model")
    tokenizer = _tokenizer(Path(args.checkpoint), pre, TextTokenizer)
    resize, norm = Resize(int(pre["img_size"])), Normalize(pre["mean"], pre["std"])
    g = torch.Generator().manual_seed(args.seed)
    shown, captions = [], []
    for start in range(0, len(args.images), args.batch_size):
        paths = args.images[start : start + args.batch_size]
        raw = [resize(read_image(p, int(pre["in_chans"]))) for p in paths]
        with torch.inference_mode():
            ids = generate(
                model, torch.stack([norm(x) for x in raw]), args.method, beam_width=args.beam_width,
                length_penalty=args.length_penalty, temperature=args.temperature, top_k=args.top_k,
                top_p=args.top_p, generator=g,
            )
        for path, text in zip(paths, tokenizer.decode(ids)):
            print(json.dumps({"image": path, "caption": text}) if args.json else f"{path}: {text}")
            captions.append(text)
        shown += raw
    if args.grid:
        caption_grid(shown, captions, args.grid)
        print(f"grid: {args.grid}")
    return 0


def _tokenizer(folder: Path, pre: dict, cls: type):
    """The run's tokenizer: preprocess.json's copy, else tokenizer.json in the folder or its parent."""
    if "tokenizer" in pre:
        return cls.from_json(pre["tokenizer"])
    for path in (folder / "tokenizer.json", folder.parent / "tokenizer.json"):
        if path.is_file():
            return cls.load(path)
    raise FileNotFoundError(
        f"no tokenizer for {str(folder)!r}: expected 'tokenizer' in preprocess.json or a tokenizer.json "
        "(both written by `tessera fit` with a caption DataModule)"
    )


def read_image(path: str, in_chans: int):
    """(C, H, W) in [0, 1]; a transparent background is composited on white, as the emoji were rendered."""
    import numpy as np
    import torch
    from PIL import Image

    from tessera.data.datasets import load_image

    with Image.open(path) as im:
        if im.mode not in ("RGBA", "LA", "PA") and not (im.mode == "P" and "transparency" in im.info):
            return load_image(path, in_chans)
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        flat = Image.alpha_composite(white, rgba).convert("L" if in_chans == 1 else "RGB")
        arr = np.asarray(flat, dtype=np.float32) / 255.0
    t = torch.from_numpy(arr.copy())
    return t[None] if in_chans == 1 else t.permute(2, 0, 1).contiguous()


def caption_grid(images: list, captions: list[str], path: str | Path, cols: int = 6, cell: int = 128) -> Path:
    """A PNG of images (C, H, W) in [0, 1] with their captions wrapped underneath."""
    import textwrap

    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    rows = -(-len(images) // cols)
    text_h = 44
    sheet = Image.new("RGB", (cols * cell, rows * (cell + text_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (img, text) in enumerate(zip(images, captions)):
        arr = (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        tile = Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr).convert("RGB")
        tile = tile.resize((cell - 8, cell - 8), Image.NEAREST)
        x, y = (i % cols) * cell, (i // cols) * (cell + text_h)
        sheet.paste(tile, (x + 4, y + 4))
        draw.multiline_text((x + 4, y + cell), "\n".join(textwrap.wrap(text, 22)[:3]), fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def caption(argv: list[str]) -> int:
    """caption images with an exported CoCa run (`--checkpoint RUN --images ...`)"""
    return caption_main(argv)


COMMANDS = {"caption": caption}
