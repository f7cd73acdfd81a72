"""The `tessera` command. Subcommands come from the modules of this package.

    tessera info [MODEL ...] [--kind KIND]    parameters and MACs of every kind
    tessera fit | validate | test | predict   training engine (Lightning CLI conventions)
    tessera sample ...                        diffusion sampling to a PNG grid
    tessera bench ...                         speed against the peers

Each module of `tessera.cli` declares `COMMANDS = {"name": function}` (the
function takes argv and returns an exit code) and keeps heavy imports inside
the functions, so `tessera info` does not pay for importing Lightning. Adding a
command means adding a module here; nothing else is edited.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
from typing import Callable

Command = Callable[[list[str]], int]


def commands() -> dict[str, Command]:
    """Every subcommand, gathered from the `COMMANDS` of this package's modules."""
    found: dict[str, Command] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for name, fn in getattr(module, "COMMANDS", {}).items():
            if name in found:
                raise RuntimeError(f"tessera command {name!r} is declared twice (second in {module.__name__})")
            found[name] = fn
    return found


def usage(table: dict[str, Command]) -> str:
    """The help text: this module's docstring and one line per command."""
    lines = [f"  {name:10s} {(fn.__doc__ or '').strip().splitlines()[0] if fn.__doc__ else ''}" for name, fn in sorted(table.items())]
    return f"{__doc__}\ncommands:\n" + "\n".join(lines)


def configure_allocator(choice: str) -> bool:
    """Apply the `TESSERA_ALLOCATOR` choice to this process: "tuned" (default) or "system"; True if tuned.

    The commands run whole jobs, where glibc's default of unmapping large freed
    blocks costs every training step its page faults again (`tessera.hardware.tune_allocator`).
    """
    from tessera.hardware import use_allocator

    try:
        return use_allocator(choice)
    except ValueError:
        raise SystemExit(f"tessera: TESSERA_ALLOCATOR must be 'tuned' or 'system', got {choice!r}") from None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tessera` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    table = commands()
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(table))
        return 0
    command, rest = argv[0], argv[1:]
    if command not in table:
        print(f"tessera: unknown command {command!r}; choose from {', '.join(sorted(table))}", file=sys.stderr)
        return 2
    configure_allocator(os.environ.get("TESSERA_ALLOCATOR", "tuned"))
    try:
        return int(table[command](rest) or 0)
    except ValueError as err:  # user-facing errors: one clear line, no traceback
        print(f"tessera {command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
