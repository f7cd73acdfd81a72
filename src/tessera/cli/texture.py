"""`tessera texture`: Heeger-Bergen texture synthesis from an example image."""

from __future__ import annotations


def texture(argv: list[str]) -> int:
    """synthesise a tileable texture from an example image (Heeger-Bergen, steerable pyramid)"""
    import argparse
    import json
    from pathlib import Path

    import numpy as np
    import torch

    from tessera.data.datasets import load_image
    from tessera.energy.texture import synthesize_texture

    p = argparse.ArgumentParser(prog="tessera texture", description=texture.__doc__)
    p.add_argument("--input", required=True, help="example texture (PNG/JPEG); grey or colour")
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--size", type=int, default=256, help="output side in pixels (multiple of 2^scales)")
    p.add_argument("--iters", type=int, default=5, help="analysis / histogram-matching / synthesis rounds")
    p.add_argument("--seed", type=int, default=0, help="seed of the starting noise")
    p.add_argument("--scales", type=int, default=4, help="pyramid levels")
    p.add_argument("--orientations", type=int, default=4, help="orientations per level (steerable pyramid)")
    p.add_argument("--pyramid", choices=("steerable", "laplacian"), default="steerable")
    p.add_argument("--color", choices=("auto", "grey", "colour"), default="auto",
                   help="auto: colour when the file has colour; grey: synthesise luminance only")
    p.add_argument("--input-size", type=int, default=0, help="resize the example to this side first (0: keep)")
    p.add_argument("--side-by-side", default="", help="also write input | output as one PNG here")
    p.add_argument("--json", action="store_true", help="print the per-iteration distances as JSON")
    args = p.parse_args(argv)

    path = Path(args.input)
    if not path.is_file():
        raise ValueError(f"input texture not found: {path}")
    from PIL import Image

    with Image.open(path) as im:
        is_colour = im.mode not in ("L", "LA", "I", "I;16", "F", "1")
    if args.color == "colour" and not is_colour:
        raise ValueError(f"--color colour was asked but {path} is a greyscale image")
    chans = 3 if (args.color == "colour" or (args.color == "auto" and is_colour)) else 1
    tex = load_image(path, chans)  # (C, H, W) in [0, 1]
    if args.input_size:
        tex = torch.nn.functional.interpolate(tex[None], size=(args.input_size,) * 2, mode="bicubic",
                                              align_corners=False, antialias=True)[0].clamp(0, 1)
    res = synthesize_texture(tex, args.size, args.iters, args.seed, args.scales, args.orientations, args.pyramid)

    def to_pil(t: torch.Tensor) -> Image.Image:
        arr = (t.clamp(0, 1) * 255).round().to(torch.uint8)
        arr = arr[0].numpy() if arr.shape[0] == 1 else arr.permute(1, 2, 0).numpy()
        return Image.fromarray(np.ascontiguousarray(arr))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    to_pil(res.image).save(out)
    if args.side_by_side:
        a, b = to_pil(tex), to_pil(res.image)
        canvas = Image.new(a.mode, (a.width + 8 + b.width, max(a.height, b.height)), 255 if a.mode == "L" else (255,) * 3)
        canvas.paste(a, (0, 0))
        canvas.paste(b, (a.width + 8, 0))
        canvas.save(args.side_by_side)
    report = {
        "input": str(path), "input_shape": list(tex.shape), "size": args.size, "iters": args.iters,
        "distances": [round(d, 4) for d in res.distances], "pixel_w1": res.pixel_distance,
        "seconds": round(res.seconds, 2), "out": str(out),
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(f"wrote {out} ({res.image.shape[-1]}x{res.image.shape[-2]}, {res.seconds:.2f} s)")
        print("mean normalised subband W1 per iteration: " + " ".join(f"{d:.3f}" for d in res.distances))
    return 0


COMMANDS = {"texture": texture}
