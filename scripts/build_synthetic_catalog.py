"""Build the synthetic dataset's product catalog from the REAL catalogs in ``shared/data``.

One-off and re-runnable: the output depends only on the two source files, so running it
again gives byte-identical files (gzip is written with ``mtime=0`` and no file name).

Reads
    <data>/flipkart/flipkart_products_20k.csv.gz
    <data>/amazon_india/amazon_sales_dataset_1465.csv.gz
Writes, into ``persona_assets/synthetic/data/``
    products.csv.gz    pid,pos,title,brand,generic_name,gender,cat_l1,cat_l2,cat_l3,price
    categories.csv.gz  cat_id,name,parent_id   (empty parent_id = level 1)
    PROVENANCE.md      sources, their sha256, every derivation rule and the resulting counts

Usage:  python scripts/build_synthetic_catalog.py [--data /work/shared/data] [--out DIR]

Every derivation rule is written down in ``PROVENANCE_TEMPLATE`` below (and so in
PROVENANCE.md); keep the two in step when a rule changes.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import re
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path("/work/shared/data")
DEFAULT_OUT = REPO / "persona_assets" / "synthetic" / "data"
FLIPKART = Path("flipkart/flipkart_products_20k.csv.gz")
AMAZON = Path("amazon_india/amazon_sales_dataset_1465.csv.gz")

PRODUCT_COLUMNS = ["pid", "pos", "title", "brand", "generic_name", "gender", "cat_l1", "cat_l2", "cat_l3", "price"]
CATEGORY_COLUMNS = ["cat_id", "name", "parent_id"]

# A Flipkart `brand` value is dropped when every word of it (lower-cased, split on anything
# that is not a letter) is one of these: colours, fits and filler words the source put in the
# brand column ("Regular", "Slim Fit", "Light Pink", "Black/ White", "NA", ...).
_NON_BRAND_TEXT = """
    regular slim fit fitted skinny relaxed realx relax normal standard comfort comfortable trim smart casual plus
    skanders na mega product multi multicolor multicolour colour color print printed
    black white red pink purple blue beige grey gray maroon brown yellow green skin orange navy mauve peach
    rani cream mehroon coffee gold steel majenta magenta magentta sky carrot dark light bold glossy royal olive
    falsa firozy neon vibrant rouge leopard cherry powder lavender rust turquise turquoise melange nile aqua
    nude hot deep baby chocolate silver violet off navyblue lightpink darkpink and n
