"""`swinv2-transfer`: Swin-V2 moves to another window size better than Swin-V1 (Liu et al. 2022).

Both trained small at 32 px with 4 x 4 windows, then evaluated at 64 px with
8 x 8 windows without fine-tuning: V1 with its relative-bias table resized
bicubically (what loading a checkpoint into a larger window does), V2 with its
continuous position bias evaluated at the new offsets (`pretrained_window_sizes`
set to the training window). The test images are the same ones, upsampled
bilinearly (so the content is the same and each window covers half the image
area it covered in training). The claim holds when V2's accuracy drop is no
larger than V1's.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tessera.experiments.common import digits_data, effect, fashion_data, fit_run, fmt, mean_std, write_results

V1 = ("swin_tiny_patch4_window7_224", {"patch_size": 2, "window_size": 4, "embed_dim": 32, "depths": [2, 2],
                                      "num_heads": [2, 4]})
V2 = ("swinv2_tiny_window8_256", {"patch_size": 2, "window_size": 4, "embed_dim": 32, "depths": [2, 2],
                                  "num_heads": [2, 4], "pretrained_window_sizes": [0, 0]})


def evaluate(run_dir: Path, name: str, overrides: dict, data: dict, size: int) -> float:
    """Test top-1 of a run's exported weights, rebuilt for `size` px input with `overrides`."""
    import tessera
    from tessera.data import DigitsDataModule
    from tessera.data.idx import IDXDataModule

    from tessera.data import Augment

    cls = DigitsDataModule if data["class_path"].endswith("DigitsDataModule") else IDXDataModule
    args = dict(data["init_args"])
    if isinstance(args.get("augment"), dict):  # as a config gives it
        args["augment"] = Augment(**args["augment"])
    dm = cls(**args)  # the training resolution; a larger test size upsamples the same images
    dm.setup("test")
    model = tessera.create_model(name, checkpoint=run_dir, img_size=size, **overrides).eval()
    correct = total = 0
    with torch.inference_mode():
        for x, y in dm.test_dataloader():
            if x.shape[-1] != size:  # higher-resolution evaluation: same content, more tokens per window
                x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            correct += (model(x).argmax(-1) == y).sum().item()
            total += len(y)
    return correct / total


def run(out: Path, quick: bool = False, seeds: int = 3, epochs: int = 3, train_limit: int | None = 20_000) -> dict:
    """Train V1 and V2 at 32 px, window 4; test at 32 px and at 64 px with window 8."""
    data = digits_data(32) if quick else fashion_data(32, 64, train_limit)
    limit, epochs = (3, 1) if quick else (None, epochs)
    rows, raw = [], {}
    for label, (name, args) in {"Swin-V1": V1, "Swin-V2": V2}.items():
        native, moved = [], []
        for seed in range(seeds):
            run_dir = out / "runs" / f"{label}_s{seed}"
            task = {"class_path": "tessera.train.ClassificationTask",
                    "init_args": {"model_name": name, "model_args": args, "lr": 2e-3, "label_smoothing": 0.1}}
            fit_run(run_dir, task, data, epochs=epochs, seed=seed, limit_batches=limit)
            native.append(evaluate(run_dir, name, {}, data, 32))
            bigger = {"window_size": 8} | ({"pretrained_window_sizes": [4, 4]} if label == "Swin-V2" else {})
            moved.append(evaluate(run_dir, name, bigger, data, 64))
        raw[label] = {"native": native, "moved": moved}
        drops = [a - b for a, b in zip(native, moved)]
        rows.append({"model": label, "32 px, window 4 (%)": fmt(native), "64 px, window 8 (%)": fmt(moved),
                     "drop (points)": fmt(drops)})
    drop = {k: mean_std([a - b for a, b in zip(v["native"], v["moved"])])[0] for k, v in raw.items()}
    holds = drop["Swin-V2"] <= drop["Swin-V1"]
    drops = {k: [a - b for a, b in zip(v["native"], v["moved"])] for k, v in raw.items()}
    notes = (f"V2's drop {100 * drop['Swin-V2']:.1f} vs V1's {100 * drop['Swin-V1']:.1f} points: claim "
             f"{'holds' if holds else 'does NOT hold'} here; V1's drop minus V2's: {effect(drops['Swin-V1'], drops['Swin-V2'])}.")
    return write_results(out, "Window transfer: Swin-V2 vs Swin-V1", ["model", "32 px, window 4 (%)",
                         "64 px, window 8 (%)", "drop (points)"], rows, {"raw": raw, "claim_holds": holds}, notes)


EXPERIMENTS = {"swinv2-transfer": run}
