"""Parse and validate a segment request (contract sections 4 and 6, "Query").

The request uses the legacy field names (``gender``, ``cityTier``, ``brand``,
``genericName``, ``level1Cat``..``level3Cat``, ``size``, ``from``). Every rule is
checked here, once, so the HTTP endpoint, the CLI and the tests share one
validator. A bad request raises :class:`InvalidRequest` naming the field; nothing
is ever silently defaulted.

Choices where the contract leaves room (also in ``docs/``):

* string values are trimmed before they are read (``" Men "`` is ``men``,
  ``" 20 "`` is 20); a string holding an integer is ASCII ``-?[0-9]+`` after
  trimming (``"+5"``, ``"1e3"``, ``"٣"`` are errors);
* ``cityTier`` follows the contract's grammar literally: optional ``tier``, then
  an optional single space, ``-`` or ``_``, then 1-3 (so ``"_2"`` is Tier2);
* a ``levelNCat`` of ``-1`` means "not given"; any other integer, negative or
  not, is an id (one that is not in the hierarchy scores 0);
* every ``levelNCat`` given is validated even when a more specific level wins.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_SIZE",
    "FIELDS",
    "MAX_SIZE",
    "MAX_WINDOW",
    "InvalidRequest",
    "SegmentQuery",
    "given_fields",
    "json_type_name",
    "parse_city_tier",
    "parse_gender",
    "parse_int",
    "parse_segment_request",
]

DEFAULT_SIZE = 20
MAX_SIZE = 1000
#: ``from + size`` at most: OpenSearch's ``max_result_window``; whole audiences are for exports.
MAX_WINDOW = 10_000

#: The request fields, in the legacy spelling.
FIELDS = (
    "gender",
    "cityTier",
    "brand",
    "genericName",
    "level1Cat",
    "level2Cat",
    "level3Cat",
    "size",
    "from",
)

_GENDERS = {
    "men": "men",
    "male": "men",
    "m": "men",
    "women": "women",
    "female": "women",
    "f": "women",
    "unisex": None,
    "any": None,
}
_TIER_RE = re.compile(r"(?:tier)?[ _-]?([1-3])", re.IGNORECASE)
_INT_RE = re.compile(r"-?[0-9]+")


class InvalidRequest(ValueError):
    """A segment request that breaks the contract; ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class SegmentQuery:
    """A validated segment request.

    ``gender`` is ``'men'``/``'women'`` or ``None`` (no filter); ``city_tier`` is
    ``'Tier1'``/``'Tier2'``/``'Tier3'`` or ``None``; ``brand`` and ``generic_name``
    are trimmed and lower-cased; ``category_id`` is the id at the most specific
    level given (``category_level``), as the canonical decimal string of the int.
    """

    gender: str | None = None
    city_tier: str | None = None
    brand: str | None = None
    generic_name: str | None = None
    category_id: str | None = None
    category_level: int | None = None
    size: int = DEFAULT_SIZE
    offset: int = 0

    def __post_init__(self) -> None:
        # The backends rely on these; parse_segment_request reports them against the request's fields.
        if self.size < 0 or self.offset < 0 or self.offset + self.size > MAX_WINDOW:
            raise ValueError(f"size {self.size} and offset {self.offset}: both >= 0, together at most {MAX_WINDOW}")

    @property
    def has_product_criteria(self) -> bool:
        """True when brand, generic name or a category is given (the product-level criteria)."""
        return self.brand is not None or self.generic_name is not None or self.category_id is not None


