"""benchmarks/common.py: the GEMM peak re-measured between timed rounds (`PeakProbe`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from common import PeakProbe, best_times_interleaved  # noqa: E402


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
