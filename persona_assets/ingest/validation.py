"""Row validation of the import files (contract sections 1 and 6), vectorised over whole files.

Each ``validate_*`` function takes the file as a DataFrame of strings and returns the
accepted rows (cleaned) and the rejected ones with their reasons. Nothing here does I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd

from persona_assets.stores.events import EVENT_KINDS
from persona_assets.stores.relational import INT64_MAX, MAX_ID_LENGTH, MAX_NAME_LENGTH, MAX_TEXT_LENGTH

PRODUCT_COLUMNS = ("pid", "pos", "title", "brand", "generic_name", "gender", "cat_l1", "cat_l2", "cat_l3", "price")
CATEGORY_COLUMNS = ("cat_id", "name", "parent_id")
REQUIRED_FILES = {"products.csv": PRODUCT_COLUMNS, "categories.csv": CATEGORY_COLUMNS}
OPTIONAL_FILES = {kind.csv_file: kind.csv_columns for kind in EVENT_KINDS.values()}

GENDER_SYNONYMS = {"men": "men", "male": "men", "m": "men", "women": "women", "female": "women", "f": "women"}
GENDER_SYNONYMS["unisex"] = "unisex"

INTEGER_ID = re.compile(r"-?[0-9]+")
# A strict subset of what datetime.fromisoformat reads, parsed identically by pandas; the rest falls back
# to datetime.fromisoformat itself, so the rule is Python's exactly.
FAST_ISO = (
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,6})?)?(?:Z|[+-][0-9]{2}:[0-9]{2})?)?"
)


class ImportFileError(ValueError):
    """A required file or column is missing: the import stops and writes nothing."""


@dataclass
class Validated:
    """Accepted rows of one file and the rejected ones (columns ``row_number, reason, details, raw``)."""

    accepted: pd.DataFrame
    rejected: pd.DataFrame


class _Reasons:
    """Collects per-row problems; a row with several problems is rejected once, under its first."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame
        self.problems: list[tuple[str, np.ndarray]] = []

    def add(self, reason: str, mask: pd.Series | np.ndarray) -> None:
        mask = np.asarray(mask, dtype=bool)
        if mask.any():
            self.problems.append((reason, mask))

    @property
    def bad(self) -> np.ndarray:
        bad = np.zeros(len(self.frame), dtype=bool)
        for _, mask in self.problems:
            bad |= mask
        return bad

    def split(self, accepted: pd.DataFrame) -> Validated:
        bad = self.bad
        rows = np.flatnonzero(bad)
        if len(rows) == 0:
            return Validated(accepted.reset_index(drop=True), _empty_rejects())
        labels = np.full(len(self.frame), "", dtype=object)
        first = np.full(len(self.frame), "", dtype=object)
        for reason, mask in self.problems:
            first[mask & (first == "")] = reason
            labels[mask] = np.where(labels[mask] == "", reason, labels[mask] + "; " + reason)
        raw = self.frame.iloc[rows]
        rejected = pd.DataFrame(
            {
                "row_number": raw.index.to_numpy() + 1,
                "reason": first[rows],
                "details": labels[rows],
                "raw": raw.to_json(orient="records", lines=True, force_ascii=False).splitlines(),
            }
        )
        return Validated(accepted[~bad].reset_index(drop=True), rejected)


def _empty_rejects() -> pd.DataFrame:
    return pd.DataFrame({"row_number": [], "reason": [], "details": [], "raw": []})


# What a header split on something other than commas looks like: one column holding the separators.
OTHER_DELIMITERS = {";": "';' (semicolons)", "\t": "tabs", "|": "'|' (pipes)"}


def check_columns(file_name: str, header: list[str], required: tuple[str, ...]) -> None:
    """Raise naming the first required column that the (trimmed) header lacks or holds twice."""
    trimmed = [name.strip() for name in header]
    for column in required:
        if trimmed.count(column) > 1:
            raise ImportFileError(f"{file_name}: column '{column}' appears twice in the header (header: {header})")
    present = set(trimmed)
    for column in required:
        if column not in present:
            hint = ""
            if len(header) == 1:
                found = [label for separator, label in OTHER_DELIMITERS.items() if separator in header[0]]
                if found:
                    hint = f"; the header looks separated by {found[0]}: the files must be comma-separated"
            raise ImportFileError(f"{file_name}: required column '{column}' is missing (header: {header}){hint}")


