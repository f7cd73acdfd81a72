"""The prepared GPU check runs here on CPU in its quick form; the library stays device-agnostic."""

import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_library_never_moves_tensors_to_a_named_device():
    offenders = []
    for path in sorted((ROOT / "src" / "tessera").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\.cuda\(|device=['\"]cuda", line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "library code must follow its inputs' device:\n" + "\n".join(offenders)


def test_compiled_vit_and_swin_keep_one_graph_across_resolutions(one_thread):
    import gpu_check

    rows = {r["model"]: r for r in gpu_check.compile_rows(torch.device("cpu"), "quick", "eager")}
    assert rows["vit_b16"]["recompiled per resolution"] == "no"
    assert rows["swin_t"]["recompiled per resolution"] == "no" and rows["swin_t"]["graphs after 288 px"] == 1


@pytest.mark.slow
def test_quick_gpu_check_runs_every_section_on_cpu(one_thread, monkeypatch, capsys):
    import gpu_check

    monkeypatch.setenv("TESSERA_BENCH_RECORD", "0")
    assert gpu_check.main(["--quick", "--device", "cpu", "--skip", "compile"]) == 0  # compile: the test above
    out = capsys.readouterr().out
    for expected in ("swin_t", "vit_b16", "unet_cifar10", "inference vs peer", "efficient_attention",
                     "channels_last"):
        assert expected in out
