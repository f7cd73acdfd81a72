"""`tessera reproduce ssl-data-hunger`: the quick form runs end to end; its DINO recipe is the config's."""

import json
from pathlib import Path

import pytest
import yaml

from tessera.cli import main
from tessera.experiments import experiments
from tessera.experiments.ssl_data_hunger import ENCODER, dino_task, simmim_task

ROOT = Path(__file__).resolve().parents[1]


def test_registered():
    assert "ssl-data-hunger" in experiments()


def test_dino_recipe_is_the_one_of_configs_dino_digits():
    cfg = yaml.safe_load((ROOT / "configs" / "dino_digits.yaml").read_text())["model"]
    task = dino_task(ENCODER)
    assert cfg["class_path"] == task["class_path"]
    for key, value in task["init_args"].items():
        assert cfg["init_args"][key] == value, key


def test_simmim_recipe_uses_the_same_encoder_as_configs_simmim_digits():
    cfg = yaml.safe_load((ROOT / "configs" / "simmim_digits.yaml").read_text())["model"]["init_args"]
    task = simmim_task(ENCODER)["init_args"]
    assert cfg["model_args"] == task["model_args"]
    assert {k: cfg[k] for k in ("lr", "weight_decay", "crop_scale", "hflip")} == {
        k: task[k] for k in ("lr", "weight_decay", "crop_scale", "hflip")}


@pytest.mark.slow
def test_quick_writes_the_label_fraction_table(tmp_path, one_thread):
    assert main(["reproduce", "ssl-data-hunger", "--quick", "--seeds", "2", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    names = [r["initialisation"] for r in result["rows"]]
    assert names == ["raw pixels (no encoder)", "from scratch", "SimMIM", "DINO", "DINOv2 objective",
                     "DINOv2 objective, Sinkhorn-Knopp"]
    for name in names[1:]:
        raw = result["raw"][name]
        assert len(raw["knn"]) == 1 and 0.0 <= raw["knn"][0] <= 1.0  # one per pre-training run
        for frac in ("0.01", "0.1", "1.0"):
            assert len(raw["finetune"][frac]) == len(raw["probe"][frac]) == 2
    assert result["raw"]["from scratch"]["pretrain_seconds"] is None
    assert result["raw"]["DINO"]["pretrain_seconds"][0] > 0
    assert "| initialisation |" in (tmp_path / "results.md").read_text()
    sinkhorn = yaml.safe_load((tmp_path / "runs" / "dinov2_sinkhorn" / "config.yaml").read_text())
    assert sinkhorn["model"]["init_args"]["model_args"]["centering"] == "sinkhorn_knopp"


@pytest.mark.slow
def test_pretraining_seeds_give_one_run_each_and_the_read_outs_cycle_through_them(tmp_path, one_thread):
    from tessera.experiments.ssl_data_hunger import run

    result = run(tmp_path, quick=True, seeds=3, pretrain_seeds=2, methods=("DINO",))
    assert {p.name for p in (tmp_path / "runs").iterdir()} == {"dino", "dino_s1"}
    assert yaml.safe_load((tmp_path / "runs" / "dino_s1" / "config.yaml").read_text())["seed_everything"] == 1
    dino = result["raw"]["DINO"]
    assert len(dino["knn"]) == 2 and len(dino["pretrain_seconds"]) == 2 and len(dino["finetune"]["1.0"]) == 3


def test_bad_dataset_and_seed_counts_are_clear_errors(tmp_path):
    from tessera.experiments.ssl_data_hunger import run

    with pytest.raises(ValueError, match="data must be one of"):
        run(tmp_path, quick=True, data="cifar")
    with pytest.raises(ValueError, match="pretrain_seeds must be"):
        run(tmp_path, quick=True, pretrain_seeds=0)
    with pytest.raises(ValueError, match="train_limit applies to data='fashion' only"):
        run(tmp_path, quick=True, train_limit=100)


def test_fashion_dino_warms_its_teacher_temperature_up_and_the_digits_keep_theirs():
    from tessera.experiments.ssl_data_hunger import DATASETS, METHODS

    for name, (_, build, _) in METHODS.items():
        if name == "SimMIM":
            continue
        digits = build(ENCODER, teacher_temp=DATASETS["digits"].teacher_temp)["init_args"]
        fashion = build(ENCODER, teacher_temp=DATASETS["fashion"].teacher_temp)["init_args"]
        assert (digits["model_args"]["teacher_temp"], digits["warmup_teacher_temp_epochs"]) == (0.04, 0)
        assert (fashion["model_args"]["teacher_temp"], fashion["warmup_teacher_temp_epochs"]) == (0.07, 1)
        assert fashion["model_args"]["warmup_teacher_temp"] == 0.04


def test_a_finished_pretraining_is_reused_not_trained_again(tmp_path):
    from tessera.experiments.ssl_data_hunger import DATASETS, pretrain_method

    run_dir = tmp_path / "runs" / "dino_s2"
    run_dir.mkdir(parents=True)
    (run_dir / "pretrain.json").write_text(json.dumps({"seconds": 12.0}))
    assert pretrain_method(tmp_path, "DINO", 2, DATASETS["digits"]) == (run_dir, {"seconds": 12.0})
