"""Adversarial shoppers: ext_ids and search texts that break naive CSV, SQL, JSON and Unicode handling.

Every id here is valid under the contract and the importer (non-empty, unchanged by trimming, at
most 191 characters), at most 512 UTF-8 bytes (OpenSearch's document-id limit, so every backend
takes it), and distinct from every other id, including ids it differs from only by letter case,
Unicode normalisation or a look-alike letter (the stores compare ids with a binary collation).
The chosen shoppers are drawn from their own random stream, and their ids follow from their rank,
so the same arguments give the same ids.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from persona_assets.stores.relational import MAX_ID_LENGTH

ADVERSARIAL_STREAM = 8  # random stream that picks the adversarial shoppers (streams 0-3 draw the events)
MAX_ID_BYTES = 512  # OpenSearch rejects longer document ids
PANDAS_NA_WORDS = ("NA", "null", "NULL", "NaN", "nan", "None", "N/A", "n/a", "#N/A", "<NA>", "-nan", "true")


def _near_limit(stem: str, filler: str, length: int) -> str:
    """``stem`` padded with ``filler`` (then ASCII ``x``) to exactly ``length`` characters."""
    body = stem + filler * ((length - len(stem)) // len(filler))
    return body + "x" * (length - len(body))


# Each pattern turns (serial, twin) into an id; serial counts the users given that pattern, and twin
# is the ordinary id (U0000042) of a non-adversarial user, so look-alikes of real ids exist beside them.
ID_PATTERNS: tuple[Callable[[int, str], str], ...] = (
    lambda s, twin: twin.lower(),  # u0000042 beside U0000042: only the case differs
    lambda s, twin: "\uff35" + twin[1:],  # fullwidth Ｕ0000042: equal to U0000042 after NFKC
    lambda s, twin: "\u0423" + twin[1:],  # Cyrillic У0000042: a look-alike letter
    lambda s, twin: "U\u00a0" + twin[1:],  # no-break space inside
    lambda s, _: f"Shopper-{s}-ÄÖÜ",  # these two differ only by case, outside ASCII too
    lambda s, _: f"shopper-{s}-äöü",
    lambda s, _: f"caf\u00e9-{s}",  # these two are canonically equivalent (NFC vs NFD)
    lambda s, _: f"cafe\u0301-{s}",
    lambda s, _: f"straße-{s}",  # equal to the next under full case folding
    lambda s, _: f"STRASSE-{s}",
    lambda s, _: f"İstanbul-ǅ-\u212a-{s}",  # dotted I, a titlecase digraph, the Kelvin sign
    lambda s, _: f"{s}",  # a number as text ...
    lambda s, _: f"0{s}",  # ... and with a leading zero (01005 and 1005 are different users)
    lambda s, _: f"{s}.0",
    lambda s, _: f"1e{s}",
    lambda s, _: PANDAS_NA_WORDS[s] if s < len(PANDAS_NA_WORDS) else f"NA {s}",  # read as missing by pandas
    lambda s, _: f'comma,{s},"quoted"',
    lambda s, _: f'"{s}"',
    lambda s, _: f"O'Brien;{s}",
    lambda s, _: f"back\\slash\\{s}\\",
    lambda s, _: f"x'); DROP TABLE users; -- {s}",
    lambda s, _: f"1' OR '1'='1 {s}",
    lambda s, _: f"100%_off_{s}",  # LIKE wildcards
    lambda s, _: f"%{s}%",
    lambda s, _: f"_{s}_",
    lambda s, _: f"प्रिया-शर्मा-{s}",
    lambda s, _: f"தமிழ்செல்வி-{s}",
    lambda s, _: f"বাংলা-{s}",
    lambda s, _: f"ਪੰਜਾਬੀ-{s}",
    lambda s, _: f"محمد-{s}",  # right-to-left
    lambda s, _: f"日本語-{s}",
    lambda s, _: f"🛒{s}👩\u200d💻🇮🇳",  # 4-byte UTF-8, a ZWJ sequence, a flag
    lambda s, _: f"zero\u200bwidth-{s}",
    lambda s, _: f"tab\there-{s}",
    lambda s, _: f"line\nbreak-{s}",
    lambda s, _: f"line\u2028separator\u2029{s}",  # line breaks to JavaScript and str.splitlines
    lambda s, _: f'{{"ext_id": "{s}"}}',
    lambda s, _: f"[{s}, null]",
    lambda s, _: f"\\u0000{s}\\n",
    lambda s, _: f'=HYPERLINK("x";{s})',  # a spreadsheet formula
    lambda s, _: f"<script>alert({s})</script>",
    lambda s, _: _near_limit(f"long-{s}-", "x", MAX_ID_LENGTH),  # exactly 191 characters
    lambda s, _: _near_limit(f"long-{s}-", "y", MAX_ID_LENGTH - 1),
    lambda s, _: _near_limit(f"दीर्घ-{s}-", "अ", 100) + _near_limit("", "z", MAX_ID_LENGTH - 100),  # 191, 3-byte
    lambda s, _: _near_limit(f"😀-{s}-", "😀", 80) + _near_limit("", "w", MAX_ID_LENGTH - 80),  # 191, 4-byte
)

# Search texts of adversarial shoppers: (prefix, suffix) around an ordinary query. The names in the
# query stay whole tokens, so every query still names what it did; texts are imported unchanged.
QUERY_DECORATIONS: tuple[tuple[str, str], ...] = (
    ("", " 🔥🔥"),
    ('"', '"'),
    ("", "'s price"),
    ("", "; DROP TABLE searches; --"),
    ("", " ₹२००० से कम"),
    ("सस्ता ", ""),
    ("", " விலை"),
    ("  ", "  "),  # spaces at both ends are part of the text
    ("", "\nsale"),
    ("", "\t2024"),
    ("%", "%"),
    ("", "_offer"),
    ("<b>", "</b>"),
    ('{"q": "', '"}'),
    ("e\u0301 ", ""),
    ("", " \\"),
    ("", ",,,"),
)


def invalid_reason(ext_id: str) -> str | None:
    """Why an id would be rejected or altered on import, or exceed a backend's limit; None when it is fine."""
    if not ext_id:
        return "empty"
    if ext_id != ext_id.strip():
        return "changed by trimming"
    if len(ext_id) > MAX_ID_LENGTH:
        return f"longer than {MAX_ID_LENGTH} characters"
    if len(ext_id.encode("utf-8")) > MAX_ID_BYTES:
        return f"longer than {MAX_ID_BYTES} UTF-8 bytes"
    if "\r" in ext_id or "\x00" in ext_id:
        return "holds a carriage return or NUL"
    return None


