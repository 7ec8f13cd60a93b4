"""Saved segments' members as an asset: one dynamic partition per saved segment (docs/audiences.md).

``segment_members`` follows ``persona_index``: after each rebuild (and when a segment is saved or
replaced) the ``segment_membership`` sensor keeps the partitions equal to the saved segments and requests
the stale ones; a refresh updates the members of the users it refreshed itself and records those
partitions' materialisations (``sensors.refresh_claimed_users``). Each materialisation carries
``members``, ``entered`` and ``exited``, which the UI plots over time.
"""

from collections.abc import Iterable

from dagster import AssetExecutionContext, DagsterInstance, DynamicPartitionsDefinition, MaterializeResult, asset

from persona_assets.jobs import COMPUTE_POOL
from persona_assets.resources import RelationalStore
from persona_assets.settings import PersonaSettings
from persona_assets.stores import membership
from persona_assets.stores.membership import MembershipRun
from persona_assets.stores.segments import get_segment

#: One partition per saved segment, named as the segment.
saved_segment_partitions = DynamicPartitionsDefinition(name="saved_segments")


def membership_metadata(run: MembershipRun) -> dict[str, int | str]:
    """What a materialisation of a segment's partition reports (plotted by the UI)."""
    return {
        "members": run.members,
        "entered": run.entered,
        "exited": run.exited,
        "computation": run.kind,
        "dagster/row_count": run.members,
    }


@asset(
    group_name="audiences",
    deps=["persona_index"],
    partitions_def=saved_segment_partitions,
    kinds={"sql"},
    pool=COMPUTE_POOL,
)
def segment_members(context: AssetExecutionContext, relational_store: RelationalStore) -> MaterializeResult:
    """The members of one saved segment: every persona scored as the segment query scores it, the
    membership rule applied, and who entered and left since the last computation recorded."""
    engine = relational_store.engine
    stored = get_segment(engine, context.partition_key)
    run = membership.compute_full(engine, stored.segment, PersonaSettings.from_env().weights)
    context.log.info(f"{stored.segment.name}: {run.members:,} members, {run.entered:,} entered, {run.exited:,} exited")
    return MaterializeResult(metadata=membership_metadata(run))


def sync_segment_partitions(instance: DagsterInstance, saved: Iterable[str]) -> tuple[list[str], list[str]]:
    """Add a ``segment_members`` partition for each saved segment that has none and delete those of segments
    no longer saved; (added, deleted)."""
    partitions = saved_segment_partitions.name
    existing = set(instance.get_dynamic_partitions(partitions))
    added = sorted(set(saved) - existing)
    deleted = sorted(existing - set(saved))
    if added:
        instance.add_dynamic_partitions(partitions, added)
    for name in deleted:
        instance.delete_dynamic_partition(partitions, name)
    return added, deleted
