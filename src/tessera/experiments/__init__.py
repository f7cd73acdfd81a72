"""`tessera reproduce NAME`: the notes' claims as one command each.

Each module of this package declares `EXPERIMENTS = {"name": function}`; the
function takes `(out_dir, quick, seeds)` and returns its results (also written
as `results.md` and `results.json` in `out_dir`, with a PNG where useful).
`quick` shrinks data, models and budgets to seconds, for the tests; the full
form is what the README's figures come from. Experiments sit above the
training engine: they train through `tessera fit`'s own code.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable

Experiment = Callable[..., dict]


def experiments() -> dict[str, Experiment]:
    """Every experiment, gathered from the `EXPERIMENTS` of this package's modules."""
    found: dict[str, Experiment] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        found.update(getattr(module, "EXPERIMENTS", {}))
    return found