def _reject_long(reasons: _Reasons, values: pd.Series, column: str, limit: int) -> None:
    """Ids and names longer than the stores' key columns are rejected rows on every backend."""
    reasons.add(f"{column} longer than {limit} characters", values.str.len() > limit)


def _reject_bad_id(reasons: _Reasons, values: pd.Series, column: str) -> None:
    """An id is a key in every store and a document id in the index: too long, or holding a NUL (what a
    broken export leaves; C tools and drivers cut text there), rejects the row. Tabs, line breaks and
    any other character are kept: ids are opaque strings (the adversarial shoppers have them)."""
    _reject_long(reasons, values, column, MAX_ID_LENGTH)
    reasons.add(f"NUL character in {column}", values.str.contains("\x00", regex=False))


def _trimmed(series: pd.Series) -> pd.Series:
    return series.fillna("").astype(str).str.strip()


def _category_ids(reasons: _Reasons, frame: pd.DataFrame, column: str, *, none_values: tuple[str, ...]) -> pd.Series:
    """Parse integer category ids; ``none_values`` mean "no category" (NA)."""
    cells = _trimmed(frame[column])
    is_none = cells.isin(none_values)
    is_int = cells.str.fullmatch(INTEGER_ID.pattern)
    reasons.add(f"non-integer {column}", ~is_none & ~is_int)
    # Ids must fit a 64-bit integer column in every store.
    digits = cells.str.lstrip("-").str.lstrip("0").str.len()
    too_big = (
        is_int
        & ~is_none
        & ((digits > 19) | ((digits == 19) & (cells.str.lstrip("-").str.lstrip("0") > str(INT64_MAX))))
    )
    reasons.add(f"{column} out of range", too_big)
    safe = cells.where(is_int & ~is_none & ~too_big)
    parsed = safe.map(int, na_action="ignore")
    return parsed.astype("Int64")


def validate_categories(frame: pd.DataFrame) -> Validated:
    reasons = _Reasons(frame)
    cat_id_text = _trimmed(frame["cat_id"])
    reasons.add("empty cat_id", cat_id_text == "")
    cat_id = _category_ids(reasons, frame.assign(cat_id=cat_id_text), "cat_id", none_values=("",))
    parent_id = _category_ids(reasons, frame, "parent_id", none_values=("",))
    name = frame["name"].fillna("").astype(str)
    _reject_long(reasons, name, "name", MAX_TEXT_LENGTH)
    accepted = pd.DataFrame({"cat_id": cat_id, "name": name, "parent_id": parent_id})
    _reject_later_duplicates(reasons, accepted["cat_id"], "duplicate cat_id")
    return reasons.split(accepted)


def _reject_later_duplicates(reasons: _Reasons, keys: pd.Series, reason: str) -> None:
    """The first row not rejected for another reason keeps the key; each later one is rejected."""
    otherwise_good = ~reasons.bad
    duplicate = keys.where(otherwise_good).duplicated(keep="first") & otherwise_good
    reasons.add(reason, duplicate.to_numpy())


def normalise_gender(values: pd.Series) -> pd.Series:
    """men/male/m → men, women/female/f → women, unisex → unisex, anything else → no gender."""
    return _trimmed(values).str.lower().map(GENDER_SYNONYMS).astype(object).where(lambda s: s.notna(), None)


