"""`tessera sample` / `tessera fid` with hostile arguments (issue 18), and the layering rule that
family packages never import the training engine or the CLI (issue 9)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tessera
from tessera.cli import main

SRC = Path(tessera.__file__).parent


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A diffusion run folder as `tessera fit` exports it: tiny UNet + diffusion.json (T = 30)."""
    from tessera.core import create_model

    folder = tmp_path_factory.mktemp("ddpm") / "run"
    unet = create_model("unet_digits", img_size=8, widths=(8, 16), depth=1, attn_resolutions=(), norm_groups=4, dropout=0.0)
    unet.save_pretrained(folder)
    (folder / "diffusion.json").write_text(json.dumps({"schedule": "linear", "T": 30, "beta_start": 1e-4, "beta_end": 0.02, "prediction": "eps"}))
    return folder


def _sample(run: Path, *extra: str) -> list[str]:
    return ["sample", "--checkpoint", str(run), "--num", "2", "--steps", "3", "--scale", "1", *extra]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--threads", "-1"], "--threads must be >= 1, got -1"),
        (["--threads", "0"], "--threads must be >= 1, got 0"),
        (["--scale", "0"], "--scale must be >= 1, got 0"),
        (["--num", "0"], "--num must be >= 1, got 0"),
        (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["--eta", "-1"], "--eta must be >= 0"),
        (["--steps", "0"], "steps must be an integer in [1, T] = [1, 30], got 0"),
        (["--steps", "31", "--spacing", "trailing"], "steps must be an integer in [1, T] = [1, 30], got 31"),
        (["--class-label", "3"], "--class-label must be in [0, 0)"),
    ],
)
def test_bad_arguments_fail_before_any_sampling(run, tmp_path, capsys, monkeypatch, args, message):
    import tessera.diffusion.sample as lib

    monkeypatch.setattr(lib, "sample_images", lambda *a, **k: pytest.fail("sampled before checking the arguments"))
    code = main([*_sample(run, "--out", str(tmp_path / "g.png")), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "g.png").exists()


def test_unwritable_out_is_refused_before_sampling(run, tmp_path, capsys, monkeypatch):
    import tessera.diffusion.sample as lib

    monkeypatch.setattr(lib, "sample_images", lambda *a, **k: pytest.fail("sampled before checking --out"))
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main([*_sample(run), "--out", str(blocker / "grid.png")]) == 2
    assert "--out" in capsys.readouterr().err
    assert main([*_sample(run), "--out", str(tmp_path)]) == 2  # a folder, not a file name
    assert "is a folder" in capsys.readouterr().err
    assert main([*_sample(run), "--out", str(tmp_path / "g.png"), "--save-images", str(blocker / "imgs")]) == 2
    assert "--save-images" in capsys.readouterr().err


def test_broken_diffusion_json_is_named(tmp_path, run, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    (broken / "diffusion.json").write_text('{"schedule": "linear", "T": ')
    assert main([*_sample(broken), "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err
    assert "malformed JSON" in err and str(broken / "diffusion.json") in err
    (broken / "diffusion.json").write_text(json.dumps({"schedule": "cosine2", "T": 30}))
    assert main([*_sample(broken), "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err
    assert "diffusion.json" in err and "cosine2" in err
    (broken / "diffusion.json").write_text(json.dumps({"T": "30"}))
    assert main([*_sample(broken), "--out", str(tmp_path / "g.png")]) == 2
    assert "T must be an integer" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_image_i_is_the_same_in_any_batch_size(run, tmp_path, sampler):
    """Per-sample generators (as diffusers offers): the batch size does not change the images."""
    outs = []
    for bs in (1, 3):
        folder = tmp_path / f"{sampler}{bs}"
        args = ["sample", "--checkpoint", str(run), "--num", "3", "--steps", "3", "--sampler", sampler,
                "--eta", "1", "--batch-size", str(bs), "--out", str(folder / "g.png"), "--save-images", str(folder)]
        assert main(args) == 0
        outs.append([np.asarray(Image.open(folder / f"sample_{i:05d}.png")) for i in range(3)])
    for a, b in zip(*outs):
        assert np.array_equal(a, b)
    assert not np.array_equal(outs[0][0], outs[0][1])  # different images, not one repeated


@pytest.mark.slow
def test_trailing_spacing_with_steps_not_dividing_T_samples(run, tmp_path):
    # 13 and 26 of T = 30 gave a grid ending in timestep -1
    for steps in ("13", "26"):
        assert main(["sample", "--checkpoint", str(run), "--num", "1", "--steps", steps, "--spacing", "trailing",
                     "--out", str(tmp_path / f"t{steps}.png")]) == 0


def test_fid_is_a_cli_command_and_the_metrics_are_library_functions():
    from tessera.cli import commands
    from tessera.diffusion import metrics
    from tessera.eval import frechet_distance_features

    assert "fid" in commands() and "sample" in commands()
    assert metrics.frechet_distance_features is frechet_distance_features
    f = torch.randn(50, 4, dtype=torch.float64)
    assert frechet_distance_features(f, f) == pytest.approx(0.0, abs=1e-8)


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_family_packages_never_import_the_engine_or_the_cli():
    """Lower packages never import higher ones (DESIGN.md): no tessera.train / tessera.cli in a family."""
    offenders = []
    for pkg in sorted(p for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").is_file()):
        if pkg.name in ("train", "cli", "experiments"):  # the engine, the command, and runs built on them
            continue
        for path in sorted(pkg.rglob("*.py")):
            bad = {n for n in _imports(path) if n.split(".")[:2] in (["tessera", "train"], ["tessera", "cli"])
                   or n in ("tessera.train", "tessera.cli")}
            if bad:
                offenders.append(f"{path.relative_to(SRC)}: {sorted(bad)}")
    assert not offenders, offenders


def test_sample_hands_a_latent_diffusion_run_to_sample_ldm(tmp_path, monkeypatch):
    import tessera.cli.ldm as ldm
    from tessera.cli import main

    (tmp_path / "ldm.json").write_text("{}")
    seen = []
    monkeypatch.setattr(ldm, "sample_ldm", lambda argv: seen.append(argv) or 0)
    argv = ["--checkpoint", str(tmp_path), "--class", "3", "--guidance", "3"]
    assert main(["sample", *argv]) == 0
    assert seen == [argv]
