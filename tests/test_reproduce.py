"""`tessera reproduce`: the experiments run end to end in their quick form and write their tables."""

import json
from pathlib import Path

import pytest

from tessera.cli import main
from tessera.experiments import experiments
from tessera.experiments.scaling import slope


def test_every_issue_experiment_is_registered():
    assert {"swin-ablation", "scaling", "deit-distillation", "swinv2-transfer", "sampled-global-attention"} <= set(experiments())


def test_slope_of_a_power_law():
    xs = [1.0, 2.0, 4.0, 8.0]
    assert slope(xs, [3 * x**2 for x in xs]) == pytest.approx(2.0)
    assert slope(xs, [5 * x for x in xs]) == pytest.approx(1.0)


@pytest.mark.slow
def test_scaling_quick_writes_table_json_and_plot(tmp_path):
    assert main(["reproduce", "scaling", "--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert len(result["rows"]) == 6
    for series in result["series"].values():
        # MACs of both tiny models grow about linearly with pixels at these sizes (ViT's N^2 term is small)
        assert 0.8 < series["slope_macs"] < 1.3
    assert (tmp_path / "scaling.png").read_bytes()[:4] == b"\x89PNG"
    assert "| model | size |" in (tmp_path / "results.md").read_text()


@pytest.mark.slow
def test_swinv2_transfer_quick_trains_both_and_evaluates_at_the_larger_window(tmp_path):
    assert main(["reproduce", "swinv2-transfer", "--quick", "--seeds", "1", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    for label in ("Swin-V1", "Swin-V2"):
        raw = result["raw"][label]
        assert 0.0 <= raw["native"][0] <= 1.0 and 0.0 <= raw["moved"][0] <= 1.0
    assert isinstance(result["claim_holds"], bool)


def test_transfer_evaluation_rebuilds_the_data_of_a_config(tmp_path, monkeypatch):
    """The Fashion-MNIST config's augment arrives as a dict; evaluation must build it (a bug of the first full run)."""
    from tessera.experiments import swinv2_transfer
    from tessera.experiments.common import fashion_data

    seen = {}

    class FakeIDX:
        def __init__(self, **kw):
            seen.update(kw)
            raise RuntimeError("stop here")

    monkeypatch.setattr("tessera.data.idx.IDXDataModule", FakeIDX)
    with pytest.raises(RuntimeError, match="stop here"):
        swinv2_transfer.evaluate(tmp_path, "swinv2_tiny_window8_256", {}, fashion_data(32, 64, 100), 64)
    from tessera.data import Augment

    assert isinstance(seen["augment"], Augment) and seen["img_size"] == 32  # built at the training size


def test_bad_arguments_are_clear_errors(capsys):
    assert main(["reproduce", "scaling", "--seeds", "0"]) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err
    assert main(["reproduce", "scaling", "--epochs", "2"]) == 2
    assert "takes no --epochs" in capsys.readouterr().err


_PEAK_CHILD = """
import resource, torch
from tessera.experiments.memory import peak_rss_growth_mib
warm = torch.ones(64 << 18); del warm  # a 64 MiB peak before the call, as building a model makes
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
mib = peak_rss_growth_mib(lambda: torch.ones(32 << 18).sum())  # 32 MiB live inside the call
print(mib, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_peak_memory_probe_sees_a_call_below_the_earlier_high_water_mark():
    """The scaling table's memory column: a 32 MiB tensor inside the call is counted (ru_maxrss saw 0)."""
    import subprocess
    import sys

    from tessera.experiments.memory import child_env

    out = subprocess.run([sys.executable, "-c", _PEAK_CHILD], env=child_env(), capture_output=True, text=True, check=True)
    probe, maxrss_growth = map(float, out.stdout.split())
    assert 30 <= probe <= 40
    assert maxrss_growth < 1  # why the old probe read 0


def test_a_finished_run_is_not_trained_again_but_a_changed_one_is(tmp_path, monkeypatch):
    import tessera.train.cli as train_cli
    from tessera.experiments.common import digits_data, fit_run
    from tessera.experiments.swin_ablation import QUICK_BASE, task

    calls = []
    real = train_cli.lightning_main
    monkeypatch.setattr(train_cli, "lightning_main", lambda argv: calls.append(argv) or real(argv))
    first = fit_run(tmp_path / "r", task(QUICK_BASE), digits_data(16), epochs=1, seed=0, limit_batches=2)
    again = fit_run(tmp_path / "r", task(QUICK_BASE), digits_data(16), epochs=1, seed=0, limit_batches=2)
    assert len(calls) == 1 and again == first
    fit_run(tmp_path / "r", task(QUICK_BASE), digits_data(16), epochs=1, seed=1, limit_batches=2)
    assert len(calls) == 2


def test_a_run_of_another_experiment_with_the_same_config_is_taken_not_retrained(tmp_path, monkeypatch):
    import tessera.train.cli as train_cli
    from tessera.experiments.common import digits_data, fit_run
    from tessera.experiments.swin_ablation import QUICK_BASE, task

    calls = []
    real = train_cli.lightning_main
    monkeypatch.setattr(train_cli, "lightning_main", lambda argv: calls.append(argv) or real(argv))
    first = fit_run(tmp_path / "ablation" / "a", task(QUICK_BASE), digits_data(16), epochs=1, seed=0, limit_batches=2)
    same = fit_run(tmp_path / "global" / "b", task(QUICK_BASE), digits_data(16), epochs=1, seed=0, limit_batches=2,
                   same_as=tmp_path / "ablation" / "a")
    assert len(calls) == 1 and same == first and (tmp_path / "global" / "b" / "finished.json").is_file()
    fit_run(tmp_path / "global" / "c", task(QUICK_BASE), digits_data(16), epochs=1, seed=1, limit_batches=2,
            same_as=tmp_path / "ablation" / "a")  # another seed: another run, trained
    assert len(calls) == 2


def test_effect_is_measured_against_the_seeds_noise():
    from tessera.experiments.common import effect

    assert effect([0.80, 0.81, 0.82], [0.70, 0.71, 0.72]) == "+10.0 points (12.2 s.e.)"
    assert effect([0.80, 0.70, 0.75], [0.74, 0.72, 0.76]).endswith("s.e., within noise)")
    assert effect([0.8], [0.7]) == "+10.0 points (1 seed: noise unknown)"


@pytest.mark.slow
def test_quick_claim_tables_write_every_row_and_the_effect_against_noise(tmp_path, one_thread):
    from tessera.experiments import experiments

    table = experiments()
    ablation = table["swin-ablation"](tmp_path / "swin-ablation", quick=True, seeds=1)
    assert [r["variant"] for r in ablation["rows"]][:2] == ["w/o shifting", "shifted windows"]
    assert set(ablation["effects"]) == set(ablation["directions"]) and "noise unknown" in ablation["effects"]["rel. > abs."]
    deit = table["deit-distillation"](tmp_path / "deit-distillation", quick=True, seeds=1)
    assert len(deit["rows"]) == 4 and "noise unknown" in (tmp_path / "deit-distillation" / "results.md").read_text()
    teacher = tmp_path / "deit-distillation" / "runs" / "teacher"
    assert main(["reproduce", "deit-distillation", "--quick", "--seeds", "1", "--teacher", str(teacher),
                 "--out", str(tmp_path / "deit-given-teacher")]) == 0
    given = json.loads((tmp_path / "deit-given-teacher" / "results.json").read_text())
    assert given["rows"][0]["model"] == f"teacher {teacher}"
    no_token = json.loads((tmp_path / "deit-given-teacher" / "runs" / "no_distillation_token_s0" / "finished.json").read_text())
    assert no_token["same_as"].endswith("deit-distillation/runs/no_distillation_token_s0")  # not trained again
    glob = table["sampled-global-attention"](tmp_path / "global", quick=True, seeds=1)
    assert [r["model"] for r in glob["rows"]][0] == "Swin (windows only)" and len(glob["rows"]) == 4
