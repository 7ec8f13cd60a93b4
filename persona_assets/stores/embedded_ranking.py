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

The candidates' best ``k`` come from one compiled pass (:func:`best_candidates`): the asked keys'
postings (rows ascending) are merged, each candidate is scored as it is met and kept in a bounded heap.
A dense query (a level-1 category held by most personas, with a tier) used to fill and scan vectors
over every persona and select from a million scores: 15–25 ms at 1M, now a few.

Everything here works on the index's arrays alone, so tests call it directly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np

__all__ = ["AskedPostings", "TierOrder", "best_candidates", "best_outsiders", "in_sorted", "kth_largest", "top_rows"]


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


@dataclass(frozen=True)
class AskedPostings:
    """What a query asks of the brand, generic and category dimensions, in the formula's order: per
    dimension, the asked key's postings ``(rows ascending, values)``, or None when the query gives no key."""

    brand: tuple[np.ndarray, np.ndarray] | None
    generic: tuple[np.ndarray, np.ndarray] | None
    category: tuple[np.ndarray, np.ndarray] | None

    @property
    def in_order(self) -> tuple[tuple[np.ndarray, np.ndarray] | None, ...]:
        """Brand, generic, category: the formula's order."""
        return (self.brand, self.generic, self.category)

    @property
    def given(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return [p for p in self.in_order if p is not None]

    def holds(self, rows: np.ndarray) -> np.ndarray:
        """A mask: which of ``rows`` hold a posting of a key asked for (the candidates)."""
        held = np.zeros(rows.size, dtype=bool)
        for posting_rows, _ in self.given:
            held |= in_sorted(rows, posting_rows)
        return held


def best_candidates(
    asked: AskedPostings,
    weights: tuple[float, float, float, float],
    city: np.ndarray | float,
    passing: np.ndarray | None,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best candidates (rows, scores) in contract order (score descending, row ascending).

    ``weights``: (city, brand, generic, category); ``city``: each row's value of the tier asked for, or
    the one constant when no tier is asked; ``passing``: the rows allowed (None = all). Each score is
    ``w_c·c + w_b·b + w_g·g + w_k·k`` added left to right, a dimension not asked counting 1 and an asked
    key a candidate lacks 0, so the floats are those of ``score_persona``.
    """
    parts = []
    for posting in asked.in_order:
        parts += posting if posting is not None else (_NO_ROWS, _NO_VALUES)
    flags = np.array([posting is not None for posting in asked.in_order])
    dense = city if isinstance(city, np.ndarray) else _NO_VALUES
    constant = 0.0 if isinstance(city, np.ndarray) else float(city)
    rows, scores = _best_candidates(
        *parts,
        flags,
        np.array(weights, dtype=np.float64),
        dense,
        constant,
        _NO_MASK if passing is None else passing,
        max(k, 0),
    )
    order = np.lexsort((rows, -scores))
    return rows[order], scores[order]


_NO_ROWS = np.empty(0, dtype=np.int32)
_NO_VALUES = np.empty(0, dtype=np.float64)
_NO_MASK = np.empty(0, dtype=np.bool_)


@numba.njit(nogil=True, cache=True)
def _best_candidates(
    brand_rows: np.ndarray,
    brand_values: np.ndarray,
    generic_rows: np.ndarray,
    generic_values: np.ndarray,
    category_rows: np.ndarray,
    category_values: np.ndarray,
    asked: np.ndarray,
    weights: np.ndarray,
    city: np.ndarray,
    city_constant: float,
    passing: np.ndarray,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled; checked through best_candidates
    """Merge the three ascending row lists; score each row met; keep the best ``k`` in a heap whose root
    is the worst kept (lowest score, then highest row). Rows come in ascending order, so a later row
    that only ties the root is worse than it: only a strictly higher score enters a full heap."""
    heap_scores = np.empty(k, dtype=np.float64)
    heap_rows = np.empty(k, dtype=np.int64)
    size = 0
    nb, ng, nk = brand_rows.size, generic_rows.size, category_rows.size
    ib = ig = ik = 0
    end = np.iinfo(np.int64).max
    while k > 0:
        row = end
        if ib < nb and brand_rows[ib] < row:
            row = brand_rows[ib]
        if ig < ng and generic_rows[ig] < row:
            row = generic_rows[ig]
        if ik < nk and category_rows[ik] < row:
            row = category_rows[ik]
        if row == end:
            break
        b = 0.0 if asked[0] else 1.0
        if ib < nb and brand_rows[ib] == row:
            b = brand_values[ib]
            ib += 1
        g = 0.0 if asked[1] else 1.0
        if ig < ng and generic_rows[ig] == row:
            g = generic_values[ig]
            ig += 1
        kv = 0.0 if asked[2] else 1.0
        if ik < nk and category_rows[ik] == row:
            kv = category_values[ik]
            ik += 1
        c = city[row] if city.size else city_constant
        score = weights[0] * c + weights[1] * b
        score = score + weights[2] * g
        score = score + weights[3] * kv
        if size == k and score <= heap_scores[0]:
            continue  # the common case once the heap is full: no better than the worst kept
        if passing.size and not passing[row]:
            continue
        size = _keep(heap_scores, heap_rows, size, score, row)
    return heap_rows[:size].copy(), heap_scores[:size].copy()


@numba.njit(inline="always")
def _after(score_a: float, row_a: int, score_b: float, row_b: int) -> bool:  # pragma: no cover - compiled
    """Whether (score_a, row_a) comes after (score_b, row_b) in contract order."""
    return score_a < score_b or (score_a == score_b and row_a > row_b)


@numba.njit(nogil=True, cache=True)
def _keep(
    heap_scores: np.ndarray, heap_rows: np.ndarray, size: int, score: float, row: int
) -> int:  # pragma: no cover - compiled; checked through best_candidates
    """Put (score, row) into the heap of the best ``heap_scores.size`` whose root is the worst kept: pushed
    while there is room, else in place of the root (the caller knows it is better); the new size."""
    if size < heap_scores.size:
        at = size
        size += 1
        while at > 0 and _after(score, row, heap_scores[(at - 1) // 2], heap_rows[(at - 1) // 2]):
            parent = (at - 1) // 2
            heap_scores[at], heap_rows[at] = heap_scores[parent], heap_rows[parent]
            at = parent
    else:
        at = 0
        while 2 * at + 1 < size:
            child = 2 * at + 1
            if child + 1 < size and _after(
                heap_scores[child + 1], heap_rows[child + 1], heap_scores[child], heap_rows[child]
            ):
                child += 1
            if not _after(heap_scores[child], heap_rows[child], score, row):
                break
            heap_scores[at], heap_rows[at] = heap_scores[child], heap_rows[child]
            at = child
    heap_scores[at], heap_rows[at] = score, row
    return size