"""
NON_BRAND_WORDS = frozenset(_NON_BRAND_TEXT.split())

# Gender words, matched as whole words after lower-casing and deleting apostrophes
# (so "Men's" -> "mens", "Boys'" -> "boys", "Girl's" -> "girls").
MEN_WORDS = frozenset({"men", "mens", "boys", "gents", "male", "males"})
WOMEN_WORDS = frozenset({"women", "womens", "girls", "ladies", "female", "females"})
UNISEX_WORDS = frozenset({"unisex"})

# Amazon category parts whose CamelCase split by rule would be wrong.
AMAZON_PART_OVERRIDES = {
    "USBtoUSBAdapters": "USB to USB Adapters",
    "Webcams&VoIPEquipment": "Webcams & VoIP Equipment",
}

# A deepest category part that only qualifies its parent. The generic name is then
# "<part> <parent>" (Headphones > In-Ear -> "in-ear headphones") for LEADING_QUALIFIERS and
# "<parent> <part>" (Deodorants > Combos -> "deodorants combos") for TRAILING_QUALIFIERS.
LEADING_QUALIFIERS = frozenset(
    {"In-Ear", "On-Ear", "Over-Ear", "Basic", "Scientific", "Financial & Business", "Condenser"}
    | {"Ethnic", "Physical", "Digital"}
)
TRAILING_QUALIFIERS = frozenset({"Combos", "Combo & kits", "Accessories", "Sets", "Kits"})

GENDER_PREFIX = re.compile(r"^(?:men's|women's|kids'|boys'?|girls'?|baby boys'?|baby girls'?)\s+", re.I)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def clean_space(s: pd.Series) -> pd.Series:
    return s.fillna("").astype(str).str.replace(r"\s+", " ", regex=True).str.strip()


def _clean_part(part: str) -> str:
    """Trim, collapse inner whitespace, drop U+FFFD replacement characters left in the source."""
    return re.sub(r"\s+", " ", part.replace("\ufffd", "")).strip()


def split_camel(part: str) -> str:
    """``Computers&Accessories`` -> ``Computers & Accessories``; ``USBCables`` -> ``USB Cables``."""
    if part in AMAZON_PART_OVERRIDES:
        return AMAZON_PART_OVERRIDES[part]
    s = re.sub(r"(?<=[a-zé])(?=[A-Z0-9])", " ", part)  # lower -> Upper/digit
    s = re.sub(r"(?<=[A-Z0-9])(?=[A-Z][a-z])", " ", s)  # ACRONYMWord -> ACRONYM Word, 3DGlasses
    s = re.sub(r"\s*&\s*", " & ", s)
    s = re.sub(r"\s*,\s*", ", ", s)
    return re.sub(r"\s+", " ", s).strip()


def gender_of(texts: pd.Series) -> pd.Series:
    """men / women / unisex / '' from the words of the title and category tree."""
    words = texts.str.lower().str.replace(r"['’]", "", regex=True).str.findall(r"[a-z]+").map(set)
    men = words.map(lambda w: bool(w & MEN_WORDS))
    women = words.map(lambda w: bool(w & WOMEN_WORDS))
    unisex = words.map(lambda w: bool(w & UNISEX_WORDS))
    out = pd.Series("", index=texts.index)
    out[men] = "men"
    out[women] = "women"
    out[(men & women) | unisex] = "unisex"
    return out


def is_non_brand(brand: str) -> bool:
    words = re.findall(r"[a-z]+", brand.lower())
    return bool(words) and all(w in NON_BRAND_WORDS for w in words)


def lacks_a_word(brand: str) -> bool:
    """Values such as ``!!1000`` or ``T``: no run of two letters, so as a search name they would match
    every query saying "under 1000" or "t shirt"."""
    return brand != "" and re.search(r"[^\W\d_]{2,}", brand) is None


def genuine_flipkart_parts(parts: list[str], title: str, brand: str) -> list[str]:
    """The leading parts of a Flipkart tree that are real categories (cut at the first product-ish part)."""
    if len(parts) <= 1:  # a tree without ">>" holds only the product name
        return []
    t = title.lower()
    b = brand.lower()
    keep: list[str] = []
    for i, part in enumerate(parts):
        p = part.lower()
        product_ish = (
            p.endswith("...")
            or p == t
            or (len(p) > 0 and t.startswith(p) and i > 0 and len(p) >= 0.6 * len(t))
            or p.startswith(t)
            or (b != "" and (p == b or p.startswith(b + " ")))
            or (i > 0 and _is_brand_node(p, parts[i - 1].lower(), t))
        )
        if product_ish or p == "":
            break
        keep.append(part)
    return keep


def _is_brand_node(part: str, parent: str, title: str) -> bool:
    """``nucode t-shirts`` under ``t-shirts`` for a title starting ``nucode``: a per-brand node.

    The prefix must start the title, so ``women's clothing`` under ``clothing`` is not one.
    """
    if not part.endswith(" " + parent):
        return False
    prefix = part[: -len(parent) - 1]
    return title == prefix or title.startswith(prefix + " ")


def generic_from_path(path: list[str]) -> str:
    if not path:
        return ""
    leaf = path[-1]
    if len(path) >= 2:
        parent = _strip_gender(path[-2])
        if leaf in LEADING_QUALIFIERS:
            leaf = f"{leaf} {parent}"
        elif leaf in TRAILING_QUALIFIERS:
            leaf = f"{parent} {leaf}"
    return _strip_gender(leaf).lower()


def _strip_gender(part: str) -> str:
    """``Men's Footwear`` -> ``Footwear``; ``Kids' & Infant Footwear`` is left alone."""
    rest = GENDER_PREFIX.sub("", part)
    return rest if rest[:1].isalnum() else part


def plain_price(s: pd.Series) -> pd.Series:
    """``₹1,099`` -> ``1099``; ``176.63`` stays; empty stays empty."""
    raw = s.fillna("").astype(str).str.replace(r"[₹,\s]", "", regex=True)
    num = pd.to_numeric(raw, errors="coerce")
    out = num.map(lambda v: "" if pd.isna(v) else (str(int(v)) if float(v).is_integer() else f"{v:.2f}"))
    return out.astype(str)


def load_flipkart(path: Path) -> pd.DataFrame:
    f = pd.read_csv(path, dtype=str, keep_default_na=False)
    title = clean_space(f["product_name"])
    brand = clean_space(f["brand"])
    starts_title = pd.Series(
        [t.lower().startswith(b.lower()) for t, b in zip(title, brand, strict=True)], index=brand.index
    )
    brand = brand.where(~brand.map(is_non_brand) | starts_title, "")
    brand = brand.where(~brand.map(lacks_a_word), "")
    parts = f["product_category_tree"].map(lambda s: [_clean_part(p) for p in json.loads(s)[0].split(">>")])
    genuine = [genuine_flipkart_parts(p, t, b) for p, t, b in zip(parts, title, brand, strict=True)]
    return pd.DataFrame(
        {
            "pid": clean_space(f["pid"]),
            "pos": "flipkart",
            "title": title,
            "brand": brand,
            "brand_raw": clean_space(f["brand"]),
            "path": genuine,
            "gender_text": title + " " + parts.map(" ".join),
            "price": plain_price(f["discounted_price"]),
            "depth_raw": parts.map(len),
        }
    )


def load_amazon(path: Path) -> pd.DataFrame:
    a = pd.read_csv(path, dtype=str, keep_default_na=False)
    title = clean_space(a["product_name"])
    brand = title.str.split(" ").str[0].str.replace(r"[®™©,.:;]+$", "", regex=True).fillna("")
    brand = brand.where(~brand.map(lacks_a_word), "")
    paths = a["category"].map(lambda c: [split_camel(p) for p in c.split("|") if p.strip()])
    return pd.DataFrame(
        {
            "pid": clean_space(a["product_id"]),
            "pos": "amazon",
            "title": title,
            "brand": brand,
            "path": paths,
            "gender_text": title,
            "price": plain_price(a["discounted_price"]),
            "depth_raw": paths.map(len),
        }
    )


def build(data: Path, out: Path) -> dict:
    fk = load_flipkart(data / FLIPKART)
    az = load_amazon(data / AMAZON)
    raw = pd.concat([fk, az], ignore_index=True)
    stats: dict = {"flipkart_rows": len(fk), "amazon_rows": len(az)}

    usable = (raw["pid"] != "") & (raw["title"] != "")
    stats["dropped_unusable"] = int((~usable).sum())
    raw = raw[usable]
    stats["cross_site_pids"] = len(set(fk["pid"]) & set(az["pid"]))
    dup = raw["pid"].duplicated(keep="first")
    stats["dropped_duplicate_pid"] = {pos: int(n) for pos, n in raw.loc[dup, "pos"].value_counts().sort_index().items()}
    products = raw[~dup].reset_index(drop=True)

    # ---- categories: one id per distinct path prefix of length 1..3, ids by (level, path) order.
    prefixes = {tuple(p[:k]) for p in products["path"] for k in range(1, min(3, len(p)) + 1)}
    ordered = sorted(prefixes, key=lambda t: (len(t), t))
    cat_id = {t: i + 1 for i, t in enumerate(ordered)}
    categories = pd.DataFrame(
        {
            "cat_id": [str(cat_id[t]) for t in ordered],
            "name": [t[-1] for t in ordered],
            "parent_id": [str(cat_id[t[:-1]]) if len(t) > 1 else "" for t in ordered],
        }
    )
    for level in (1, 2, 3):
        products[f"cat_l{level}"] = products["path"].map(
            lambda p, n=level: str(cat_id[tuple(p[:n])]) if len(p) >= n else ""
        )
    products["generic_name"] = products["path"].map(generic_from_path)
    products["gender"] = gender_of(products["gender_text"])

    out.mkdir(parents=True, exist_ok=True)
    write_gz_csv(products[PRODUCT_COLUMNS], out / "products.csv.gz")
    write_gz_csv(categories[CATEGORY_COLUMNS], out / "categories.csv.gz")

    stats.update(
        products=len(products),
        by_pos=products["pos"].value_counts().sort_index().to_dict(),
        categories=len(categories),
        categories_by_level={k: int((products[f"cat_l{k}"] != "").sum()) for k in (1, 2, 3)},
        level_counts={k: sum(1 for t in ordered if len(t) == k) for k in (1, 2, 3)},
        no_category=int((products["cat_l1"] == "").sum()),
        brand_empty=int((products["brand"] == "").sum()),
        brands=int(products.loc[products["brand"] != "", "brand"].str.lower().nunique()),
        generic_empty=int((products["generic_name"] == "").sum()),
        generics=int(products.loc[products["generic_name"] != "", "generic_name"].nunique()),
        gender=products["gender"].replace("", "(none)").value_counts().sort_index().to_dict(),
        price_empty=int((products["price"] == "").sum()),
        flipkart_brand_dropped=int(((fk["brand_raw"] != "") & (fk["brand"] == "")).sum()),
    )
    return stats


def write_gz_csv(df: pd.DataFrame, path: Path) -> None:
    text = df.to_csv(index=False, lineterminator="\n")
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(text.encode("utf-8"))
    path.write_bytes(buf.getvalue())


PROVENANCE_TEMPLATE = """\
# Provenance of `persona_assets/synthetic/data/`

