"""The docs stand on their own: every relative link of the README and docs/ points at a file of this
repository (a clone has nothing beside it), and the README's commands name files that exist."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_every_relative_link_resolves_inside_the_repository():
    broken = []
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#", 1)[0]).resolve()
            if not path.exists() or REPO not in path.parents:
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert broken == []


def test_the_docs_the_readme_promises_exist():
    readme = REPO / "README.md"
    text = readme.read_text(encoding="utf-8")
    for page in (
        "docs/data-format.md",
        "docs/deployment.md",
        "docs/operations.md",
        "docs/reliability.md",
        "docs/audiences.md",
    ):
        assert f"]({page})" in text, page
        assert (REPO / page).is_file(), page
