"""Planted interest groups: shoppers who share a taste, so that lookalike audiences can be measured.

A planted group is a gender and ``PLANTED_INTERESTS`` interest groups of the catalog (generic names or
brands compatible with the gender), drawn all equally likely (``Shape.planted_draw = "uniform"``, the
default: most are niche, a taste few others share) or by popularity as ordinary interests are
(``"popular"``: the groups then overlap with what everyone buys; a harder test of lookalikes). Each
shopper joins a group of their gender with probability ``Shape.planted_share`` (groups of one gender are
equally likely); a member then draws ``Shape.planted_focus`` of their candidate products from the group's
interests, the rest as any other shopper. Which group each member joined is written to
``planted_groups.csv`` (``ext_id,group``; the importer ignores it), and the groups' interests to
``shape.json``: the ground truth that ``bench/lookalike_bench.py`` scores lookalikes against.

Everything here draws from its own random streams, so a shape without planted groups gives the data it
gave before, byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from persona_assets.synthetic.catalog import MEN, WOMEN, Catalog, Sampler

#: Interest groups that make up one planted group's taste.
PLANTED_INTERESTS = 4
#: Random streams of the planting (the generator uses 0-3 for its own draws).
PROFILE_STREAM, MEMBER_STREAM, FOCUS_STREAM = 10, 11, 12


@dataclass(frozen=True)
class PlantedProfiles:
    """Per planted group: its gender (``MEN``/``WOMEN``) and its interest groups (catalog group ids)."""

    gender: np.ndarray  # (groups,)
    interests: np.ndarray  # (groups, PLANTED_INTERESTS)

    @classmethod
    def draw(cls, seed: int, groups: int, sampler: Sampler, *, uniform: bool = True) -> PlantedProfiles:
        """Groups alternate men, women; each gets distinct interests compatible with its gender."""
        rng = np.random.default_rng([seed, PROFILE_STREAM])
        gender = np.where(np.arange(groups) % 2 == 0, MEN, WOMEN).astype(np.int8)
        interests = np.empty((groups, PLANTED_INTERESTS), np.int64)
        for group in range(groups):
            chosen: list[int] = []
            while len(chosen) < PLANTED_INTERESTS:
                drawn = sampler.groups(rng, int(gender[group]), (4 * PLANTED_INTERESTS,), uniform=uniform)
                for candidate in drawn.tolist():
                    if candidate not in chosen and len(chosen) < PLANTED_INTERESTS:
                        chosen.append(candidate)
            interests[group] = chosen
        return cls(gender=gender, interests=interests)

    def __len__(self) -> int:
        return len(self.gender)

    def describe(self, cat: Catalog, members: np.ndarray) -> list[dict[str, object]]:
        """What ``shape.json`` says of each group: gender, interests by name, member count."""
        counts = np.bincount(members[members >= 0], minlength=len(self))
        return [
            {
                "group": group,
                "gender": "men" if self.gender[group] == MEN else "women",
                "interests": [cat.group_names[i] for i in self.interests[group].tolist()],
                "members": int(counts[group]),
            }
            for group in range(len(self))
        ]


def assign_members(seed: int, block: int, profiles: PlantedProfiles, gender: np.ndarray, share: float) -> np.ndarray:
    """Per shopper of a block, the planted group joined (-1: none), among the groups of their gender."""
    rng = np.random.default_rng([seed, MEMBER_STREAM, block])
    joins = rng.random(len(gender)) < share
    pick = rng.random(len(gender))
    member = np.full(len(gender), -1, np.int64)
    for g in (MEN, WOMEN):
        of_gender = np.flatnonzero(profiles.gender == g)
        sel = joins & (gender == g)
        if of_gender.size:
            member[sel] = of_gender[np.minimum((pick[sel] * of_gender.size).astype(np.int64), of_gender.size - 1)]
    return member


def focus_products(
    seed: int,
    block: int,
    profiles: PlantedProfiles,
    sampler: Sampler,
    member: np.ndarray,
    gender: np.ndarray,
    focus: float,
    candidate_user: np.ndarray,
    candidate_product: np.ndarray,
) -> None:
    """Replace ``focus`` of each member's candidate products (in place) with products of their group's interests."""
    rng = np.random.default_rng([seed, FOCUS_STREAM, block])
    rows = np.flatnonzero(member[candidate_user] >= 0)
    rows = rows[rng.random(rows.size) < focus]
    users = candidate_user[rows]
    interest = profiles.interests[member[users], rng.integers(0, PLANTED_INTERESTS, rows.size)]
    for g in (MEN, WOMEN):
        sel = gender[users] == g
        candidate_product[rows[sel]] = sampler.in_group(rng, g, interest[sel])
