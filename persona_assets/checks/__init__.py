"""Asset checks: the hand-offs that could publish bad data, checked where they happen.

| check (asset)                                       | blocking | severity on failure                  |
|-----------------------------------------------------|----------|--------------------------------------|
| ``reject_rate`` (raw_visits, raw_checkouts, raw_searches, product_catalog, category_hierarchy) | yes | ERROR |
| ``every_day_was_landed`` (raw_visits, raw_checkouts, raw_searches; in ``assets/events.py``) | no | WARN: a day of the run had no landed file |
| ``unknown_pincode_rate`` (user_raw_affinities)      | yes      | ERROR                                |
| ``maps_sum_to_one`` (user_personas)                 | yes      | ERROR                                |
| ``document_count_matches_personas`` (persona_index) | no       | ERROR                                |
| ``no_user_stuck_at_calculated`` (persona_index)     | no       | WARN when every stuck user is one the backend refused, else ERROR |
| ``no_dead_lettered_users`` (persona_index)          | no       | WARN: users the backend refused on every try (``persona dead-letter``) |

A blocking check that fails stops every asset downstream of its asset *in the same run*: Dagster
skips them and the run fails, naming the check (the check also logs its finding at ERROR). So in
``full_rebuild`` a flood of unknown pincodes stops vocabulary, personas and index, and a bad map
stops ``persona_index`` (the live build and the hasChanged = 2 flags stay); a flood of event rejects
fails the ``ingest_events`` run, and the rebuild's automation condition (``automation.py``) requests no
rebuild while a blocking check of a raw asset stands failed; in one run of everything (the UI) it stops
the rebuild directly. What a check cannot undo is its own asset, already materialised when it runs. The checks of
``persona_index`` do not block: nothing is downstream of the index and a failed step would not take
a published build back.

The refresh path runs no checks: the hasChanged sensor launches nothing while the latest evaluation of
any blocking check failed at ERROR (``sensors.refused_by_blocking_checks``), so what a check refused
reaches the index neither through the rebuild nor through a refresh.

The checks run wherever Dagster is given them with the assets: ``definitions.py`` registers them,
so the jobs, schedule, sensors and UI of the code location run them. (A bare ``materialize()`` of
``persona_assets.assets.all_assets`` does not: pass ``[*all_assets, *asset_checks]``.)
``reject_rate`` is not partitioned on the daily raw event assets: it judges the last import, not a
day; Dagster 1.13 still plans it once per day of a run and shows those per-day entries as skipped.

Thresholds come from the environment and are read when a check runs (see :class:`CheckSettings`).
The two rate checks judge nothing below ``PERSONA_CHECK_MIN_ROWS`` rows (default 1000): a rate over
a handful of rows is noise (one bad row of three is 33 %), and a small import's rejects are listed
by ``persona import`` anyway. Every count is set-based (SQL or DuckDB over whole tables), never a
computation per row in Python.
"""

from dagster import AssetChecksDefinition

from persona_assets.checks._common import CheckSettings
from persona_assets.checks.index import (
    document_count_matches_personas,
    no_dead_lettered_users,
    no_user_stuck_at_calculated,
)
from persona_assets.checks.ingest import reject_rate_checks, unknown_pincode_rate
from persona_assets.checks.maps import maps_sum_to_one

asset_checks: list[AssetChecksDefinition] = [
    *reject_rate_checks,
    unknown_pincode_rate,
    maps_sum_to_one,
    document_count_matches_personas,
    no_user_stuck_at_calculated,
    no_dead_lettered_users,
]
"""Every check of the project (registered with the assets in ``definitions.py``)."""

__all__ = ["CheckSettings", "asset_checks", "maps_sum_to_one"]
