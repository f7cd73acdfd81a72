"""`tessera ebm-eval`: the measurements of a trained energy-based model (toy 2-D densities, digits, samplers).

    tessera fit --config configs/ebm_8gaussians.yaml
    tessera ebm-eval toy2d --run runs/ebm_8gaussians        log-likelihood (model / truth / KDE / box), MMD, PNG
    tessera ebm-eval samplers --run runs/ebm_8gaussians     Metropolis vs Langevin vs MALA on the trained energy
    tessera fit --config configs/ebm_digits.yaml
    tessera ebm-eval digits --run runs/ebm_digits           anomaly AUROCs, sample grids from noise and buffer

Each prints a JSON report and writes it (and its pictures) into the run folder.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def _load_run(run: Path) -> tuple[Any, dict]:
    """The exported energy model of a run and the run's config.yaml as a dict."""
    import yaml

    import tessera

    cfg_file = run / "config.json"
    if not cfg_file.is_file():
        raise ValueError(f"no exported model in {run} (expected {cfg_file}); train it with tessera fit first")
    arch = json.loads(cfg_file.read_text())["architecture"]
    model = tessera.create_model(arch, checkpoint=run).eval()
    config = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
    return model, config


def _buffer(run: Path) -> Any:
    import torch

    ckpt = run / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        return None
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"].get("buffer.samples")


def _toy_data(config: dict) -> Any:
    from tessera.data.toy2d import Toy2DDataModule

    args = (config.get("data") or {}).get("init_args") or {}
    dm = Toy2DDataModule(**args)
    dm.setup()
    return dm


def eval_toy2d(run: Path, grid: int = 256, seed: int = 0) -> dict:
    """Exact test log-likelihood of the model beside the truth, a KDE and the uniform box; MMD; density PNG."""
    import torch

    from tessera.energy.evaluate import (
        density_grid,
        grid_log_likelihood,
        kde_log_likelihood,
        kde_select_bandwidth,
        mmd2,
        plot_density_panels,
    )
    from tessera.energy.samplers import MALASampler
    from tessera.train.callbacks import read_metrics

    model, config = _load_run(run)
    dm = _toy_data(config)
    train, val, test = dm.points("train"), dm.points("val"), dm.points("test")
    box = dm.box
    energy = lambda x: model.energy(x)  # noqa: E731
    ll_model = grid_log_likelihood(energy, test, box, grid)
    ll_truth = float(dm.density.log_prob(test).mean())
    h = kde_select_bandwidth(train[:5000], val)
    ll_kde = kde_log_likelihood(train[:5000], test, h)
    ll_box = -math.log((box[1] - box[0]) ** 2)
    # model samples: MALA chains (exact for exp(-E)) from uniform noise in the box
    g = torch.Generator().manual_seed(seed)
    x0 = box[0] + (box[1] - box[0]) * torch.rand(2000, 2, generator=g)
    res = MALASampler(step_size=0.02).sample(energy, x0, 500, generator=g)
    n = 2000
    mmd_model = mmd2(res.x, test[:n])
    mmd_data = mmd2(val[:n], test[:n])  # the floor: two draws of the truth
    buffer = _buffer(run)
    mmd_buffer = mmd2(buffer[:n], test[:n]) if buffer is not None else None
    with torch.no_grad():
        panels = [
            ("truth", density_grid(dm.density.log_prob, box)),
            (f"EBM exp(-E)/Z ({ll_model:.2f} nats)", density_grid(lambda x: -model.energy(x), box)),
            (f"KDE h={h:.2f} ({ll_kde:.2f} nats)", density_grid(lambda x: -_neg_kde(train[:5000], x, h), box)),
            ("MALA samples (500 steps)", res.x),
        ]
    png = plot_density_panels(panels, run / "density_final.png", box, suptitle=f"{dm.dataset_name}: test log-likelihood")
    metrics = read_metrics(run / "metrics.csv") if (run / "metrics.csv").is_file() else {}
    report = {
        "dataset": dm.dataset_name,
        "test_loglik_nats": {"model": ll_model, "truth": ll_truth, "kde": ll_kde, "kde_bandwidth": h, "uniform_box": ll_box},
        "mmd2": {"mala_samples_vs_test": mmd_model, "buffer_vs_test": mmd_buffer, "val_vs_test_floor": mmd_data},
        "mala_acceptance": res.acceptance,
        "val_loglik_history": metrics.get("val/loglik", []),
        "val_mmd_history": metrics.get("val/mmd", []),
        "picture": str(png),
    }
    return report