def json_type_name(value: object) -> str:
    """The JSON name of a decoded value's type, for error messages (``boolean``, ``array``, ``object``...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def parse_int(field: str, value: object) -> int:
    """A JSON integer or a string holding one; floats and booleans are errors (shared with saved segments)."""
    if isinstance(value, bool):
        raise InvalidRequest(field, f"must be an integer, got a boolean ({value!r})")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        if _INT_RE.fullmatch(text):
            try:
                return int(text)
            except ValueError:  # past Python's integer-string conversion limit (4300 digits)
                raise InvalidRequest(field, f"must be an integer of at most 4300 digits, got {len(text)}") from None
        raise InvalidRequest(field, f"must be an integer, got the string {value[:100]!r}")
    raise InvalidRequest(field, f"must be an integer, got {json_type_name(value)} {value!r}")


def parse_gender(value: object) -> str | None:
    if not isinstance(value, str):
        raise InvalidRequest("gender", f"must be a string, got {json_type_name(value)} {value!r}")
    key = value.strip().lower()
    if key not in _GENDERS:
        raise InvalidRequest(
            "gender",
            f"unknown value {value!r}; expected men/male/m, women/female/f, unisex or any (any case)",
        )
    return _GENDERS[key]


def parse_city_tier(value: object) -> str:
    if isinstance(value, bool):
        raise InvalidRequest("cityTier", f"must be a tier 1-3, got a boolean ({value!r})")
    if isinstance(value, int):
        if 1 <= value <= 3:
            return f"Tier{value}"
        raise InvalidRequest("cityTier", f"unknown tier {value!r}; expected 1, 2 or 3")
    if isinstance(value, str):
        match = _TIER_RE.fullmatch(value.strip())
        if match:
            return f"Tier{match.group(1)}"
        raise InvalidRequest("cityTier", f"unknown tier {value!r}; expected e.g. Tier1, tier 2, TIER-3 or 1")
    raise InvalidRequest("cityTier", f"must be a string or an integer 1-3, got {json_type_name(value)} {value!r}")


def _parse_name(field: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(field, f"must be a string, got {json_type_name(value)} {value!r}")
    name = value.strip().lower()
    if not name:
        raise InvalidRequest(field, "must not be empty")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # e.g. a lone surrogate from a JSON "\ud800" escape
        raise InvalidRequest(field, "is not valid Unicode text (unpaired surrogate)") from None
    return name


def given_fields(payload: object, fields: tuple[str, ...]) -> dict[str, Any]:
    """The fields of a request body that are given: it must be a JSON object of ``fields`` only (the first
    other one is named); a JSON null is the same as absent."""
    if not isinstance(payload, Mapping):
        raise InvalidRequest("request", f"the request body must be a JSON object, got {json_type_name(payload)}")
    for name in payload:
        if name not in fields:
            raise InvalidRequest(str(name), f"unknown field; expected one of {', '.join(fields)}")
    return {name: value for name, value in payload.items() if value is not None}


def parse_segment_request(payload: object) -> SegmentQuery:
    """Validate a decoded JSON request body and return the query it asks for.

    Raises :class:`InvalidRequest` (a ``ValueError``) naming the first bad field.
    """
    given = given_fields(payload, FIELDS)

    gender = parse_gender(given["gender"]) if "gender" in given else None
    city_tier = parse_city_tier(given["cityTier"]) if "cityTier" in given else None
    brand = _parse_name("brand", given["brand"]) if "brand" in given else None
    generic_name = _parse_name("genericName", given["genericName"]) if "genericName" in given else None

    category_id: str | None = None
    category_level: int | None = None
    for level in (1, 2, 3):
        field = f"level{level}Cat"
        if field not in given:
            continue
        cat = parse_int(field, given[field])
        if cat == -1:
            continue
        # Levels are read in ascending order, so the most specific level given wins.
        category_id = str(cat)
        category_level = level

    size = DEFAULT_SIZE
    if "size" in given:
        size = parse_int("size", given["size"])
        if not 0 <= size <= MAX_SIZE:
            raise InvalidRequest("size", f"must be between 0 and {MAX_SIZE}, got {size}")

    offset = 0
    if "from" in given:
        offset = parse_int("from", given["from"])
        if offset < 0:
            raise InvalidRequest("from", f"must be 0 or more, got {offset}")
    if offset + size > MAX_WINDOW:
        raise InvalidRequest(
            "from",
            f"from + size must be at most {MAX_WINDOW:,}, got {offset} + {size}; export whole audiences instead",
        )

    return SegmentQuery(
        gender=gender,
        city_tier=city_tier,
        brand=brand,
        generic_name=generic_name,
        category_id=category_id,
        category_level=category_level,
        size=size,
        offset=offset,
    )
