"""`tessera bench-all`: every benchmark script of benchmarks/, one after another."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

# Each script and the arguments of its --quick smoke form (a check that it runs, not a measurement).
SCRIPTS = {
    "bench_swin.py": ["--iters", "1"],
    "bench_vit.py": ["--quick"],
    "bench_diffusion.py": ["--quick"],
    "bench_engine.py": ["--steps", "2", "--warmup", "1"],
    "bench_train.py": ["--quick"],
    "bench_dense.py": ["--quick"],
    "bench_ldm.py": ["--quick"],
    "bench_tokenizers.py": ["speed", "--quick"],
}
# Arguments a script needs in the full run too (bench_tokenizers.py has subcommands: speed, eval).
FULL = {"bench_tokenizers.py": ["speed"]}


def bench_all(argv: list[str]) -> int:
    """run every benchmark of benchmarks/ (results appended to benchmarks/results.jsonl)"""
    parser = argparse.ArgumentParser(prog="tessera bench-all", description=bench_all.__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke runs: each script's smallest form, not recorded")
    parser.add_argument("--dir", default="benchmarks", help="the benchmarks folder of a tessera checkout")
    args = parser.parse_args(argv)
    folder = Path(args.dir)
    if not (folder / "common.py").is_file():
        raise ValueError(f"no benchmarks in {str(folder)!r}: run from a tessera checkout or pass --dir PATH/benchmarks")
    env = None
    if args.quick:
        import os

        env = {**os.environ, "TESSERA_BENCH_RECORD": "0"}
    failed = []
    for script in sorted(p.name for p in folder.glob("bench_*.py")):
        extra = SCRIPTS.get(script, []) if args.quick else FULL.get(script, [])
        print(f"== {script} {' '.join(extra)}", flush=True)
        if subprocess.run([sys.executable, str(folder / script), *extra], env=env).returncode != 0:
            failed.append(script)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


COMMANDS = {"bench-all": bench_all}
