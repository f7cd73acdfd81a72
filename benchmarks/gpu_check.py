"""The prepared GPU check (issue 17): one script, run as-is on a lent GPU machine.

    python benchmarks/gpu_check.py                 # CUDA: Swin-T, ViT-B/16, the CIFAR-10 UNet, bf16
    python benchmarks/gpu_check.py --quick         # tiny models on whatever device there is (CPU in the tests)

On the lent H200 machine (its python3 has torch, transformers and timm, no diffusers, and tessera is not
installed): carry the wheels of diffusers and importlib_metadata (the device tool's README says how) and run
`PYTHONPATH=src python3 benchmarks/gpu_check.py`. Without diffusers the UNet row has no peer.

What it measures, each against the peer on the same device with the same weights:
- inference and training img/s in bf16 (autocast) for Swin-T and ViT-B/16
  (transformers with the same weights; timm, randomly initialised, where it
  imports) and the DDPM UNet (diffusers, where it imports), batch `--batch`,
  tessera's ratio against the fastest peer; Swin-T's inference figure is printed
  next to note 004's 755 img/s on a V100;
- which scaled-dot-product-attention backend each attention runs: Swin's masked
  window attention (flash cannot take an additive mask, the memory-efficient
  kernel can) and ViT's unmasked one, by forcing each backend in turn and by
  the kernel names the profiler sees on the default path;
- `torch.compile(dynamic=True)`: graphs compiled over three resolutions (the
  goal: no recompilation per resolution after the first dynamic one);
- channels-last against contiguous for the convolutional UNet.
Prints tables and appends them to benchmarks/results.jsonl with the device.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import best_time, print_table, sync  # noqa: E402

import tessera  # noqa: E402

NOTES_SWIN_T_V100 = 755.0  # note 004: Swin-T throughput on a V100 (img/s)

# transformers' config fields and tessera's create_model arguments of the same architecture
SWIN_FIELDS = {"full": dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7),
               "quick": dict(embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=7)}
VIT_FIELDS = {"full": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
              "quick": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)}
# the two classifiers, by the name tessera and timm both register them under
MODEL_NAMES = {"swin_t": "swin_tiny_patch4_window7_224", "vit_b16": "vit_base_patch16_224"}
OURS_QUICK = {"swin_t": dict(embed_dim=16, depths=(1, 1), num_heads=(1, 2)),
              "vit_b16": dict(embed_dim=64, depth=2, num_heads=2, mlp_ratio=2.0)}


def classifier_pairs(size: str, folder: Path) -> dict[str, tuple[torch.nn.Module, torch.nn.Module, Callable]]:
    """{name: (tessera model, transformers model, peer forward)}: Swin-T and ViT-B/16 with shared weights."""
    import transformers

    pairs = {}
    specs = {"swin_t": (MODEL_NAMES["swin_t"], "SwinForImageClassification", "SwinConfig",
                        dict(patch_size=4, **SWIN_FIELDS[size])),
             "vit_b16": (MODEL_NAMES["vit_b16"], "ViTForImageClassification", "ViTConfig",
                         dict(patch_size=16, layer_norm_eps=1e-6, **VIT_FIELDS[size]))}
    for key, (name, cls, cfg, fields) in specs.items():
        peer = getattr(transformers, cls)(getattr(transformers, cfg)(image_size=224, num_labels=1000, **fields)).eval()
        peer.save_pretrained(folder / key)
        sizes = OURS_QUICK[key] if size == "quick" else {}
        ours = tessera.create_model(name, checkpoint=folder / key, **sizes).eval()
        pairs[key] = (ours, peer, lambda x, peer=peer: peer(pixel_values=x).logits)
    return pairs


def timm_peer(key: str, size: str) -> tuple[torch.nn.Module, Callable] | None:
    """timm's model of the same architecture (random weights: speed only), None where timm does not import."""
    try:
        import timm
    except ImportError:  # timm needs torchvision, which the CPU build of the tests cannot load
        return None
    kwargs = OURS_QUICK[key] if size == "quick" else {}  # timm takes the same architecture arguments
    model = timm.create_model(MODEL_NAMES[key], pretrained=False, num_classes=1000, **kwargs).eval()
    return model, model


