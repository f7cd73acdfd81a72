"""The `tessera` training command: default recipe, configs, any LightningModule by class_path, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tessera.cli import main
from tessera.train.cli import DEFAULT_RECIPE, build_cli, lightning_main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_default_recipe_file_matches_the_builtin_one():
    # `tessera fit` with no --config trains DEFAULT_RECIPE; configs/digits_swin.yaml documents it
    assert yaml.safe_load((CONFIGS / "digits_swin.yaml").read_text()) == DEFAULT_RECIPE
    init = DEFAULT_RECIPE["model"]["init_args"]
    assert init["model_name"] == "swin_tiny_patch4_window7_224"
    assert DEFAULT_RECIPE["data"]["class_path"] == "tessera.data.DigitsDataModule"


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", sorted(p.name for p in CONFIGS.glob("*.yaml") if not p.name.startswith("ddpm_"))
)
def test_configs_parse_and_instantiate(name, tmp_path):
    def inputs(node, key=""):  # run folders a recipe reads (not the one it writes)
        if isinstance(node, dict):
            return [v for k, sub in node.items() for v in inputs(sub, k)]
        if isinstance(node, list):
            return [v for sub in node for v in inputs(sub, key)]
        return [node] if isinstance(node, str) and node.startswith("runs/") and key != "default_root_dir" else []

    missing = [w for w in inputs(yaml.safe_load((CONFIGS / name).read_text())) if not Path(w).exists()]
    if missing:  # a recipe built on an earlier run's export (e.g. a perceptual classifier)
        pytest.skip(f"{name} needs {missing} (trained by another recipe first)")
    cli = build_cli(
        ["fit", "--config", str(CONFIGS / name), "--trainer.accelerator", "cpu", "--trainer.devices", "1",
         "--trainer.strategy", "auto", "--trainer.precision", "32-true",
         "--trainer.default_root_dir", str(tmp_path)],
        run=False,
    )
    assert cli.model is not None and cli.datamodule is not None
    if "model_name" in cli.model.hparams:
        assert cli.model.hparams.model_name
    assert type(cli.trainer.strategy.checkpoint_io).__name__ == "AtomicCheckpointIO"
    assert cli.trainer.checkpoint_callback.save_last is True


@pytest.mark.slow
def test_any_lightning_module_by_class_path(tmp_path):
    # subclass mode: modules that are not tessera's train through the same command and run folder
    cfg = {
        "trainer": {"max_steps": 3, "limit_val_batches": 1, "enable_progress_bar": False,
                    "enable_model_summary": False, "default_root_dir": str(tmp_path / "run")},
        "model": {"class_path": "lightning.pytorch.demos.boring_classes.BoringModel"},
        "data": {"class_path": "lightning.pytorch.demos.boring_classes.BoringDataModule"},
        "checkpoint": {"every_n_train_steps": 1},
        "test_after_fit": False,
    }
    path = tmp_path / "boring.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert lightning_main(["fit", "--config", str(path)]) == 0
    run = tmp_path / "run"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "model.safetensors").is_file() and (run / "config.yaml").is_file()


def test_predict_on_a_folder_that_is_not_a_run_is_one_line_error(tmp_path, capsys):
    img = tmp_path / "x.png"
    img.write_bytes(b"")
    assert main(["predict", "--checkpoint", str(tmp_path), "--images", str(img)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tessera predict: error:") and "not an exported tessera run" in err
    assert "\n" not in err


@pytest.mark.slow
def test_fit_help_lists_lightning_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--trainer.max_epochs" in out and "--ckpt_path" in out and "--checkpoint.every_n_train_steps" in out


@pytest.mark.slow
def test_fit_on_an_empty_image_folder_fails_before_training(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = main(["fit", "--data", "tessera.data.ImageFolderDataModule", "--data.root", str(tmp_path / "empty"),
                 "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.enable_progress_bar", "false"])
    err = capsys.readouterr().err
    assert code == 2 and "no class subfolders" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_bench_all_gives_each_script_the_arguments_it_needs(tmp_path):
    """bench_tokenizers.py has subcommands: bench-all must name one, in the quick and the full run."""
    from tessera.cli.bench_all import bench_all

    (tmp_path / "common.py").write_text("")
    (tmp_path / "bench_tokenizers.py").write_text(
        "import json, pathlib, sys\n"
        "out = pathlib.Path(__file__).with_name('argv.json')\n"
        "seen = json.loads(out.read_text()) if out.exists() else []\n"
        "out.write_text(json.dumps(seen + [sys.argv[1:]]))\n"
        "sys.exit(0 if sys.argv[1:2] == ['speed'] else 2)\n"
    )
    assert bench_all(["--quick", "--dir", str(tmp_path)]) == 0
    assert bench_all(["--dir", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "argv.json").read_text()) == [["speed", "--quick"], ["speed"]]


def test_every_benchmark_script_has_a_quick_form_that_it_accepts():
    from tessera.cli.bench_all import SCRIPTS

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    scripts = {p.name for p in folder.glob("bench_*.py")}
    assert scripts <= set(SCRIPTS), f"bench-all --quick would run these at full size: {sorted(scripts - set(SCRIPTS))}"
    for name, extra in SCRIPTS.items():
        source = (folder / name).read_text()
        for flag in (a for a in extra if a.startswith("--")):
            assert f'"{flag}"' in source, f"{name} has no {flag} option"


@pytest.mark.parametrize("env, tuned", [(None, True), ("tuned", True), ("system", False)])
def test_the_command_tunes_the_allocator_unless_told_not_to(monkeypatch, env, tuned):
    import tessera.cli as cli
    import tessera.hardware as hardware

    applied = []
    monkeypatch.setattr(hardware, "tune_allocator", lambda enable=True: applied.append(enable) or True)
    if env is None:
        monkeypatch.delenv("TESSERA_ALLOCATOR", raising=False)
    else:
        monkeypatch.setenv("TESSERA_ALLOCATOR", env)
    monkeypatch.setattr(cli, "commands", lambda: {"noop": lambda argv: 0})
    assert main(["noop"]) == 0
    assert applied == ([True] if tuned else [])


def test_an_unknown_allocator_choice_is_a_clear_error(monkeypatch):
    import tessera.cli as cli

    monkeypatch.setenv("TESSERA_ALLOCATOR", "jemalloc")
    monkeypatch.setattr(cli, "commands", lambda: {"noop": lambda argv: 0})
    with pytest.raises(SystemExit, match="TESSERA_ALLOCATOR must be 'tuned' or 'system'"):
        main(["noop"])


@pytest.mark.slow
@pytest.mark.parametrize(
    "fast, trainer, converted",
    [(False, {}, False), (True, {}, True), (None, {}, False), (None, {"benchmark": True}, True),
     (None, {"benchmark": True, "deterministic": True}, False), (False, {"benchmark": True}, False)],
)
def test_fast_linear_option_converts_the_trained_networks_linear_layers(tmp_path, fast, trainer, converted):
    from tessera.layers.fast_linear import FastLinear

    cfg = {
        "trainer": {"max_steps": 2, "limit_val_batches": 1, "enable_progress_bar": False,
                    "enable_model_summary": False, "default_root_dir": str(tmp_path / "run"), **trainer},
        "model": {"class_path": "lightning.pytorch.demos.boring_classes.BoringModel"},
        "data": {"class_path": "lightning.pytorch.demos.boring_classes.BoringDataModule"},
        "test_after_fit": False,
    }
    if fast is not None:  # unset: it follows trainer.benchmark, off when deterministic
        cfg["fast_linear"] = fast
    path = tmp_path / "boring.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cli = build_cli(["fit", "--config", str(path)])
    assert (type(cli.model.layer) is FastLinear) is converted
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_a_resumed_fast_linear_run_uses_the_kernels_it_chose_before(tmp_path, monkeypatch):
    import torch

    from tessera.layers import fast_linear

    for name in ("FORWARD_CHOICES", "GRAD_INPUT_CHOICES"):  # empty tables: this test's run picks first
        chooser = getattr(fast_linear, name)
        monkeypatch.setattr(fast_linear, name, fast_linear.LinearGemmChoices(chooser.gemm, chooser.kernels))
    cfg = {
        "trainer": {"max_steps": 4, "limit_val_batches": 0, "enable_progress_bar": False,
                    "enable_model_summary": False, "default_root_dir": str(tmp_path / "run")},
        "model": {"class_path": "lightning.pytorch.demos.boring_classes.BoringModel"},
        "data": {"class_path": "lightning.pytorch.demos.boring_classes.BoringDataModule"},
        "checkpoint": {"every_n_train_steps": 2, "save_top_k": -1},
        "test_after_fit": False,
        "fast_linear": True,
    }
    path = tmp_path / "boring.yaml"
    path.write_text(yaml.safe_dump(cfg))
    build_cli(["fit", "--config", str(path)])
    picks = fast_linear.kernel_tables()
    assert picks["forward"]  # (the first layer: no input gradient to pick a kernel for)
    step2 = tmp_path / "run" / "checkpoints" / "stepstep=2.ckpt"
    assert torch.load(step2, weights_only=False)["callbacks"]["FastLinearKernels"]["kernels"] == picks
    for chooser in (fast_linear.FORWARD_CHOICES, fast_linear.GRAD_INPUT_CHOICES):  # a new process
        chooser.table.clear()
        monkeypatch.setattr(chooser, "time_kernel", lambda *a: pytest.fail("a restored case was timed again"))
    resumed = build_cli(["fit", "--config", str(path), "--ckpt_path", str(step2)])
    assert resumed.trainer.global_step == 4 and type(resumed.model.layer) is fast_linear.FastLinear
    assert fast_linear.kernel_tables() == picks  # the resumed steps ran on the restored picks, untimed
