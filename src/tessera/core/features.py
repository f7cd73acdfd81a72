"""Which intermediate outputs an encoder returns: the `indices` rule shared by every backbone."""

from __future__ import annotations


def take_indices(count: int, indices: int | list[int] | tuple[int, ...] | None, what: str = "outputs") -> list[int]:
    """Indices in [0, count) from None (all), an int n (the last n) or a list (negative counts from the end).

    `what` names the outputs in errors ("blocks", "stages").

    Raises:
        ValueError: naming the valid range when an index or a count does not fit.
    """
    if indices is None:
        return list(range(count))
    if isinstance(indices, int):
        if not 0 < indices <= count:
            raise ValueError(f"indices as an int is a count of the last {what} in [1, {count}], got {indices}")
        return list(range(count - indices, count))
    bad = [i for i in indices if not -count <= i < count]
    if bad or not indices:
        raise ValueError(f"indices must be in [-{count}, {count - 1}] (out of range for {count} {what}), got {list(indices)}")
    return [i % count for i in indices]