def validate_products(frame: pd.DataFrame) -> Validated:
    reasons = _Reasons(frame)
    pid = _trimmed(frame["pid"])
    reasons.add("empty pid", pid == "")
    _reject_bad_id(reasons, pid, "pid")
    levels = {
        column: _category_ids(reasons, frame, column, none_values=("", "-1"))
        for column in ("cat_l1", "cat_l2", "cat_l3")
    }
    accepted = pd.DataFrame(
        {
            "pid": pid,
            "pos": _trimmed(frame["pos"]).str.lower(),
            "title": frame["title"].fillna("").astype(str),
            "brand": _trimmed(frame["brand"]).str.lower(),
            "generic_name": _trimmed(frame["generic_name"]).str.lower(),
            "gender": normalise_gender(frame["gender"]),
            **levels,
            "price": _trimmed(frame["price"]),
        }
    )
    for column in ("pos", "brand", "generic_name"):
        _reject_long(reasons, accepted[column], column, MAX_NAME_LENGTH)
    _reject_long(reasons, accepted["title"], "title", MAX_TEXT_LENGTH)
    _reject_later_duplicates(reasons, accepted["pid"], "duplicate pid")
    return reasons.split(accepted)


def parse_timestamps(values: pd.Series) -> pd.Series:
    """ISO-8601 as ``datetime.fromisoformat`` reads it, to UTC (no offset = UTC); NaT where it cannot."""
    text = values.fillna("").astype(str)
    fast = text.str.fullmatch(FAST_ISO)
    parsed = pd.Series(pd.NaT, index=text.index, dtype="datetime64[us, UTC]")
    if fast.any():
        parsed[fast] = pd.to_datetime(text[fast], format="ISO8601", utc=True, errors="coerce").astype(
            "datetime64[us, UTC]"
        )
    fallback = (~fast | parsed.isna()) & (text != "")
    if fallback.any():
        distinct = text[fallback].unique()
        lookup = {value: _fromisoformat_utc(value) for value in distinct}
        parsed[fallback] = pd.to_datetime(text[fallback].map(lookup), utc=True).astype("datetime64[us, UTC]")
    return parsed


def _fromisoformat_utc(value: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    # Outside pandas' range: treated as outside the event partitions by the caller.
    return moment if 1678 <= moment.year <= 2261 else datetime(1678, 1, 1, tzinfo=UTC)


def utc_dates(moments: pd.Series) -> np.ndarray:
    """The UTC calendar day of each moment (NaT stays NaT), without formatting every row as text."""
    return moments.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[us]").astype("datetime64[D]")


def validate_events(kind: str, frame: pd.DataFrame, first_day: date, last_day: date) -> Validated:
    """Validate one event file; accepted rows get a ``day`` column (the UTC date, as midnight without zone)."""
    spec = EVENT_KINDS[kind]
    reasons = _Reasons(frame)
    columns: dict[str, pd.Series] = {}
    for column in spec.csv_columns:
        if column == spec.time_column:
            continue
        # ids and pincodes are trimmed; a search query is kept exactly as imported.
        columns[column] = frame[column].fillna("").astype(str) if column == "query" else _trimmed(frame[column])
    reasons.add("empty ext_id", columns["ext_id"] == "")
    _reject_bad_id(reasons, columns["ext_id"], "ext_id")
    if "query" in columns:
        _reject_long(reasons, columns["query"], "query", MAX_TEXT_LENGTH)
    if "pid" in columns:
        reasons.add("empty pid", columns["pid"] == "")
        _reject_bad_id(reasons, columns["pid"], "pid")
    raw_time = frame[spec.time_column].fillna("").astype(str)
    moments = parse_timestamps(raw_time)
    reasons.add(f"empty {spec.time_column}", raw_time == "")
    reasons.add(f"unparsable {spec.time_column}", (raw_time != "") & moments.isna())
    dates = utc_dates(moments)
    in_window = (dates >= np.datetime64(first_day, "D")) & (dates <= np.datetime64(last_day, "D"))
    reasons.add(
        f"{spec.time_column} outside the event partitions ({first_day} to {last_day})",
        moments.notna().to_numpy() & ~in_window,
    )
    accepted = pd.DataFrame({**columns, "ts": moments, "day": pd.Series(dates, index=frame.index)})
    return reasons.split(accepted)