def unet_pair(size: str) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """tessera's DDPM CIFAR-10 UNet and diffusers' UNet2DModel with its weights (None where diffusers does not import)."""
    overrides = dict(widths=(32, 64), depth=1, attn_resolutions=(16,)) if size == "quick" else {}
    ours = tessera.create_model("unet_ddpm_cifar10", **overrides).eval()
    try:
        from tessera.diffusion.convert import to_diffusers

        return ours, to_diffusers(ours).eval()
    except ImportError:
        print("# diffusers does not import here: the UNet row has no peer")
        return ours, None


def throughput_rows(device: torch.device, batch: int, iters: int, size: str, folder: Path) -> list[dict]:
    """Inference and training img/s in bf16 autocast, tessera and the peer, per model."""
    amp = (lambda: torch.autocast(device.type, dtype=torch.bfloat16))
    rows = []
    # model -> [(library, module, forward)], tessera first
    models: dict[str, list[tuple[str, torch.nn.Module, Callable]]] = {}
    for key, (ours, peer, peer_fn) in classifier_pairs(size, folder).items():
        models[key] = [("tessera", ours, ours), ("transformers", peer, peer_fn)]
        if (timm_model := timm_peer(key, size)) is not None:
            models[key].append(("timm", *timm_model))
    ours, peer = unet_pair(size)
    models["unet_cifar10"] = [("tessera", ours, ours)]
    if peer is not None:
        models["unet_cifar10"].append(("diffusers", peer, lambda x, t, peer=peer: peer(x, t).sample))
    for key, runs in models.items():
        first = len(rows)
        if key.startswith("unet"):
            c, h, w = ours.input_size
            inputs = (torch.randn(batch, c, h, w, device=device), torch.randint(0, 1000, (batch,), device=device))
        else:
            inputs = (torch.randn(batch, 3, 224, 224, device=device),)
        for library, module, fn in runs:
            module.to(device)
            module.eval()
            with torch.inference_mode(), amp():
                infer = batch / best_time(lambda: fn(*inputs), iters=iters, device=device)
            module.train()
            opt = torch.optim.AdamW(module.parameters(), lr=1e-5)

            def step() -> None:
                with amp():
                    out = fn(*inputs)
                out.float().square().mean().backward()  # a loss of the right shape for every model
                opt.step()
                opt.zero_grad(set_to_none=True)

            train = batch / best_time(step, warmup=1, iters=iters, device=device)
            module.eval().cpu()
            rows.append({"model": key, "library": library, "inference img/s": f"{infer:.1f}", "training img/s": f"{train:.1f}"})
        mine, peers = rows[first], rows[first + 1:]
        for kind in ("inference", "training"):  # against the fastest peer of each
            if peers:
                fastest = max(float(r[f"{kind} img/s"]) for r in peers)
                mine[f"{kind} vs peer"] = f"{float(mine[f'{kind} img/s']) / fastest:.2f}x"
        if key == "swin_t" and size == "full":
            mine["note 004 (V100)"] = f"{NOTES_SWIN_T_V100:.0f} img/s"
    return rows


