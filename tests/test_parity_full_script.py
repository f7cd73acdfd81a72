"""benchmarks/parity_full.py (full-size converter parity, run on demand): its case list, `--only`
parsing and the comparison it reports. The full-size runs themselves are not part of the suite."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "parity_full.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("parity_full", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_case_runs_by_default_in_order(script):
    assert script.parse_args([]).cases == list(script.CASES)
    assert {"sd_vae", "vq_f4", "sd_unet", "dpt_depth", "dpt_seg", "upernet", "dinov2"} <= set(script.CASES)


def test_only_selects_cases_in_the_scripts_order(script):
    assert script.parse_args(["--only", "dinov2"]).cases == ["dinov2"]
    assert script.parse_args(["--only", "dinov2", "--only", "sd_vae"]).cases == ["sd_vae", "dinov2"]


@pytest.mark.parametrize("argv", [["--only", "sd_unet15"], ["--threads", "0"]])
def test_bad_arguments_exit_with_a_usage_error(script, argv, capsys):
    with pytest.raises(SystemExit) as e:
        script.parse_args(argv)
    assert e.value.code == 2 and ("sd_unet15" in capsys.readouterr().err or argv[0] == "--threads")


def test_compare_reports_the_gap_relative_to_the_output_scale(script):
    ref = torch.tensor([[10.0, -20.0]])
    row = script.compare("c", "o", ref + torch.tensor([[0.0, 1e-3]]), ref, 1.0)
    assert float(row["max_abs_diff"]) == pytest.approx(1e-3, rel=1e-2) and float(row["max_abs_ref"]) == 20
    assert float(row["rel"]) == pytest.approx(5e-5, rel=1e-2) and row["ok"]
    assert not script.compare("c", "o", ref + 1e-2, ref, 1.0)["ok"]
    with pytest.raises(AssertionError, match="shape"):
        script.compare("c", "o", ref[:, :1], ref, 1.0)
