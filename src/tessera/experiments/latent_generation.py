"""Generation in a learned latent space, measured (notes 002 and 003; issue 11).

    tessera reproduce ldm-guidance       # class-conditional LDM: accuracy + FD at guidance 0, 1, 3, 5
    tessera reproduce pixel-vs-latent    # pixel DDPM vs LDM: training step, sampling time, FD
    tessera reproduce token-generation   # MaskGIT (8, 16 steps) and next-token over VQ codes:
                                         # accuracy, FD, test NLL vs the codes' unigram entropy, time
    tessera reproduce multimodal         # one transformer, caption -> image and image -> caption

They evaluate trained runs of Fashion-MNIST (32 px), made by the `tessera fit` commands in the
headers of configs/ldm_fmnist.yaml, ldm_fmnist_pixel.yaml, maskgit_fmnist.yaml and
maskgit_fmnist_nexttoken.yaml, with the classifier runs/fashion_classifier (the project's recipe,
`tessera fit` of a small Swin). Samples are drawn per class (`per_class` of each, fixed seeds):

- conditional accuracy: the fraction of samples the classifier labels as the requested class
  (its accuracy on the real test images, the ceiling, is in the table too);
- FD: the Fréchet distance (`tessera.eval.frechet`, the features of `tessera fid`: the classifier's
  penultimate layer) between the samples and the 10,000 test images; the "real" row gives the
  floor, as many held-out validation images as samples against the same test images;
- times: seconds per image on this machine at the caller's thread count (`--threads 1`).

`--quick` builds tiny random-weight runs of every kind on the bundled digits in `out/quick_runs`
and runs the same code in seconds: a test of the plumbing, not of the numbers.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from tessera.experiments.common import write_results

RUNS = {
    "ldm": "runs/ldm_fmnist",
    "pixel": "runs/ldm_fmnist_pixel",
    "maskgit": "runs/maskgit_fmnist",
    "nexttoken": "runs/maskgit_fmnist_nexttoken",
    "classifier": "runs/fashion_classifier",
    "codes": "runs/vq_fmnist_codes.safetensors",
    "multimodal": "runs/maskgit_fmnist_multimodal",
}
TRAIN_COMMANDS = {
    "ldm": "tessera fit --config configs/ldm_fmnist.yaml",
    "pixel": "tessera fit --config configs/ldm_fmnist_pixel.yaml",
    "maskgit": "tessera fit --config configs/maskgit_fmnist.yaml",
    "nexttoken": "tessera fit --config configs/maskgit_fmnist_nexttoken.yaml",
    "multimodal": "tessera fit --config configs/maskgit_fmnist_multimodal.yaml",
    "classifier": "tessera fit (the Fashion-MNIST classifier recipe) --trainer.default_root_dir runs/fashion_classifier",
}
GUIDANCE = (0.0, 1.0, 3.0, 5.0)
TOP_K = 100  # the truncated next-token row of token-generation


# ------------------------------------------------------------------ data and scoring


@dataclass
class RealData:
    """Real images in [-1, 1]: the FD reference (test), a floor sample (val) and training images."""

    test_x: Tensor
    test_y: Tensor
    val_x: Tensor
    train_x: Tensor
    train_y: Tensor


def real_data(quick: bool) -> RealData:
    """Fashion-MNIST at 32 px (the bundled digits at 16 px when quick)."""
    if quick:
        from tessera.data.digits import digits_split, load_digits_images

        images, labels = load_digits_images(16, 1)
        train, val, test = digits_split(labels)
        x = images * 2 - 1
        return RealData(x[test], labels[test], x[val], x[train], labels[train])
    from tessera.data.idx import IDXDataModule

    dm = IDXDataModule(img_size=32, in_chans=1, normalize="signed")
    dm.setup("fit")

    def stack(ds: Any) -> tuple[Tensor, Tensor]:
        items = [ds[i] for i in range(len(ds))]
        return torch.stack([it[0] for it in items]), torch.as_tensor([int(it[1]) for it in items])

    (tx, ty), (vx, _), (rx, ry) = stack(dm.test_set), stack(dm.val_set), stack(dm.train_set)
    return RealData(tx, ty, vx, rx, ry)


class Scorer:
    """Classifier features / predictions of images in [-1, 1]; accuracy and FD against the test set."""

    def __init__(self, classifier_run: str | Path, real: RealData) -> None:
        from tessera.eval.frechet import classifier_features
        from tessera.train.cli import load_run

        model, pre = load_run(classifier_run)
        self.features: Callable[[Tensor], tuple[Tensor, Tensor]] = lambda x: classifier_features(  # noqa: E731
            model, x.clamp(-1, 1), pre["mean"], pre["std"], int(pre["img_size"]))
        self.ref, pred = self.features(real.test_x)
        self.classifier_accuracy = (pred == real.test_y).float().mean().item()
        self.real = real

    def score(self, x: Tensor, y: Tensor) -> tuple[float, float]:
        """(conditional accuracy, FD to the test set) of images x requested as classes y."""
        from tessera.eval.frechet import frechet_distance_features

        f, pred = self.features(x)
        return (pred == y).float().mean().item(), frechet_distance_features(f, self.ref)

    def floor(self, n: int) -> float:
        """FD of n held-out real images (validation split) to the test set: the best a sampler can do at n."""
        from tessera.eval.frechet import frechet_distance_features

        return frechet_distance_features(self.features(self.real.val_x[:n])[0], self.ref)


def class_requests(num_classes: int, per_class: int) -> Tensor:
    """(num_classes x per_class,) class ids, class by class."""
    return torch.arange(num_classes).repeat_interleave(per_class)


def batched(fn: Callable[[Tensor, torch.Generator], Tensor], y: Tensor, batch: int, seed: int) -> tuple[Tensor, float]:
    """fn over y in batches (batch i seeded seed + i); the images and the seconds per image."""
    out, start = [], time.perf_counter()
    for i, lo in enumerate(range(0, len(y), batch)):
        out.append(fn(y[lo : lo + batch], torch.Generator().manual_seed(seed + i)))
    return torch.cat(out), (time.perf_counter() - start) / len(y)


def save_class_grid(x: Tensor, per_class: int, path: Path, columns: int = 8) -> None:
    """One row per class: its first `columns` samples."""
    from tessera.diffusion.images import save_grid

    n = len(x) // per_class
    cols = min(columns, per_class)
    rows = x.view(n, per_class, *x.shape[1:])[:, :cols].reshape(-1, *x.shape[1:])
    save_grid(rows.clamp(-1, 1), path, nrow=cols, scale=2)


def _require(runs: dict[str, str], *keys: str) -> None:
    for key in keys:
        if not Path(runs[key]).exists():
            raise FileNotFoundError(f"{runs[key]!r} not found: train it first with `{TRAIN_COMMANDS.get(key, key)}`")


def _fmt(v: float, digits: int = 1) -> str:
    return f"{v:.{digits}f}"


# ------------------------------------------------------------------ latent diffusion


def _ldm_sampler(model: Any, s: float, steps: int) -> Callable[[Tensor, torch.Generator], Tensor]:
    return lambda y, g: model.sample(y, s, "ddim", steps, g)


def ldm_guidance(out: Path, quick: bool = False) -> dict:
    """Conditional accuracy and FD of the class-conditional LDM at guidance 0, 1, 3, 5 (DDIM 50)."""
    from tessera.diffusion.latent import LatentDiffusion

    runs = make_quick_runs(out / "quick_runs") if quick else dict(RUNS)
    _require(runs, "ldm", "classifier")
    per_class, steps = (2, 3) if quick else (100, 50)
    torch.manual_seed(0)
    real = real_data(quick)
    scorer = Scorer(runs["classifier"], real)
    model, spec = LatentDiffusion.from_pretrained(runs["ldm"])
    K = model.cond_encoder.num_classes
    y = class_requests(K, per_class)
    rows = [{"samples": "real images (classifier on the test set; FD: val images)", "n": len(y), "cond. accuracy %": _fmt(100 * scorer.classifier_accuracy),
             "FD": _fmt(scorer.floor(len(y)), 2), "s / image": ""}]
    with torch.no_grad():
        recon = model.decode(model.encode(real.test_x[: len(y)]))
    acc, fd = scorer.score(recon, real.test_y[: len(y)])
    rows.append({"samples": "first-stage reconstructions", "n": len(y), "cond. accuracy %": _fmt(100 * acc),
                 "FD": _fmt(fd, 2), "s / image": ""})
    raw = {}
    for s in GUIDANCE:
        x, sec = batched(_ldm_sampler(model, s, steps), y, 250, seed=0)
        acc, fd = scorer.score(x, y)
        raw[s] = {"accuracy": acc, "fd": fd, "seconds_per_image": sec}
        rows.append({"samples": f"LDM DDIM{steps}, guidance {s:g}", "n": len(y), "cond. accuracy %": _fmt(100 * acc),
                     "FD": _fmt(fd, 2), "s / image": f"{sec:.4f}"})
        save_class_grid(x, per_class, out / f"grid_guidance{s:g}.png")
    gain = 100 * (raw[3.0]["accuracy"] - raw[1.0]["accuracy"])
    notes = (f"Classifier: {runs['classifier']} (accuracy on the {len(real.test_y)} real test images in the first row). "
             f"FD against the {len(real.test_y)} test images, {per_class} samples per class. "
             f"Guidance 1 -> 3 changes conditional accuracy by {gain:+.1f} points (claim: >= +10). "
             f"Grids: {out}/grid_guidance*.png (one row per class).")
    return write_results(out, "Class-conditional latent diffusion: classifier-free guidance",
                         ["samples", "n", "cond. accuracy %", "FD", "s / image"], rows,
                         {"raw": raw, "accuracy_gain_1_to_3_points": gain, "claim_holds": gain >= 10,
                          "classifier_accuracy": scorer.classifier_accuracy, "runs": runs}, notes)


# ------------------------------------------------------------------ pixel vs latent


def _best_seconds(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _train_step(unet: torch.nn.Module, x: Tensor, cond: Callable[[], Any], T: int) -> Callable[[], None]:
    """One forward + backward + AdamW step of L_simple on x (fresh weights of the same architecture)."""
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    unet.train()

    def step() -> None:
        t = torch.randint(0, T, (x.shape[0],))
        eps = torch.randn_like(x)
        loss = (unet(x + eps, t, cond()) - eps).square().mean()   # cost only: the noising is the same for both
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _steps_trained(run: str | Path) -> int | None:
    import csv

    path = Path(run) / "metrics.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        return max((int(r["step"]) for r in csv.DictReader(f) if r.get("step")), default=None)


LDM_BUDGETS = (10, 25, 50, 100, 200, 400)  # steps: the LDM's recipe retrained at each until it matches the pixel FD


def train_ldm_budget(ldm_run: str | Path, folder: Path, steps: int) -> Path:
    """The LDM run's own recipe (its config.yaml) retrained for `steps` optimizer steps into `folder`.

    The learning-rate schedule is fitted to the budget (warm-up at most a quarter of it, the decay ending at
    `steps`), as a run planned for that budget would be. A folder with a finished export is reused.
    """
    import yaml

    from tessera.train.cli import lightning_main

    if (folder / "ldm.json").is_file():
        return folder
    source = Path(ldm_run) / "config.yaml"
    if not source.is_file():
        raise FileNotFoundError(f"{str(source)!r} not found: the budget ladder retrains the LDM from its run's config")
    config = yaml.safe_load(source.read_text())
    config["trainer"] |= {"max_steps": steps, "max_epochs": -1, "max_time": None, "default_root_dir": str(folder),
                          "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
                          "check_val_every_n_epoch": 10_000}
    args = config["model"]["init_args"]
    args["warmup_steps"] = min(int(args.get("warmup_steps") or 0), steps // 4)
    if lightning_main(["fit", "--config", yaml.safe_dump(config, sort_keys=False)]) != 0:
        raise RuntimeError(f"training the {steps}-step LDM in {folder} failed")
    return folder


def ldm_budget_ladder(ldm_run: str | Path, out: Path, budgets: tuple[int, ...], target_fd: float,
                      score: Callable[[Any], tuple[float, float, float]]) -> list[dict[str, Any]]:
    """Retrain the LDM at growing budgets until its FD is at most `target_fd` (the pixel model's).

    `score(model)` gives (accuracy, FD, seconds per image) of a LatentDiffusion; one entry per budget trained.
    """
    from tessera.diffusion.latent import LatentDiffusion

    ladder = []
    for steps in sorted(budgets):
        model, _ = LatentDiffusion.from_pretrained(train_ldm_budget(ldm_run, out / f"ldm_budget_{steps}", steps))
        acc, fd, sec = score(model)
        ladder.append({"steps": steps, "accuracy": acc, "fd": fd, "sample_s_per_image": sec})
        if fd <= target_fd:
            break
    return ladder


def pixel_vs_latent(out: Path, quick: bool = False, budgets: tuple[int, ...] = LDM_BUDGETS) -> dict:
    """Pixel-space DDPM against the LDM: training step, sampling time and FD / accuracy (DDIM 50, 1 forward per step).

    Then the LDM's recipe is retrained at growing `budgets` (steps) until its FD is as low as the pixel model's:
    the training compute each needs for the same sample quality.
    """
    import tessera
    from tessera.diffusion.latent import LatentDiffusion
    from tessera.diffusion.samplers import DDIMSampler
    from tessera.diffusion.sample import load_diffusion_run

    runs = make_quick_runs(out / "quick_runs") if quick else dict(RUNS)
    _require(runs, "ldm", "pixel", "classifier")
    per_class, steps, batch, repeats = (2, 3, 4, 1) if quick else (50, 50, 128, 5)
    torch.manual_seed(0)
    real = real_data(quick)
    scorer = Scorer(runs["classifier"], real)
    ldm, _ = LatentDiffusion.from_pretrained(runs["ldm"])
    unet, schedule, _ = load_diffusion_run(runs["pixel"])
    K = ldm.cond_encoder.num_classes
    y = class_requests(K, per_class)

    # training step at the same batch, fresh weights of each architecture
    xb = real.train_x[:batch]
    yb = real.train_y[:batch] % max(unet.config.num_classes, 1)
    pixel_net = tessera.create_model(_arch(runs["pixel"]), **_config(runs["pixel"]))
    t_pixel = _best_seconds(_train_step(pixel_net, xb, lambda: yb if unet.config.num_classes else None, schedule.T), repeats)
    latent_net = tessera.create_model(_arch(Path(runs["ldm"]) / "unet"), **_config(Path(runs["ldm"]) / "unet"))
    with torch.no_grad():
        zb = ldm.encode(xb)
    ctx = ldm.context(yb % K)
    t_latent = _best_seconds(_train_step(latent_net, zb, lambda: ctx.detach(), ldm.schedule.T), repeats)
    t_encode = _best_seconds(lambda: ldm.encode(xb), repeats)

    # the pixel model's best DDIM: without eps from the clipped x0 its samples drift (FD 165 vs 74 in a 200-sample check)
    sampler = DDIMSampler(schedule, steps=steps, clip_x0=True, eps_from_clipped_x0=True)

    def pixel_sample(yy: Tensor, g: torch.Generator) -> Tensor:
        c, h, w = unet.input_size
        cond = yy if unet.config.num_classes else None
        with torch.no_grad():
            return sampler.sample(lambda x, t: unet(x, t, cond), (len(yy), c, h, w), generator=g)

    rows, raw = [], {}
    entries: list[tuple[str, Callable[[Tensor, torch.Generator], Tensor], int, float, float | None]] = [
        (f"pixel DDPM ({_arch(runs['pixel'])}, 32x32x1)", pixel_sample, _params(unet), t_pixel, None),
        (f"LDM guidance 1 ({_arch(Path(runs['ldm']) / 'unet')}, 8x8x4)", _ldm_sampler(ldm, 1.0, steps), _params(ldm.unet), t_latent, t_encode),
        ("LDM guidance 3 (2 forwards per step)", _ldm_sampler(ldm, 3.0, steps), _params(ldm.unet), t_latent, t_encode),
    ]
    for name, fn, params, t_step, t_enc in entries:
        x, sec = batched(fn, y, 250, seed=0)
        acc, fd = scorer.score(x, y)
        key = name.split(" (")[0]
        run = runs["pixel"] if key.startswith("pixel") else runs["ldm"]
        trained = _steps_trained(run)
        # the training the samples cost, at this step time (a shared machine's wall time would mislead)
        compute_min = None if trained is None else trained * t_step / 60
        raw[key] = {"params": params, "train_step_s": t_step, "encode_s": t_enc, "sample_s_per_image": sec,
                    "accuracy": acc, "fd": fd, "steps_trained": trained, "train_compute_min": compute_min}
        step_txt = f"{t_step:.3f}" + (f" (+{t_enc:.3f} encode)" if t_enc is not None else "")
        rows.append({"model": name, "params (M)": f"{params / 1e6:.2f}", f"train step, batch {batch} (s)": step_txt,
                     "steps trained": trained if trained is not None else "",
                     "training compute (min)": "" if compute_min is None else f"{compute_min:.1f}",
                     "sampling (s / image)": f"{sec:.4f}", "cond. accuracy %": _fmt(100 * acc), "FD": _fmt(fd, 2)})
        if not key.startswith("LDM guidance 3"):
            save_class_grid(x, per_class, out / f"grid_{'pixel' if key.startswith('pixel') else 'ldm'}.png")

    def score_ldm(model: Any) -> tuple[float, float, float]:
        x, sec = batched(_ldm_sampler(model, 1.0, steps), y, 250, seed=0)
        return (*scorer.score(x, y), sec)

    pixel = raw["pixel DDPM"]
    ladder = ldm_budget_ladder(runs["ldm"], out, (2,) if quick else budgets, pixel["fd"], score_ldm)
    for entry in ladder:
        entry["train_compute_min"] = entry["steps"] * t_latent / 60
        rows.append({"model": f"LDM guidance 1, retrained for {entry['steps']} steps", "params (M)": f"{_params(ldm.unet) / 1e6:.2f}",
                     f"train step, batch {batch} (s)": f"{t_latent:.3f}", "steps trained": entry["steps"],
                     "training compute (min)": f"{entry['train_compute_min']:.2f}",
                     "sampling (s / image)": f"{entry['sample_s_per_image']:.4f}",
                     "cond. accuracy %": _fmt(100 * entry["accuracy"]), "FD": _fmt(entry["fd"], 2)})
    matched = next((e for e in ladder if e["fd"] <= pixel["fd"]), None)
    if matched is None:
        match_note = (f"No LDM budget up to {ladder[-1]['steps']} steps reached the pixel model's FD "
                      f"{pixel['fd']:.2f}. ")
    elif pixel["train_compute_min"] is None:
        match_note = f"The LDM reaches the pixel model's FD after {matched['steps']} steps. "
    else:
        ratio = pixel["train_compute_min"] / matched["train_compute_min"]
        match_note = (f"Same quality: the LDM retrained for {matched['steps']} steps ({matched['train_compute_min']:.2f} "
                      f"compute-min) reaches FD {matched['fd']:.2f} <= the pixel model's {pixel['fd']:.2f} "
                      f"({pixel['train_compute_min']:.1f} compute-min): {ratio:.0f}x less training compute, and "
                      f"{pixel['sample_s_per_image'] / matched['sample_s_per_image']:.1f}x faster sampling. ")
    rows.append({"model": "real images (classifier on the test set; FD: val images)", "cond. accuracy %": _fmt(100 * scorer.classifier_accuracy),
                 "FD": _fmt(scorer.floor(len(y)), 2)})
    cols = ["model", "params (M)", f"train step, batch {batch} (s)", "steps trained", "training compute (min)",
            "sampling (s / image)", "cond. accuracy %", "FD"]
    notes = (f"Same machine, same process, torch threads = {torch.get_num_threads()}; train step = forward + backward + "
             f"AdamW on fresh weights (best of {repeats}); the LDM trains on cached latents, the encode column is what "
             f"encoding on the fly would add. Sampling: DDIM {steps} (pixel: x0 clipped to [-1, 1] and eps taken from the "
             f"clipped x0, diffusers' use_clipped_model_output), LDM time includes "
             f"decoding. Training budgets are the runs' own (their configs; steps trained in the table); training "
             f"compute = steps trained x the step time measured here (the LDM's excludes its first stage, trained "
             f"once and shared by every latent model). The retrained rows run the LDM's recipe with its schedule "
             f"fitted to the budget (`train_ldm_budget`), cheapest first, until one matches the pixel FD. "
             f"{match_note}{per_class} samples per class.")
    return write_results(out, "Pixel-space DDPM vs latent diffusion (Fashion-MNIST 32 px)", cols, rows,
                         {"raw": raw, "runs": runs, "ladder": ladder,
                          "matched": matched}, notes)


def _arch(folder: str | Path) -> str:
    return json.loads((Path(folder) / "config.json").read_text())["architecture"]


def _config(folder: str | Path) -> dict[str, Any]:
    return json.loads((Path(folder) / "config.json").read_text())["config"]


def _params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ------------------------------------------------------------------ token transformers


def load_token_run(run: str | Path) -> tuple[Any, Any, dict[str, Any]]:
    """(TokenTransformer, frozen first stage, tokens.json) of a TokenTransformerTask run."""
    import tessera

    run = Path(run)
    spec = json.loads((run / "tokens.json").read_text())
    model = tessera.create_model(_arch(run), checkpoint=run).eval()
    first = tessera.create_model(spec["first_stage"], checkpoint=spec["first_stage_checkpoint"],
                                 **(spec.get("first_stage_args") or {})).eval()
    return model, first, spec


def _codes(first: Any, x: Tensor) -> Tensor:
    with torch.no_grad():
        return torch.cat([first.encode(x[lo : lo + 256]).codes.flatten(1) for lo in range(0, len(x), 256)])


def token_generation(out: Path, quick: bool = False) -> dict:
    """MaskGIT (8 and 16 steps) and next-token sampling over VQ codes: accuracy, FD, NLL vs unigram entropy, time."""
    from tessera.generative import generate, maskgit_sample

    runs = make_quick_runs(out / "quick_runs") if quick else dict(RUNS)
    _require(runs, "maskgit", "nexttoken", "classifier")
    per_class = 2 if quick else 100
    torch.manual_seed(0)
    real = real_data(quick)
    scorer = Scorer(runs["classifier"], real)
    mg, first, spec = load_token_run(runs["maskgit"])
    gpt, _, _ = load_token_run(runs["nexttoken"])
    grid = tuple(spec["grid"])
    K = mg.config.vocab_size

    cache = Path(runs["codes"])
    if cache.is_file():
        from safetensors.torch import load_file

        data = load_file(str(cache))
        train_codes, test_codes = data["train_codes"].flatten(1), data["test_codes"].flatten(1)
    else:
        train_codes, test_codes = _codes(first, real.train_x), _codes(first, real.test_x)
    counts = torch.bincount(train_codes.flatten(), minlength=K).double()
    p = (counts + 0.5) / (counts + 0.5).sum()                     # add-1/2: no code of the test set has p = 0
    entropy = -(p * p.log2()).sum().item()                        # unigram entropy of the training codes
    unigram_test = -p.log2()[test_codes.flatten()].mean().item()  # its cross-entropy on the test codes
    with torch.no_grad():
        nats = [gpt(test_codes[lo : lo + 500], real.test_y[lo : lo + 500]).loss.item() * len(test_codes[lo : lo + 500])
                for lo in range(0, len(test_codes), 500)]
    nll_bits = sum(nats) / len(test_codes) / math.log(2)

    y = class_requests(mg.config.num_classes, per_class)

    def decode(codes: Tensor) -> Tensor:
        with torch.no_grad():
            return first.decode(codes.view(-1, *grid))

    samplers: list[tuple[str, Callable[[Tensor, torch.Generator], Tensor]]] = [
        ("MaskGIT 8 steps", lambda yy, g: decode(maskgit_sample(mg, y=yy, steps=8, generator=g))),
        ("MaskGIT 16 steps", lambda yy, g: decode(maskgit_sample(mg, y=yy, steps=16, generator=g))),
        ("next-token, T = 1 (KV cache)", lambda yy, g: decode(generate(gpt, gpt.config.seq_len, y=yy, generator=g))),
        # taming-transformers' class-conditional sampling truncates to the 100 most likely codes
        (f"next-token, top-k {TOP_K}", lambda yy, g: decode(generate(gpt, gpt.config.seq_len, y=yy, top_k=TOP_K,
                                                                       generator=g))),
    ]
    rows = [{"samples": "real images (classifier on the test set; FD: val images)", "cond. accuracy %": _fmt(100 * scorer.classifier_accuracy),
             "FD": _fmt(scorer.floor(len(y)), 2)}]
    acc, fd = scorer.score(decode(test_codes[: len(y)]), real.test_y[: len(y)])
    rows.append({"samples": "tokenizer reconstructions", "cond. accuracy %": _fmt(100 * acc), "FD": _fmt(fd, 2)})
    raw: dict[str, Any] = {}
    for name, fn in samplers:
        x, sec = batched(fn, y, 250, seed=0)
        acc, fd = scorer.score(x, y)
        raw[name] = {"accuracy": acc, "fd": fd, "seconds_per_image": sec}
        rows.append({"samples": name, "cond. accuracy %": _fmt(100 * acc), "FD": _fmt(fd, 2), "s / image": f"{sec:.4f}"})
        save_class_grid(x, per_class, out / f"grid_{re.sub('[^a-z0-9]+', '_', name.lower()).strip('_')}.png")
    n_nc = min(len(y), 20 if quick else 100)
    _, sec_nc = batched(lambda yy, g: generate(gpt, gpt.config.seq_len, y=yy, generator=g, use_cache=False), y[:n_nc], 250, 0)
    rows.append({"samples": "next-token without KV cache (codes only)", "s / image": f"{sec_nc:.4f}"})
    raw["no_cache_seconds_per_image"] = sec_nc
    gap = unigram_test - nll_bits
    notes = (f"Codes: K = {K}, {test_codes.shape[1]} per image ({grid[0]}x{grid[1]}), {int((counts > 0).sum())}/{K} used in "
             f"training. Test NLL of the next-token model (class-conditional): {nll_bits:.3f} bits/token; unigram entropy "
             f"of the training codes {entropy:.3f} bits, unigram cross-entropy on the test codes {unigram_test:.3f} bits: "
             f"{entropy - nll_bits:.3f} bits below the entropy (claim: >= 0.5). {per_class} samples per class; "
             f"times include decoding, torch threads = {torch.get_num_threads()}.")
    return write_results(out, "Token transformers over VQ codes (Fashion-MNIST, 8x8 codes)",
                         ["samples", "cond. accuracy %", "FD", "s / image"], rows,
                         {"raw": raw, "nll_bits_per_token": nll_bits, "unigram_entropy_bits": entropy,
                          "unigram_test_cross_entropy_bits": unigram_test, "gap_to_entropy_bits": entropy - nll_bits,
                          "gap_to_unigram_test_bits": gap, "claim_holds": entropy - nll_bits >= 0.5, "runs": runs}, notes)


# ------------------------------------------------------------------ one model, text <-> image


def multimodal(out: Path, quick: bool = False) -> dict:
    """The notes' multimodal recipe both ways: caption -> image (conditional accuracy, FD) and image -> caption (accuracy)."""
    from tessera.data.text import TextTokenizer
    from tessera.generative.multimodal import MultimodalLayout

    runs = make_quick_runs(out / "quick_runs") if quick else dict(RUNS)
    _require(runs, "multimodal", "classifier")
    per_class = 2 if quick else 100
    n_captions = 20 if quick else 1000
    torch.manual_seed(0)
    real = real_data(quick)
    scorer = Scorer(runs["classifier"], real)
    model, first, spec = load_token_run(runs["multimodal"])
    if not spec.get("layout"):
        raise ValueError(f"{runs['multimodal']} is not a multimodal run (tokens.json has no layout)")
    layout = MultimodalLayout(**spec["layout"])
    pre = json.loads((Path(runs["multimodal"]) / "preprocess.json").read_text())
    tok = TextTokenizer.from_json(pre["tokenizer"])
    grid = tuple(spec["grid"])
    classes = len(pre["class_prompts"])
    y = class_requests(classes, per_class)
    prompts = tok.encode(pre["class_prompts"], layout.text_len)

    def caption_to_image(yy: Tensor, g: torch.Generator) -> Tensor:
        codes = layout.text_to_image(model, prompts[yy], generator=g)
        with torch.no_grad():
            return first.decode(codes.view(-1, *grid))

    x, sec = batched(caption_to_image, y, 250, seed=0)
    acc, fd = scorer.score(x, y)
    save_class_grid(x, per_class, out / "grid_caption_to_image.png")
    # image -> caption: greedy captions of test images, read back as text
    test_x, test_y = real.test_x[:n_captions], real.test_y[:n_captions]
    codes = _codes(first, test_x)
    start = time.perf_counter()
    with torch.no_grad():
        rows_out = torch.cat([layout.image_to_text(model, codes[lo : lo + 250], temperature=0.0)
                              for lo in range(0, len(codes), 250)])
    sec_caption = (time.perf_counter() - start) / len(codes)
    texts = tok.decode(rows_out)
    normalise = lambda t: " ".join(t.lower().split())  # noqa: E731
    truth = [normalise(pre["class_prompts"][int(c)]) for c in test_y]  # the class captions ("a picture of a bag")
    exact = sum(normalise(t) == want for t, want in zip(texts, truth)) / len(truth)
    known = {normalise(p): i for i, p in enumerate(pre["class_prompts"])}
    named = sum(normalise(t) in known for t in texts) / len(texts)
    rows = [
        {"direction": "real test images (classifier accuracy; FD floor: val images)", "accuracy %": _fmt(100 * scorer.classifier_accuracy),
         "FD": _fmt(scorer.floor(len(y)), 2)},
        {"direction": "caption -> image (T = 1, KV cache)", "accuracy %": _fmt(100 * acc), "FD": _fmt(fd, 2), "s / item": f"{sec:.4f}"},
        {"direction": "image -> caption (greedy), exact caption", "accuracy %": _fmt(100 * exact), "s / item": f"{sec_caption:.4f}"},
        {"direction": "chance (10 classes)", "accuracy %": _fmt(100 / classes)},
    ]
    examples = [f"{t!r} (true: {w!r})" for t, w in list(zip(texts, truth))[:5]]
    notes = (f"One causal transformer over <text> caption <image> codes and <image> codes <text> caption "
             f"({layout.text_len} text + {layout.image_len} image tokens, {layout.vocab_size} ids). caption -> image: "
             f"{per_class} samples per class prompt, accuracy = the classifier labels the sample as the prompted class. "
             f"image -> caption: {len(truth)} test images, greedy decoding; {100 * named:.1f}% of the generated captions "
             f"are one of the class captions. Examples: {'; '.join(examples)}.")
    return write_results(out, "Text <-> image in one token transformer (Fashion-MNIST captions)",
                         ["direction", "accuracy %", "FD", "s / item"], rows,
                         {"caption_to_image": {"accuracy": acc, "fd": fd, "seconds_per_image": sec},
                          "image_to_caption": {"exact": exact, "valid_caption": named, "seconds_per_caption": sec_caption},
                          "runs": runs}, notes)


# ------------------------------------------------------------------ quick runs


def make_quick_runs(folder: Path) -> dict[str, str]:
    """Tiny random-weight runs of every kind the experiments read, in their exported formats (digits, 16 px)."""
    import tessera
    from tessera.diffusion.conditioning import ClassEmbedder
    from tessera.diffusion.latent import LatentDiffusion
    from tessera.diffusion.schedule import NoiseSchedule

    folder = Path(folder)
    torch.manual_seed(0)
    runs = {k: str(folder / k) for k in ("ldm", "pixel", "maskgit", "nexttoken", "classifier", "vq")}
    runs["codes"] = str(folder / "no_cache.safetensors")
    clf = tessera.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, in_chans=1, num_classes=10,
                               embed_dim=16, depth=1, num_heads=2)
    clf.save_pretrained(runs["classifier"])
    (Path(runs["classifier"]) / "preprocess.json").write_text(json.dumps({"img_size": 16, "mean": [0.5], "std": [0.5]}))
    ae = dict(img_size=16, in_chans=1, channels=(8, 16), layers_per_block=1, norm_groups=4, mid_attention=False)
    kl = tessera.create_model("autoencoder_kl_f4", latent_channels=4, **ae)
    unet = tessera.create_model("ldm_unet_digits", img_size=8, in_chans=4, widths=(8, 16), heads=(2, 2), context_dim=8,
                                norm_groups=4)
    schedule = NoiseSchedule.from_name("linear", 20, 0.00085, 0.012)
    LatentDiffusion(kl, unet, ClassEmbedder(10, 8), schedule, 1.0).save_pretrained(runs["ldm"])
    (Path(runs["ldm"]) / "config.yaml").write_text(json.dumps({   # the recipe the budget ladder retrains (YAML is JSON)
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "limit_val_batches": 1, "logger": False, "deterministic": True},
        "model": {"class_path": "tessera.train.latent_diffusion.LatentDiffusionTask", "init_args": {
            "first_stage": "autoencoder_kl_f4", "first_stage_checkpoint": str(Path(runs["ldm"]) / "first_stage"),
            "first_stage_args": ae, "unet": "ldm_unet_digits",
            "unet_args": dict(img_size=4, in_chans=4, widths=(8, 16), heads=(2, 2), context_dim=8, norm_groups=4),
            "conditioning": "class", "T": 20, "warmup_steps": 4, "num_samples_per_class": 1, "sample_steps": 2}},
        "data": {"class_path": "tessera.data.DigitsDataModule", "init_args": {
            "img_size": 16, "in_chans": 1, "batch_size": 8, "normalize": "signed", "augment": {"enabled": False}}}}))
    pixel = tessera.create_model("unet_digits", img_size=16, widths=(8, 16), norm_groups=4, attn_resolutions=(), num_classes=10)
    pixel.save_pretrained(runs["pixel"])
    (Path(runs["pixel"]) / "diffusion.json").write_text(json.dumps({"schedule": "linear", "T": 20, "beta_start": 1e-4,
                                                                     "beta_end": 0.02, "prediction": "eps"}))
    vq = tessera.create_model("vqvae_f4", latent_channels=4, embed_dim=4, num_codes=16, **ae)
    vq.save_pretrained(runs["vq"])
    for key, name in (("maskgit", "maskgit_digits"), ("nexttoken", "tokengpt_digits")):
        tessera.create_model(name, vocab_size=16, seq_len=64, dim=16, depth=1, heads=2).save_pretrained(runs[key])
        (Path(runs[key]) / "tokens.json").write_text(json.dumps(
            {"first_stage": "vqvae_f4", "first_stage_checkpoint": runs["vq"], "first_stage_args": None, "grid": [8, 8]}))
    from tessera.data.captions import digit_caption
    from tessera.data.text import TextTokenizer
    from tessera.generative.multimodal import MultimodalLayout

    captions = [digit_caption(i) for i in range(10)]
    tok = TextTokenizer.train(captions * 5, 300, "bpe")
    layout = MultimodalLayout(tok.vocab_size, 16, 8, 64, tok.pad_id, tok.eos_id)
    runs["multimodal"] = str(folder / "multimodal")
    tessera.create_model("tokengpt_digits", vocab_size=layout.vocab_size, seq_len=layout.seq_len, num_classes=0,
                         dim=16, depth=1, heads=2).save_pretrained(runs["multimodal"])
    (Path(runs["multimodal"]) / "tokens.json").write_text(json.dumps(
        {"first_stage": "vqvae_f4", "first_stage_checkpoint": runs["vq"], "first_stage_args": None, "grid": [8, 8],
         "layout": asdict(layout)}))
    (Path(runs["multimodal"]) / "preprocess.json").write_text(json.dumps(
        {"img_size": 16, "tokenizer": tok.tokenizer.to_str(), "context_length": 8, "class_prompts": captions}))
    return runs


EXPERIMENTS = {"ldm-guidance": ldm_guidance, "pixel-vs-latent": pixel_vs_latent, "token-generation": token_generation,
               "multimodal": multimodal}
