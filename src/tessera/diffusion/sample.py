"""Loading a trained diffusion run and drawing images from it (the library side of `tessera sample`).

A run folder holds the exported UNet (`model.safetensors` + `config.json`,
written by `tessera fit`) and `diffusion.json` (schedule and objective). The
command itself lives in `tessera.cli.sample`; this module never imports the
training engine or the CLI.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from tessera.diffusion.objectives import _PREDICTIONS
from tessera.diffusion.samplers import DDIMSampler, DDPMSampler
from tessera.diffusion.schedule import NoiseSchedule
from tessera.diffusion.unet import UNet, UNetConfig

__all__ = ["DEFAULT_SPEC", "load_diffusion_run", "per_sample_generators", "read_diffusion_spec", "sample_images"]

log = logging.getLogger(__name__)

DEFAULT_SPEC: dict[str, Any] = {
    "schedule": "linear", "T": 1000, "beta_start": 1e-4, "beta_end": 0.02, "prediction": "eps",
    "class_conditional": False, "num_classes": 0,
}


def read_diffusion_spec(path: Path) -> tuple[dict[str, Any], NoiseSchedule]:
    """The spec of a `diffusion.json` (defaults filled in) and its schedule.

    Raises:
        ValueError: naming the file, when it is not JSON, not an object, or holds values that build no schedule.
    """
    try:
        found = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"malformed JSON in {str(path)!r}: {err}") from None
    if not isinstance(found, dict):
        raise ValueError(f"{str(path)!r} must hold a JSON object, got {type(found).__name__}")
    spec = {**DEFAULT_SPEC, **found}
    return spec, _schedule_of(spec, str(path))


def _schedule_of(spec: dict[str, Any], where: str) -> NoiseSchedule:
    if spec["prediction"] not in _PREDICTIONS:
        raise ValueError(f"{where}: prediction must be one of {_PREDICTIONS}, got {spec['prediction']!r}")
    T, lo, hi = spec["T"], spec["beta_start"], spec["beta_end"]
    if isinstance(T, bool) or not isinstance(T, int) or not all(isinstance(v, (int, float)) for v in (lo, hi)):
        raise ValueError(f"{where}: T must be an integer and beta_start/beta_end numbers, got {T!r}, {lo!r}, {hi!r}")
    try:
        return NoiseSchedule.from_name(spec["schedule"], T, float(lo), float(hi))
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def load_diffusion_run(folder: str | Path) -> tuple[UNet, NoiseSchedule, dict[str, Any]]:
    """The UNet (eval mode), its NoiseSchedule and the run's diffusion spec from a run folder (or RUN/best)."""
    from tessera.core.base import config_from_dict
    from tessera.io.checkpoint import load_checkpoint, read_tessera_config

    folder = Path(folder)
    if not folder.exists():
        raise ValueError(f"checkpoint folder not found: {str(folder)!r}")
    meta = read_tessera_config(folder)
    if meta is None:
        raise ValueError(
            f"{str(folder)!r} is not an exported tessera diffusion run: expected config.json + "
            "model.safetensors (written by `tessera fit --config configs/ddpm_digits.yaml`)"
        )
    try:
        config = config_from_dict(UNetConfig, meta["config"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{str(folder)!r} does not hold a UNet ({meta.get('architecture')!r}): {err}") from None
    model = UNet(config)
    model.arch = meta.get("architecture", "")
    load_checkpoint(model, folder)
    for candidate in (folder / "diffusion.json", folder.parent / "diffusion.json"):
        if candidate.is_file():
            spec, schedule = read_diffusion_spec(candidate)
            break
    else:
        log.warning("no diffusion.json next to %s: assuming DDPM's linear schedule, T=1000, eps-prediction", folder)
        spec = dict(DEFAULT_SPEC)
        schedule = _schedule_of(spec, "the default spec")
    return model.eval(), schedule, spec


def per_sample_generators(seed: int, num: int) -> list[torch.Generator]:
    """One generator per image, seeded from (seed, i): image i is the same in any batch size."""
    seeds = torch.randint(0, 2**62, (num,), generator=torch.Generator().manual_seed(seed)).tolist()
    return [torch.Generator().manual_seed(s) for s in seeds]


@torch.inference_mode()
def sample_images(
    model: UNet,
    sampler: DDPMSampler | DDIMSampler,
    num: int,
    seed: int = 0,
    batch_size: int = 64,
    class_label: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Tensor:
    """`num` images (num, C, H, W) in the model's range, drawn in batches with per-sample generators.

    Class-conditional models get `class_label` for every image, or classes 0, 1, ... in turn.
    """
    if num < 1 or batch_size < 1:
        raise ValueError(f"num and batch_size must be >= 1, got {num} and {batch_size}")
    K = model.config.num_classes
    if class_label is not None and not 0 <= class_label < max(K, 1):
        raise ValueError(f"class label must be in [0, {K}) for this model, got {class_label}")
    c, h, w = model.input_size
    gens = per_sample_generators(seed, num)
    images = []
    for lo in range(0, num, batch_size):
        n = min(batch_size, num - lo)
        y = None
        if K > 0:
            y = torch.full((n,), class_label) if class_label is not None else torch.arange(lo, lo + n) % K
        images.append(sampler.sample(lambda x, t: model(x, t, y), (n, c, h, w), generator=gens[lo : lo + n]))
        if progress is not None:
            progress(lo + n, num)
    return torch.cat(images)
