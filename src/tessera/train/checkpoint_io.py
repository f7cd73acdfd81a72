"""Checkpoint files that are never half-written: write to a temporary name, fsync, rename."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

log = logging.getLogger(__name__)


def atomic_save(path: str | Path, write: Callable[[Any], None]) -> None:
    """Call `write(file_object)` on `path`'s temporary sibling, fsync it, then rename it over `path`.

    `os.replace` is atomic on POSIX and Windows: a reader (or a resumed run)
    sees the old file or the new one, never a mix, even if the process is
    killed during the write. On an exception the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    remove_stale_temporaries(path)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # some filesystems do not fsync directories
        pass


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete `path`'s temporary siblings left by writers that were killed mid-save.

    A temporary is `.NAME.tmp-<pid>`; it is stale when its process no longer
    runs (a live one may still be writing it). Returns the removed files.
    """
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
        log.info("removed %s, left by a save that was interrupted", tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with `atomic_save`: a kill during a save keeps the previous checkpoint."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Save `checkpoint` to `path` through a temporary file and a rename."""
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        if "://" in str(path):  # remote filesystems: fall back to Lightning's own writer
            super().save_checkpoint(checkpoint, path)
            return
        atomic_save(path, lambda f: torch.save(checkpoint, f))