def _neg_kde(train: Any, x: Any, h: float) -> Any:
    from tessera.energy.evaluate import _kde_log_prob

    return -_kde_log_prob(train, x, h).float()


def eval_samplers(run: Path, steps: int = 2000, chains: int = 500, tol: float = 0.1, seed: int = 0) -> dict:
    """Metropolis vs Langevin vs MALA on the trained energy: steps to the model's exact moments, ESS."""
    import torch

    from tessera.energy.evaluate import compare_samplers, grid_points
    from tessera.energy.samplers import LangevinSampler, MALASampler, MetropolisSampler

    model, config = _load_run(run)
    dm = _toy_data(config)
    box = dm.box
    lo, hi = box

    def energy(x: torch.Tensor) -> torch.Tensor:
        # The model is trained (and normalised) on the box only; outside it an MLP energy may fall
        # without bound and chains would drift away. A steep quadratic wall keeps them in the box,
        # where the wall is zero: the target is exp(-E) restricted to the box, as in the likelihood.
        return model.energy(x) + 100.0 * (x - x.clamp(lo, hi)).square().sum(1)

    # the target's exact mean and covariance, integrated on a fine grid over the box
    pts, area = grid_points(box, 400)
    with torch.no_grad():
        logp = torch.cat([-energy(c).double() for c in pts.split(16384)])
    p = torch.softmax(logp, 0)
    mean = (p[:, None] * pts.double()).sum(0)
    d = pts.double() - mean
    cov = (p[:, None, None] * d[:, :, None] * d[:, None, :]).sum(0)
    g = torch.Generator().manual_seed(seed)
    x0 = box[0] + (box[1] - box[0]) * torch.rand(chains, 2, generator=g)
    samplers = {
        "metropolis_s0.5": MetropolisSampler(0.5),
        "metropolis_s1.5": MetropolisSampler(1.5),
        "langevin_eps0.01": LangevinSampler(0.01),
        "langevin_eps0.05": LangevinSampler(0.05),
        "mala_eps0.05": MALASampler(0.05),
        "mala_eps0.2": MALASampler(0.2),
    }
    out = compare_samplers(energy, samplers, x0, steps, mean.float(), cov.float(), tol=tol, seed=seed)
    return {"target_mean": mean.tolist(), "target_cov": cov.tolist(), "tol": tol, "chains": chains,
            "steps": steps, "samplers": out,
            # 1000 chains: the max over 528 covariance entries of the sampling error alone is ~0.1, so tol 0.25
            "gaussian_32d": {"chains": 1000, "steps": min(steps, 1000), "tol": 0.25,
                             "samplers": gaussian_comparison(min(steps, 1000), 1000, 0.25, seed)}}


def gaussian_comparison(steps: int, chains: int, tol: float, seed: int = 0, dim: int = 32) -> dict:
    """The same comparison on a unimodal, ill-conditioned Gaussian in 32-D (std 0.3 to 1), started at N(0, 3^2 I).

    Random-walk Metropolis must shrink its proposal like 1/sqrt(dim) (times the smallest std);
    gradient samplers move along the drift, which is where the notes' "Langevin accelerates it" shows.
    """
    import torch

    from tessera.energy.evaluate import compare_samplers
    from tessera.energy.samplers import LangevinSampler, MALASampler, MetropolisSampler

    std = torch.linspace(0.3, 1.0, dim)
    energy = lambda x: 0.5 * (x / std).square().sum(1)  # noqa: E731
    x0 = 3.0 * torch.randn(chains, dim, generator=torch.Generator().manual_seed(seed))
    samplers = {
        "metropolis_s0.05": MetropolisSampler(0.05),
        "metropolis_s0.12": MetropolisSampler(0.12),  # ~2.4 / sqrt(32) x 0.3 x 1.6
        "metropolis_s0.25": MetropolisSampler(0.25),
        "langevin_eps0.01": LangevinSampler(0.01),
        "langevin_eps0.03": LangevinSampler(0.03),
        "mala_eps0.03": MALASampler(0.03),
        "mala_eps0.06": MALASampler(0.06),
    }
    return compare_samplers(energy, samplers, x0, steps, torch.zeros(dim), torch.diag(std.square()), tol=tol, seed=seed)


