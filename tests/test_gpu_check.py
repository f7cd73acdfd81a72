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



def test_throughput_rows_add_timm_where_it_imports_compare_with_the_fastest_peer_and_survive_no_diffusers(
        monkeypatch, tmp_path):
    import types

    import gpu_check
    import tessera.diffusion.convert as convert

    made = []

    def create_model(name, pretrained, num_classes, **kwargs):  # a stand-in timm (the real one needs torchvision)
        assert not pretrained and num_classes == 1000
        made.append(name)
        return torch.nn.Linear(2, 2)

    def no_diffusers(model):
        raise ImportError("No module named 'diffusers'")

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model))
    monkeypatch.setattr(convert, "to_diffusers", no_diffusers)
    # seconds per call in the order timed: per model tessera, transformers, timm, each inference then training
    seconds = iter([1.0, 1.0, 2.0, 4.0, 0.5, 8.0] * 2 + [1.0, 1.0])
    monkeypatch.setattr(gpu_check, "best_time", lambda fn, warmup=2, iters=5, device=None: next(seconds))

    rows = gpu_check.throughput_rows(torch.device("cpu"), 2, 1, "quick", tmp_path)
    assert made == ["swin_tiny_patch4_window7_224", "vit_base_patch16_224"]
    by = {(r["model"], r["library"]): r for r in rows}
    assert list(by) == [(m, lib) for m in ("swin_t", "vit_b16") for lib in ("tessera", "transformers", "timm")] + [
        ("unet_cifar10", "tessera")]
    for model in ("swin_t", "vit_b16"):  # timm is the fastest peer in inference, transformers in training
        assert by[(model, "tessera")]["inference vs peer"] == "0.50x"
        assert by[(model, "tessera")]["training vs peer"] == "4.00x"
    assert "inference vs peer" not in by[("unet_cifar10", "tessera")]  # no peer, no ratio
