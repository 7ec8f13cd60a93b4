"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import re


def redact(argument: str) -> str:
    """Hide a password in a URL argument (recorded commands go into docs/)."""
    return re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", argument)