def sdpa_backend_rows(device: torch.device) -> list[dict]:
    """Which SDPA backends run Swin's masked window attention and ViT's unmasked one, forced and by default."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.profiler import ProfilerActivity, profile

    from tessera.layers.window_attention import WindowAttention, shifted_window_mask

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    window = WindowAttention(96, 3, (7, 7)).to(device, dtype).eval()
    mask = shifted_window_mask((56, 56), (7, 7), (3, 3)).to(device)
    windows = torch.randn(8, 64, 49, 96, device=device, dtype=dtype)
    vit_q = torch.randn(8, 12, 197, 64, device=device, dtype=dtype)
    cases: dict[str, Callable[[], object]] = {
        "Swin window attention, shifted (additive mask)": lambda: window(windows, mask),
        "ViT attention (no mask)": lambda: F.scaled_dot_product_attention(vit_q, vit_q, vit_q),
    }
    window.fused = True  # torch's SDPA, whichever backend it picks (the CPU timed choice is not for this check)
    rows = []
    for label, call in cases.items():
        row = {"attention": label}
        for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                        SDPBackend.MATH):
            try:
                with torch.inference_mode(), sdpa_kernel([backend]):
                    call()
                row[backend.name.lower()] = "runs"
            except RuntimeError:
                row[backend.name.lower()] = "refused"
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with torch.inference_mode(), profile(activities=activities) as prof:
            call()
            sync(device)
        names = {e.key for e in prof.key_averages()}
        picked = sorted(n for n in names if any(s in n.lower() for s in ("flash", "efficient", "fmha", "cudnn", "math",
                                                                          "scaled_dot_product")))
        row["default path runs"] = "; ".join(picked)[:200] or "-"
        rows.append(row)
    return rows


def compile_rows(device: torch.device, size: str, backend: str) -> list[dict]:
    """Graphs compiled by `torch.compile(dynamic=True)` for ViT and Swin over three resolutions."""
    import torch._dynamo as dynamo
    from torch._dynamo.utils import counters

    sizes = (224, 256, 288)
    specs = {"vit_b16": (MODEL_NAMES["vit_b16"], dict(dynamic_img_size=True)), "swin_t": (MODEL_NAMES["swin_t"], {})}
    rows = []
    for key, (name, kwargs) in specs.items():
        model = tessera.create_model(name, **kwargs, **(OURS_QUICK[key] if size == "quick" else {})).to(device).eval()
        dynamo.reset()
        counters.clear()
        compiled = torch.compile(model, dynamic=True, backend=backend)
        graphs = []
        with torch.inference_mode():
            for s in sizes:
                compiled(torch.randn(2, 3, s, s, device=device))
                graphs.append(counters["stats"]["unique_graphs"])
        rows.append({"model": key, "backend": backend, **{f"graphs after {s} px": g for s, g in zip(sizes, graphs)},
                     "recompiled per resolution": "yes" if graphs[-1] > graphs[0] else "no"})
    return rows


def channels_last_rows(device: torch.device, batch: int, iters: int, size: str) -> list[dict]:
    """The UNet's inference img/s, contiguous against channels-last, bf16 autocast."""
    model, _ = unet_pair(size)
    model.to(device)
    c, h, w = model.input_size
    x, t = torch.randn(batch, c, h, w, device=device), torch.randint(0, 1000, (batch,), device=device)
    rows = []
    for layout in ("contiguous", "channels_last"):
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        model.to(memory_format=fmt)
        xs = x.contiguous(memory_format=fmt)
        with torch.inference_mode(), (torch.autocast(device.type, dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()):
            rows.append({"model": "unet_cifar10", "layout": layout,
                         "img/s": f"{batch / best_time(lambda: model(xs, t), iters=iters, device=device):.1f}"})
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run every check and print (and record) its table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="tiny models, batch 2, 1 iteration; eager compile backend")
    p.add_argument("--compile-backend", default=None, help="default: inductor (eager with --quick)")
    p.add_argument("--skip", nargs="*", default=[], choices=["throughput", "sdpa", "compile", "channels_last"])
    args = p.parse_args(argv)
    size = "quick" if args.quick else "full"
    batch, iters = (2, 1) if args.quick else (args.batch, args.iters)
    backend = args.compile_backend or ("eager" if args.quick else "inductor")
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# gpu_check on {name}, torch {torch.__version__}, batch {batch}")
    with tempfile.TemporaryDirectory() as tmp:
        if "throughput" not in args.skip:
            print_table(throughput_rows(device, batch, iters, size, Path(tmp)),
                        ["model", "library", "inference img/s", "inference vs peer", "training img/s", "training vs peer",
                         "note 004 (V100)"], f"gpu_check throughput, bf16 autocast, {name}, batch {batch}")
    if "sdpa" not in args.skip:
        print_table(sdpa_backend_rows(device), ["attention", "flash_attention", "efficient_attention",
                    "cudnn_attention", "math", "default path runs"], f"gpu_check SDPA backends, {name}")
    if "compile" not in args.skip:
        rows = compile_rows(device, size, backend)
        print_table(rows, list(rows[0]), f"gpu_check torch.compile(dynamic=True), {name}")
    if "channels_last" not in args.skip:
        print_table(channels_last_rows(device, batch, iters, size), ["model", "layout", "img/s"],
                    f"gpu_check channels-last, {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
