"""benchmarks/common.py: the GEMM peak re-measured between timed rounds (`PeakProbe`), over every linear kernel;
the allocator option."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import pytest  # noqa: E402
import torch  # noqa: E402
from common import (  # noqa: E402
    PeakProbe,
    add_allocator_argument,
    apply_allocator,
    best_times_interleaved,
    fastest_in_turns,
    linear_kernels,
)


def test_peak_probe_keeps_the_floor_until_a_round_beats_it_and_runs_between_rounds():
    probe = PeakProbe(["fp32"], ((32, 64, 48),))
    assert probe.peaks({"fp32": 5.0}) == {"fp32": 5.0}  # nothing timed yet
    calls = []
    best = best_times_interleaved({"noop": lambda: None}, rounds=3, between_rounds=lambda: (calls.append(1), probe.round()))
    assert len(calls) == 3 and set(best) == {"noop"}
    measured = probe.peaks({"fp32": 0.0})["fp32"]
    assert measured > 0.0
    assert probe.peaks({"fp32": 1e9}) == {"fp32": 1e9}  # never below the up-front peak
    assert probe.peaks({}) == {"fp32": measured}


def test_the_peak_covers_every_linear_kernel_and_each_computes_the_same_product():
    if not torch.backends.mkldnn.is_available():
        pytest.skip("torch built without oneDNN")
    torch.manual_seed(0)
    a, w = torch.randn(40, 24), torch.randn(16, 24)
    kernels = linear_kernels(a, w)
    assert set(kernels) == {"aten", "onednn", "onednn packed"}  # the packed weight is what the models run
    for fn in kernels.values():
        torch.testing.assert_close(fn(), a @ w.T, atol=1e-5, rtol=1e-5)
    assert {name.split(" ", 2)[2] for name in PeakProbe(["fp32"], ((8, 16, 8),)).cases} == set(kernels)


@pytest.mark.parametrize("argv, tuned", [([], False), (["--allocator", "system"], False), (["--allocator", "tuned"], True)])
def test_the_allocator_option_applies_the_setting_only_when_asked(monkeypatch, argv, tuned):
    import argparse

    import tessera.hardware as hardware

    applied = []
    monkeypatch.setattr(hardware, "tune_allocator", lambda enable=True: applied.append(enable) or True)
    parser = argparse.ArgumentParser()
    add_allocator_argument(parser)
    apply_allocator(parser.parse_args(argv).allocator)
    assert applied == ([True] if tuned else [])
    with pytest.raises(SystemExit):
        parser.parse_args(["--allocator", "jemalloc"])


def test_benchmark_records_say_which_allocator_ran(monkeypatch):
    import common

    import tessera.hardware as hardware

    monkeypatch.setattr(hardware, "onednn_kernels", lambda: {})  # no child process
    assert common.machine()["allocator"] == "system"
    monkeypatch.setattr(hardware, "_allocator_tuned", True)
    assert common.machine()["allocator"] == "tuned"


def test_fastest_in_turns_alternates_the_order_and_keeps_each_ones_best_time_and_last_output(monkeypatch):
    import common

    clock = iter(range(100))
    monkeypatch.setattr(common.time, "perf_counter", lambda: float(next(clock)))
    calls = []
    durations = {"a": iter([5, 1, 3]), "b": iter([2, 4, 6])}

    def make(name):
        def fn():
            calls.append(name)
            for _ in range(next(durations[name]) - 1):  # each extra clock read is one more second
                next(clock)
            return f"{name}{len(calls)}"
        return fn

    best = fastest_in_turns({"a": make("a"), "b": make("b")}, repeats=3)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert best == {"a": (1.0, "a5"), "b": (2.0, "b6")}
