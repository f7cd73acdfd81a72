"""Image tokenizers: speed against diffusers with the same weights, and quality of trained runs.

    python benchmarks/bench_tokenizers.py speed                      # LDM f4 sizes, batch 8, 64 px
    python benchmarks/bench_tokenizers.py speed --quick              # small models, seconds
    python benchmarks/bench_tokenizers.py eval runs/vqvae_fashion_f4 runs/vqgan_fashion_f4 \
        --classifier runs/fashion_classifier --grid runs/tokenizers_grid.png

speed: a random-weight diffusers `VQModel` / `AutoencoderKL` (LDM's f4: block_out_channels
128-256-512, 2 layers per block, z = 3, K = 8192) is saved and loaded into tessera
(`tessera.tokenizers.convert.from_diffusers`); encode (VQ: encoder + quantisation; KL:
posterior) and decode are timed in turns, same threads, after checking that the outputs
agree within 1e-4. Reported: images/s and the ratio tessera / diffusers (> 1: tessera faster).

eval: each run folder's exported model reconstructs the Fashion-MNIST test images; reported:
PSNR (dB, images in [0, 1]), the Fréchet distance between classifier features of the
originals and of the reconstructions (the classifier: a tessera run, trained on the same
data), sharpness (Laplacian energy of the reconstructions over the originals': 1 = as much
fine detail, below 1 = blurred; `tessera.eval.sharpness`), codebook usage (codes used at least once over the test set) and perplexity, and the
usage / perplexity at the end of training from the run's metrics.csv. `--grid` writes the
originals above one row of reconstructions per run, for looking at sharpness.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import best_times_interleaved, record  # noqa: E402

LDM_F4 = dict(block_out_channels=(128, 256, 512), layers_per_block=2, norm_num_groups=32, latent_channels=3)
QUICK = dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, latent_channels=4)


def _pairs(sizes: dict, folder: Path) -> list[tuple[str, torch.nn.Module, torch.nn.Module, str]]:
    import diffusers

    from tessera.tokenizers.convert import from_diffusers

    common = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * len(sizes["block_out_channels"]),
                  up_block_types=("UpDecoderBlock2D",) * len(sizes["block_out_channels"]), **sizes)
    out = []
    torch.manual_seed(0)
    vq = diffusers.VQModel(**common, num_vq_embeddings=8192).eval()
    vq.quantize.embedding.weight.data.normal_()
    vq.save_pretrained(folder / "vq")
    out.append(("VQModel", vq, from_diffusers(folder / "vq").eval(), "vq"))
    kl = diffusers.AutoencoderKL(**common).eval()
    kl.save_pretrained(folder / "kl")
    out.append(("AutoencoderKL", kl, from_diffusers(folder / "kl").eval(), "kl"))
    return out


@torch.inference_mode()
def speed(args: argparse.Namespace) -> None:
    import tempfile

    torch.set_num_threads(args.threads)
    x = torch.randn(args.batch, 3, args.size, args.size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, peer, ours, kind in _pairs(QUICK if args.quick else LDM_F4, Path(tmp)):
            if kind == "vq":
                def peer_enc():
                    return peer.quantize(peer.encode(x).latents)[0]

                def ours_enc():
                    return ours.encode(x).latents

                z = ours_enc()
                torch.testing.assert_close(ours_enc(), peer_enc(), atol=1e-4, rtol=1e-4)

                def peer_dec():
                    return peer.decode(z, force_not_quantize=True).sample
            else:
                def peer_enc():
                    return peer.encode(x).latent_dist.mean

                def ours_enc():
                    return ours.encode(x).latents

                z = ours_enc()
                torch.testing.assert_close(ours_enc(), peer_enc(), atol=1e-4, rtol=1e-4)

                def peer_dec():
                    return peer.decode(z).sample

            def ours_dec():
                return ours.decode(z)

            torch.testing.assert_close(ours_dec(), peer_dec(), atol=1e-4, rtol=1e-4)
            t = best_times_interleaved(
                {"peer_enc": peer_enc, "ours_enc": ours_enc, "peer_dec": peer_dec, "ours_dec": ours_dec},
                rounds=args.rounds,
            )
            for part in ("enc", "dec"):
                row = {
                    "model": name, "part": "encode" if part == "enc" else "decode",
                    "tessera_img_s": round(args.batch / t[f"ours_{part}"], 1),
                    "diffusers_img_s": round(args.batch / t[f"peer_{part}"], 1),
                    "ratio": round(t[f"peer_{part}"] / t[f"ours_{part}"], 3),
                }
                rows.append(row)
                print(f"{name:14s} {row['part']:6s} tessera {row['tessera_img_s']:8.1f} img/s   "
                      f"diffusers {row['diffusers_img_s']:8.1f} img/s   ratio {row['ratio']:.3f}", flush=True)
    cols = ["model", "part", "tessera_img_s", "diffusers_img_s", "ratio"]
    record(rows, cols, note=f"batch {args.batch}, {args.size} px, {args.threads} threads, {platform.processor()}")


# ------------------------------------------------------------------ quality of trained runs


def _last_metrics(run: Path) -> dict[str, float]:
    path = run / "metrics.csv"
    if not path.is_file():
        return {}
    last: dict[str, float] = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            for k, v in row.items():
                if v not in ("", None) and k.startswith(("train/usage", "train/perplexity")):
                    last[k] = float(v)
    return last


@torch.inference_mode()
def evaluate(args: argparse.Namespace) -> None:
    from tessera.core import create_model
    from tessera.data.idx import IDXDataModule
    from tessera.eval.frechet import classifier_features, frechet_distance_features
    from tessera.eval.sharpness import sharpness_ratio
    from tessera.io.checkpoint import read_tessera_config
    from tessera.layers.quantizers import codebook_perplexity

    torch.set_num_threads(args.threads)
    dm = IDXDataModule(root=args.root, img_size=32, in_chans=1, normalize="signed")
    x, _ = dm.load_split("t10k")
    x = (x[: args.num] * 2 - 1)  # [-1, 1]
    clf_meta = read_tessera_config(args.classifier)
    clf = create_model(clf_meta["architecture"], checkpoint=args.classifier).eval()
    pre = json.loads((Path(args.classifier) / "preprocess.json").read_text())
    feats_real, _ = classifier_features(clf, x, pre["mean"], pre["std"])
    rows, recs = [], []
    for run in map(Path, args.runs):
        meta = read_tessera_config(run)
        model = create_model(meta["architecture"], checkpoint=run).eval()
        rec, codes = [], []
        for lo in range(0, len(x), 256):
            out = model(x[lo : lo + 256])
            rec.append(out.reconstruction.clamp(-1, 1))
            if out.codes is not None:
                codes.append(out.codes.flatten())
        rec = torch.cat(rec)
        mse = ((rec - x) / 2).square().flatten(1).mean(1).clamp_min(1e-10)
        feats, _ = classifier_features(clf, rec, pre["mean"], pre["std"])
        row = {
            "run": run.name, "model": meta["architecture"],
            "psnr_db": round(float((10 * torch.log10(1 / mse)).mean()), 2),
            "frechet": round(frechet_distance_features(feats_real, feats), 3),
            "sharpness": round(sharpness_ratio(rec, x), 3),
        }
        if codes:
            c = torch.cat(codes)
            K = model.config.num_codes
            row["test_usage"] = round(float((torch.bincount(c, minlength=K) > 0).float().mean()), 3)
            row["test_perplexity"] = round(float(codebook_perplexity(c, K)), 1)
        row.update({k.replace("train/", "final_train_"): round(v, 3) for k, v in _last_metrics(run).items()})
        rows.append(row)
        recs.append(rec[: args.grid_n])
        print(json.dumps(row), flush=True)
    if args.grid:
        from tessera.diffusion.images import save_grid

        grid = torch.cat([x[: args.grid_n], *recs])
        save_grid(grid, args.grid, nrow=args.grid_n, scale=3)
        print(f"wrote {args.grid}: originals, then {', '.join(r['run'] for r in rows)}")
    if args.curves:
        plot_codebook_curves([Path(r) for r in args.runs], Path(args.curves))
    cols = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("run", "model"), k))
    record(rows, cols, note=f"Fashion-MNIST test, first {len(x)} images, classifier {args.classifier}")


def plot_codebook_curves(runs: list[Path], path: Path) -> None:
    """Codebook usage (fraction of codes used in the quantizer's window) and perplexity per training step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tessera.train.callbacks import read_metrics

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for run in runs:
        m = read_metrics(run / "metrics.csv") if (run / "metrics.csv").is_file() else {}
        for ax, key in zip(axes, ("train/usage", "train/perplexity")):
            if key in m:
                steps, values = zip(*m[key])
                ax.plot(steps, values, label=run.name)
    for ax, title in zip(axes, ("codebook usage (window of 100 steps)", "perplexity (per batch)")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("speed", help="encode / decode images per second against diffusers")
    s.add_argument("--batch", type=int, default=8)
    s.add_argument("--size", type=int, default=64)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--rounds", type=int, default=5)
    s.add_argument("--quick", action="store_true")
    e = sub.add_parser("eval", help="PSNR, Fréchet distance and codebook use of trained runs")
    e.add_argument("runs", nargs="+")
    e.add_argument("--classifier", required=True, help="tessera classifier export trained on the same data")
    e.add_argument("--root", default=None, help="folder with the Fashion-MNIST IDX files")
    e.add_argument("--num", type=int, default=2000)
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--grid", default=None)
    e.add_argument("--grid_n", type=int, default=12)
    e.add_argument("--curves", default=None, help="PNG of codebook usage / perplexity over training")
    args = p.parse_args()
    speed(args) if args.cmd == "speed" else evaluate(args)


if __name__ == "__main__":
    main()