def _natural_patches(n: int, size: int, seed: int = 0) -> Any:
    """n grey patches (n, 1, size, size) in [-1, 1] cut from scikit-learn's two bundled photographs."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_sample_images

    imgs = [torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).mean(-1) for im in load_sample_images().images]
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        im = imgs[i % len(imgs)]
        y = int(torch.randint(0, im.shape[0] - 64, (1,), generator=g))
        x = int(torch.randint(0, im.shape[1] - 64, (1,), generator=g))
        out.append(im[y : y + 64, x : x + 64])
    patches = torch.stack(out)[:, None]
    patches = F.interpolate(patches, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return patches * 2 - 1


def eval_digits(run: Path, seed: int = 0, steps: int = 200) -> dict:
    """Anomaly AUROC of the energy (test digits vs noise / rotated / flipped / inverted / photo patches); grids."""
    import torch

    from tessera.data.digits import DigitsDataModule
    from tessera.diffusion.images import save_grid
    from tessera.energy.evaluate import auroc, ood_images
    from tessera.energy.samplers import SGLDSampler

    model, config = _load_run(run)
    args = dict(((config.get("data") or {}).get("init_args") or {}))
    args.pop("augment", None)
    dm = DigitsDataModule(**{k: v for k, v in args.items() if k in ("img_size", "in_chans", "batch_size", "normalize")})
    dm.setup("test")
    x_in = torch.stack([dm.test_set[i][0] for i in range(len(dm.test_set))])
    sets = ood_images(x_in, -1.0, 1.0, seed)
    sets["photo_patches"] = _natural_patches(len(x_in), x_in.shape[-1], seed)
    with torch.no_grad():
        e_in = model.energy(x_in)
        scores = {k: model.energy(v) for k, v in sets.items()}
    result = {k: auroc(e_in, s) for k, s in scores.items()}
    # samples: long SGLD from uniform noise (the training sampler's settings), and the run's buffer
    init = ((config.get("model") or {}).get("init_args") or {})
    sampler = SGLDSampler(init.get("sgld_step_size", 1.0), init.get("sgld_noise") or 0.01,
                          init.get("grad_clip"), clamp=(-1.0, 1.0))
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand((64, *x_in.shape[1:]), generator=g) * 2 - 1
    res = sampler.sample(model.energy, x0, steps, generator=g)
    save_grid(res.x, run / "samples_noise_long.png", scale=3)
    buffer = _buffer(run)
    if buffer is not None:
        save_grid(buffer[:64], run / "samples_buffer_final.png", scale=3)
    with torch.no_grad():
        e_samples = model.energy(res.x)
    return {
        "auroc": result,
        "mean_energy": {"test_digits": float(e_in.mean()), **{k: float(v.mean()) for k, v in scores.items()},
                        f"sgld_{steps}_from_noise": float(e_samples.mean())},
        "n_test": len(x_in),
        "pictures": [str(run / "samples_noise_long.png"), str(run / "samples_buffer_final.png")],
    }


def ebm_eval(argv: list[str]) -> int:
    """measurements of a trained energy model: toy2d log-likelihood, sampler comparison, digits AUROC"""
    import argparse

    import torch

    p = argparse.ArgumentParser(prog="tessera ebm-eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("toy2d", "samplers", "digits"))
    p.add_argument("--run", required=True, help="run folder of tessera fit (exported model + config.yaml)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=0, help="sampler steps (samplers: 2000, digits: 200)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (small models run best on one)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    if args.what == "toy2d":
        report = eval_toy2d(run, seed=args.seed)
    elif args.what == "samplers":
        report = eval_samplers(run, steps=args.steps or 2000, seed=args.seed)
    else:
        report = eval_digits(run, seed=args.seed, steps=args.steps or 200)
    text = json.dumps(report, indent=2, default=float)
    (run / f"ebm_eval_{args.what}.json").write_text(text)
    print(text)
    return 0


COMMANDS = {"ebm-eval": ebm_eval}