Written by `scripts/build_synthetic_catalog.py` (re-runnable; same inputs give byte-identical
output). Do not edit `products.csv.gz` / `categories.csv.gz` by hand: change the script and re-run it.

## Source files (real data, see `shared/data/PROVENANCE.md` for their origin and licence caveats)

| file | rows | sha256 |
|---|---|---|
| `flipkart/flipkart_products_20k.csv.gz` | {flipkart_rows:,} | {sha_flipkart} |
| `amazon_india/amazon_sales_dataset_1465.csv.gz` | {amazon_rows:,} | {sha_amazon} |

Both are public Kaggle datasets (PromptCloud "Flipkart Products"; karkavelrajaj "Amazon Sales
Dataset") recovered from public GitHub snapshots. **No licence could be confirmed** for either;
check before redistributing.

## Output

| file | rows | sha256 |
|---|---|---|
| `products.csv.gz` | {products:,} | {sha_products} |
| `categories.csv.gz` | {categories:,} | {sha_categories} |

Format: exactly the import format of `docs/persona-contract.md` section 1 (UTF-8, `\\n` line
ends, header row, minimal quoting, gzip level 9 with mtime 0).

- Products by site: {by_pos}.
- Category ids by level: {level_counts}.
- Products with a category id at level 1 / 2 / 3: {categories_by_level}; with no category at all: {no_category:,}.
- Distinct brands (case-insensitive): {brands:,}; products without a brand: {brand_empty:,}.
- Distinct generic names: {generics:,}; products without one: {generic_empty:,}.
- Product gender: {gender}.
- Products without a price: {price_empty:,}.

## Derivation rules

Rows and ids
- Flipkart rows first (file order), then Amazon rows (file order).
- `pid`: Flipkart `pid`; Amazon `product_id` (ASIN). Whitespace is trimmed.
- A row with an empty pid or empty title is dropped ({dropped_unusable} such rows).
- Duplicate pid: the first row wins, later ones are dropped ({dropped_duplicate_pid}).
  Flipkart pids and ASINs shared by both sites: {cross_site_pids}.
- `pos`: `flipkart` / `amazon`.
- `title`: the source `product_name`, runs of whitespace collapsed to one space.

Categories
- Flipkart: `product_category_tree` is a JSON list of one string; it is split on `>>`, each
  part trimmed, inner whitespace runs collapsed, and stray U+FFFD characters removed. A tree
  with a single part holds only the product name and gives no category.
  Walking from the top, the first part that is really the product (and every part after it) is cut:
  a part that ends with `...` (truncated); equals the title or is a prefix of it covering at least 60%
  of it; starts with the title (e.g. `... (Pack of 1)`); equals the (cleaned) brand or starts with
  brand + space (`Alisha Shorts`); or is "<X> <previous part>" where the title starts with X (the
  per-brand node `Nucode T-Shirts` under `T-Shirts` for a `Nucode ...` title, which also catches
  brands missing from the `brand` column; `Women's Clothing` under `Clothing` is not one).
  Comparisons are case-insensitive.
- Amazon: `category` is split on `|`; each part is made readable: a space is inserted between a
  lower-case letter and a following upper-case letter or digit, and between an upper-case letter
  or digit and a following Upper+lower pair (`USBCables` -> `USB Cables`, `3DGlasses` -> `3D Glasses`);
  `&` gets one space on each side and `,` one space after
  (`Computers&Accessories` -> `Computers & Accessories`). Two parts the rule gets wrong are fixed
  by hand: `USBtoUSBAdapters` -> `USB to USB Adapters`, `Webcams&VoIPEquipment` -> `Webcams & VoIP Equipment`.
- `cat_l1..cat_l3` are the ids of the first one, two and three genuine parts (empty when the
  path is shorter). A category is identified by its whole path from the top, so the same name
  under different parents gets different ids, and the same path in both catalogs shares one id
  (no path is actually shared). Ids are 1..N in order of (level, path) with paths compared as
  tuples of strings by code point; `parent_id` is the id of the path without its last part,
  empty at level 1. Only levels 1-3 are in `categories.csv`.

Generic name
- The deepest genuine part of the (full, not only three-level) path, lower-cased, with a
  leading gender/age word removed (`Men's Footwear` -> `footwear`; kept when nothing or a
  non-letter would remain, as in `Baby Boys` or `Kids' & Infant Footwear`).
- When the deepest part only qualifies its parent, the parent is added: before it for
  `In-Ear`, `On-Ear`, `Over-Ear`, `Basic`, `Scientific`, `Financial & Business`, `Condenser`,
  `Ethnic`, `Physical`, `Digital` (`Headphones > In-Ear` -> `in-ear headphones`,
  `Showpieces > Ethnic` -> `ethnic showpieces`), after it for `Combos`, `Combo & kits`,
  `Accessories`, `Sets`, `Kits` (`Deodorants > Combos` -> `deodorants combos`).
- Empty when the product has no category.

Brand
- Flipkart: the `brand` column, whitespace collapsed. Empty stays empty (brands that only
  show up in the title or the tree are not recovered). A value is made empty when the title does
  not start with it and every word of it is a colour / fit / filler word (`Regular`, `Slim Fit`,
  `Black`, `Light Pink`, `Black/ White`, `NA`, `Skanders`, `Mega product`, ...; the full word list
  is `NON_BRAND_WORDS` in the script): {flipkart_brand_dropped:,} rows. Values that start the title
  (`Royal`, `Peach`, `Comfort`, `925 Silver`) are kept, except values with no run of two letters
  (`!!1000`, `T`): as search names they would match every query saying "under 1000" or "t shirt",
  so they are made empty whatever the title says.
- Amazon: the first whitespace-separated word of `product_name`, with trailing `®`, `™`, `©`,
  `,`, `.`, `:` or `;` removed (`7SEVEN®` -> `7SEVEN`); empty when it has no run of two letters
  (`!!1000`). Casing is kept as in the title
  (`MI` / `Mi`, `ZEBRONICS` / `Zebronics`); the importer lower-cases brand keys, so they merge there.

Gender
- From the words of the title and (Flipkart) the whole raw category tree, lower-cased with
  apostrophes deleted: `men, mens, boys, gents, male, males` -> men; `women, womens, girls, ladies,
  female, females` -> women; `unisex`, or both a men and a women word -> unisex; otherwise empty.
  (`Boy`/`Girl` without the s are not counted: `Women's Boy Short Panty` is women.)

Price
- The discounted price as a plain number: Flipkart `discounted_price`; Amazon `discounted_price`
  with `₹`, commas and spaces removed. Integral values are written without decimals, others with
  two. Empty in the source stays empty.
"""


def _pretty(counts: dict) -> str:
    return ", ".join(f"{k}: {v:,}" for k, v in counts.items())


def write_provenance(data: Path, out: Path, stats: dict) -> None:
    pretty = {k: _pretty(v) if isinstance(v, dict) else v for k, v in stats.items()}
    text = PROVENANCE_TEMPLATE.format(
        sha_flipkart=sha256(data / FLIPKART),
        sha_amazon=sha256(data / AMAZON),
        sha_products=sha256(out / "products.csv.gz"),
        sha_categories=sha256(out / "categories.csv.gz"),
        **pretty,
    )
    text += NAMES_SECTION
    (out / "PROVENANCE.md").write_text(text, encoding="utf-8")


NAMES_SECTION = """
## `indian_names.csv` (not built by this script)

A hand-written list of common Indian first names (by gender) and surnames (optionally tied to
the states where they are most common), typed in for the synthetic generator. It is not taken
from any dataset and describes no real person; every user name in a generated dataset is a
random first name + surname pair.
"""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    stats = build(args.data, args.out)
    write_provenance(args.data, args.out, stats)
    for k, v in stats.items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
