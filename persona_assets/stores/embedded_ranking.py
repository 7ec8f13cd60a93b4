"""Top-k selection for the embedded index without scoring every persona.

A query names at most one key per dimension. The personas holding a posting of the brand, generic or
category asked for are the *candidates* (often a small part of the index, at most all of it); every
other persona (an *outsider*) scores 0 in those dimensions, so its score depends on its city value alone — or is the same
constant for all outsiders when no tier is asked for. Outsiders are therefore ranked ahead of time: in
row order (no tier), or by the tier's value descending with rows ascending within a value
(:class:`TierOrder`, built once per tier and index). The page is then the best of

* the candidates, each scored exactly, and
* the first ``k`` outsiders in that order, plus whatever else ties with the k-th of them,

which is exact: scores never rise along the outsider order (weights and values are >= 0 and IEEE
addition is monotone), so no outsider further down can beat or tie the ones taken, except inside the
k-th one's block of equal scores — settled below, including two different city values whose scores
round to the same float. The cost grows with the candidates and ``k``, not with the index.

Everything here is plain NumPy over the index's arrays, so tests call it directly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["TierOrder", "best_outsiders", "in_sorted", "kth_largest", "top_rows"]


@dataclass(frozen=True)
class TierOrder:
    """All rows by one tier's city value descending, rows ascending within a value."""

    rows: np.ndarray
    values: np.ndarray  # the city value at each position: non-increasing
    dense: np.ndarray  # the city value of each row (0 where a persona has none)

    @classmethod
    def of(cls, city_values: np.ndarray) -> TierOrder:
        """From the dense per-row value of the tier."""
        order = np.argsort(-city_values, kind="stable").astype(np.int32)
        return cls(rows=order, values=city_values[order], dense=city_values)


def in_sorted(rows: np.ndarray, sorted_rows: np.ndarray) -> np.ndarray:
    """A mask: which of ``rows`` occur in the ascending ``sorted_rows``."""
    if sorted_rows.size == 0:
        return np.zeros(rows.size, dtype=bool)
    at = np.searchsorted(sorted_rows, rows)
    return sorted_rows[np.minimum(at, sorted_rows.size - 1)] == rows


def _first_accepted(order: np.ndarray, accept: Callable[[np.ndarray], np.ndarray], k: int) -> np.ndarray:
    """Positions in ``order`` of its first ``k`` accepted rows (fewer when the order runs out)."""
    found: list[np.ndarray] = []
    count, start, step = 0, 0, max(4096, 2 * k)
    while count < k and start < order.size:
        chunk = order[start : start + step]
        positions = np.flatnonzero(accept(chunk)) + start
        found.append(positions)
        count += positions.size
        start += step
        step *= 2
    return np.concatenate(found)[:k] if found else np.empty(0, dtype=np.int64)


def best_outsiders(
    order: np.ndarray,
    accept: Callable[[np.ndarray], np.ndarray],
    k: int,
    tier: TierOrder | None = None,
    score_of_value: Callable[[float], float] | None = None,
) -> np.ndarray:
    """Rows of the ``k`` best accepted outsiders (contract order), or all of them when fewer.

    ``order`` is ``tier.rows`` when a tier is asked for (``score_of_value`` maps a city value to the
    outsider's score), else the rows ascending (all outsiders score the same).
    """
    positions = _first_accepted(order, accept, k)
    if tier is None or score_of_value is None or positions.size < k:
        return order[positions]
    last = int(positions[-1])
    kth = score_of_value(float(tier.values[last]))
    # The block of positions whose score equals the k-th's (scores are non-increasing along the order).
    lo, hi = 0, last
    while lo < hi:
        mid = (lo + hi) // 2
        if score_of_value(float(tier.values[mid])) > kth:
            lo = mid + 1
        else:
            hi = mid
    block_start = lo
    lo, hi = last + 1, order.size
    while lo < hi:
        mid = (lo + hi) // 2
        if score_of_value(float(tier.values[mid])) < kth:
            hi = mid
        else:
            lo = mid + 1
    block_end = lo
    if tier.values[block_start] == tier.values[block_end - 1]:
        return order[positions]  # one city value: rows ascend within the block, the first ones are the lowest
    # Different values whose scores round to the same float: the lowest rows of the whole block win.
    above = positions[positions < block_start]
    block_rows = order[block_start:block_end]
    block_rows = np.sort(block_rows[accept(block_rows)])
    return np.concatenate((order[above], block_rows[: k - above.size]))


def kth_largest(values: np.ndarray, k: int) -> float:
    """The k-th largest value (1-based), robust to large blocks of equal values.

    ``np.partition`` slows down by an order of magnitude when a large block of equal
    scores sits at one end (common here: most personas share the base score, or a
    large share have ``city[tier] == 1``). This is a quickselect with a three-way
    split (above / equal / below the pivot), vectorised with numpy, so a block of
    equal values is settled in one step. The pivot is read from a strided sample at
    the rank expected to leave a little more than ``k`` values above it.
    """
    current = values
    for _ in range(32):
        n = current.size
        if n <= 4096:
            break
        sample = np.sort(current[:: max(1, n // 1024)])
        rank = min(sample.size - 1, int(sample.size * 1.5 * k / n) + 2)  # from the top
        pivot = sample[sample.size - 1 - rank]
        above = current > pivot
        n_above = int(np.count_nonzero(above))
        if n_above >= k:
            current = current[above]
            continue
        n_equal = int(np.count_nonzero(current == pivot))
        if n_above + n_equal >= k:
            return float(pivot)
        k -= n_above + n_equal
        current = current[current < pivot]
    return float(np.partition(current, current.size - k)[current.size - k])


def top_rows(rows: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` best ``rows`` by score descending, then row ascending (rows are distinct)."""
    if rows.size > 4 * k:
        kept = scores >= kth_largest(scores, k)
        rows, scores = rows[kept], scores[kept]
    return rows[np.lexsort((rows, -scores))][:k]