def pick_adversarial(seed: int, users: int, share: float) -> np.ndarray:
    """Sorted indices of ``round(share * users)`` users, drawn from their own stream."""
    count = round(share * users)
    if count == 0:
        return np.zeros(0, np.int64)
    rng = np.random.default_rng([seed, ADVERSARIAL_STREAM])
    return np.sort(rng.choice(users, size=count, replace=False))


def ext_ids(ordinary: pa.Array, chosen: np.ndarray) -> pa.Array:
    """``ordinary`` ids (U0000001...) with the ``chosen`` users' replaced by adversarial ones (pattern = rank mod P)."""
    if len(chosen) == 0:
        return ordinary
    others = np.setdiff1d(np.arange(len(ordinary)), chosen)
    serial = np.arange(len(chosen)) // len(ID_PATTERNS)
    # A twin is an ordinary user's id; past the last ordinary user, the chosen user's own (unused) one.
    twin_index = chosen.copy()
    has_twin = serial < len(others)
    twin_index[has_twin] = others[serial[has_twin]]
    twins = ordinary.take(pa.array(twin_index)).to_pylist()
    patterns = [ID_PATTERNS[rank % len(ID_PATTERNS)] for rank in range(len(chosen))]
    adversarial = [pattern(int(s), twin) for pattern, s, twin in zip(patterns, serial, twins, strict=True)]
    for ext_id in adversarial:
        if reason := invalid_reason(ext_id):
            raise AssertionError(f"adversarial ext_id {ext_id!r} is {reason}")
    mask = np.zeros(len(ordinary), bool)
    mask[chosen] = True
    ids = pc.replace_with_mask(ordinary, pa.array(mask), pa.array(adversarial, pa.string()))
    if len(pc.unique(ids)) != len(ids):
        raise AssertionError("adversarial ext_ids are not distinct")
    return ids


def decorate_queries(query: pa.Array, adversarial: np.ndarray) -> pa.Array:
    """Queries of rows where ``adversarial`` is set wrapped in a decoration (row number mod D picks which)."""
    if not adversarial.any():
        return query
    pick = np.arange(len(query)) % len(QUERY_DECORATIONS)
    prefix = pa.array([p for p, _ in QUERY_DECORATIONS]).take(pa.array(pick))
    suffix = pa.array([s for _, s in QUERY_DECORATIONS]).take(pa.array(pick))
    decorated = pc.binary_join_element_wise(prefix, query, suffix, "")
    return pc.if_else(pa.array(adversarial), decorated, query)
