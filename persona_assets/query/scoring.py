"""The contract's score formula: weights from configuration and a plain reference implementation.

    score = w_city·C + w_brand·B + w_generic·G + w_category·K

C = city[tier] if a tier is given, else 1/3; B = brand[brand] if given, else 1;
G = generic[genericName] if given, else 1; K = category[most specific id] if
given, else 1; a missing key counts 0. :func:`score_persona` is the reference
the search backends are tested against: it scores one persona with nothing but
dictionary look-ups, in the same order of operations the embedded index uses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from persona_assets.query.request import SegmentQuery

__all__ = ["NO_TIER_C", "WEIGHTS_ENV", "ScoreWeights", "gender_passes", "score_persona"]

#: Environment variable holding ``city,brand,generic,category`` weights.
WEIGHTS_ENV = "PERSONA_SCORE_WEIGHTS"
#: C when no city tier is given.
NO_TIER_C = 1.0 / 3.0


@dataclass(frozen=True)
class ScoreWeights:
    """The four weights of the score formula (contract defaults)."""

    city: float = 0.15
    brand: float = 0.35
    generic: float = 0.20
    category: float = 0.30

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ScoreWeights:
        """Read ``PERSONA_SCORE_WEIGHTS="city,brand,generic,category"``; unset or empty = defaults.

        Each weight must be a finite number ≥ 0; anything else raises ``ValueError``
        naming the variable.
        """
        raw = (env.get(WEIGHTS_ENV) or "").strip()
        if not raw:
            return cls()
        parts = [part.strip() for part in raw.split(",")]
        if len(parts) != 4:
            raise ValueError(
                f"{WEIGHTS_ENV}={raw!r}: expected four comma-separated numbers "
                "(city,brand,generic,category), e.g. 0.15,0.35,0.20,0.30"
            )
        values: list[float] = []
        for name, part in zip(("city", "brand", "generic", "category"), parts, strict=True):
            try:
                value = float(part)
            except ValueError:
                raise ValueError(f"{WEIGHTS_ENV}={raw!r}: the {name} weight {part!r} is not a number") from None
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{WEIGHTS_ENV}={raw!r}: the {name} weight must be a finite number >= 0")
            values.append(value)
        return cls(*values)

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.city, self.brand, self.generic, self.category)


def gender_passes(persona_gender: str, query: SegmentQuery) -> bool:
    """True when the persona's gender label passes the query's gender filter (``None`` = no filter)."""
    return query.gender is None or persona_gender == query.gender


def _lookup(values: Mapping[str, Any] | None, key: str) -> float:
    if not values:
        return 0.0
    return float(values.get(key, 0.0))


def score_persona(
    persona: Mapping[str, Any], query: SegmentQuery, weights: ScoreWeights | None = None
) -> tuple[float, dict[str, float]]:
    """Score one normalised persona against a query (the gender filter is not applied here).

    ``persona`` is ``{"gender": str, "city": {...}, "brand": {...}, "generic": {...},
    "category": {...}}``; maps may be missing or empty. Returns ``(score, {"C", "B", "G", "K"})``.
    """
    w = weights or ScoreWeights()
    c = NO_TIER_C if query.city_tier is None else _lookup(persona.get("city"), query.city_tier)
    b = 1.0 if query.brand is None else _lookup(persona.get("brand"), query.brand)
    g = 1.0 if query.generic_name is None else _lookup(persona.get("generic"), query.generic_name)
    k = 1.0 if query.category_id is None else _lookup(persona.get("category"), query.category_id)
    score = w.city * c + w.brand * b + w.generic * g + w.category * k
    return score, {"C": c, "B": b, "G": g, "K": k}
