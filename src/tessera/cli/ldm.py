"""`tessera sample-ldm` (latent diffusion runs, classifier-free guidance) and `tessera cache-latents`.

    tessera sample-ldm --checkpoint runs/ldm_digits --class 7 --guidance 3 --num 16 --out sevens.png
    tessera sample-ldm --checkpoint runs/ldm_digits_text --prompt "a handwritten seven" --guidance 3
    tessera cache-latents --config configs/ldm_digits.yaml --out runs/digits_latents.safetensors
"""

from __future__ import annotations


def sample_ldm(argv: list[str]) -> int:
    """draw images from a latent diffusion run (--class / --prompt, --guidance) into a PNG grid"""
    import argparse
    import json
    import sys
    import time
    from pathlib import Path

    import torch

    from tessera.diffusion.guidance import check_guidance
    from tessera.diffusion.images import save_grid, save_images
    from tessera.diffusion.latent import LatentDiffusion

    p = argparse.ArgumentParser(prog="tessera sample-ldm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="run folder exported by `tessera fit` (or RUN/best)")
    p.add_argument("--class", dest="cls", type=int, action="append", default=None,
                   help="class id (repeatable); default: every class in turn (class-conditional runs)")
    p.add_argument("--prompt", action="append", default=None, help="text prompt (repeatable; text-conditional runs)")
    p.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale s >= 0 (1: none)")
    p.add_argument("--num", type=int, default=None, help="images (default: 8 per class / prompt)")
    p.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (DDPM takes T)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="grid.png")
    p.add_argument("--save-images", default=None, metavar="DIR")
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    check_guidance(args.guidance)
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = Path(args.checkpoint)
    if not folder.exists():
        raise ValueError(f"checkpoint folder not found: {str(folder)!r}")
    try:
        model, spec = LatentDiffusion.from_pretrained(folder)
    except FileNotFoundError as err:
        raise ValueError(str(err)) from None
    kind = spec["cond_encoder"]["type"]
    if kind == "class":
        if args.prompt:
            raise ValueError("this run is class-conditional: use --class, not --prompt")
        K = spec["cond_encoder"]["num_classes"]
        classes = args.cls if args.cls is not None else list(range(K))
        bad = [c for c in classes if not 0 <= c < K]
        if bad:
            raise ValueError(f"--class must be in [0, {K}) for this run, got {bad}")
        n = args.num or 8 * len(classes)
        y = torch.tensor(classes).repeat_interleave(-(-n // len(classes)))[:n]
        nrow = -(-n // len(classes))
    else:
        if args.cls is not None or not args.prompt:
            raise ValueError("this run is text-conditional: give --prompt TEXT (repeatable)")
        pre = folder / "preprocess.json"
        if not pre.is_file():
            raise ValueError(f"{str(pre)!r} is missing: the run's text tokenizer is saved there")
        from tessera.data.text import TextTokenizer

        tok = TextTokenizer.from_json(json.loads(pre.read_text())["tokenizer"])
        # byte-level BPE: any character encodes (unseen ones as their UTF-8 bytes); long prompts are truncated
        rows = tok.encode(args.prompt, spec["cond_encoder"]["context_len"])
        n = args.num or 8 * len(args.prompt)
        y = rows.repeat_interleave(-(-n // len(args.prompt)), dim=0)[:n]
        nrow = -(-n // len(args.prompt))
    start = time.time()
    x = model.sample(y, args.guidance, args.sampler, args.steps, torch.Generator().manual_seed(args.seed))
    out = save_grid(x.clamp(-1, 1), args.out, nrow=nrow, scale=args.scale)
    print(f"wrote {out} ({n} images, guidance {args.guidance}, {args.sampler}, seed {args.seed}, {time.time() - start:.1f}s)")
    if args.save_images:
        print(f"wrote {len(save_images(x.clamp(-1, 1), args.save_images))} images to {args.save_images}", file=sys.stderr)
    return 0


def cache_latents_cmd(argv: list[str]) -> int:
    """encode a run config's data once with its frozen first stage (for inputs: latents)"""
    import argparse
    import importlib

    import yaml

    from tessera.train.latent_diffusion import cache_latents, load_first_stage

    p = argparse.ArgumentParser(prog="tessera cache-latents")
    p.add_argument("--config", required=True, help="a latent diffusion config (its model.init_args.first_stage* and data)")
    p.add_argument("--data", default=None, help="take the data section from this config instead (e.g. the first "
                   "stage's own, when --config reads the cache through LatentDataModule)")
    p.add_argument("--out", required=True, help="safetensors file to write")
    args = p.parse_args(argv)
    cfg = yaml.safe_load(open(args.config))
    m = cfg["model"]["init_args"]
    d = yaml.safe_load(open(args.data))["data"] if args.data else cfg["data"]
    module, _, cls = d["class_path"].rpartition(".")
    init = dict(d.get("init_args", {}))
    init.pop("augment", None)
    dm = getattr(importlib.import_module(module), cls)(**init)
    fs_args = {"img_size": dm.img_size, "in_chans": dm.in_chans, **(m.get("first_stage_args") or {})}
    first = load_first_stage(m["first_stage"], m.get("first_stage_checkpoint"), fs_args)
    print(f"wrote {cache_latents(first, dm, args.out)}")
    return 0


COMMANDS = {"sample-ldm": sample_ldm, "cache-latents": cache_latents_cmd}
