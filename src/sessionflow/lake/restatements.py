"""The restatement log: which session ids a run replaced, by which, and why.

A run that rewrites sessions already in the lake (an incremental run placing a late event, a range
backfill replacing days) writes ``restatements/part-RRRRR-00000.parquet``, one row per
(old session id, new session id) pair. A consumer applies it by replacing the rows of
``old_session_id`` with the rows of ``new_session_id``.

Reasons, for a pair (old, new):

* ``split``: the old id's events are now in several sessions;
* ``merged``: several old ids' events are now in one session (a bridging event);
* ``new_first_event``: one old id, one new id, not the same: the session's first event changed
  (an earlier event arrived), and a session's id is the UUIDv5 of its first event;
* ``updated``: the same id, its summary changed (extended, or an event placed inside).

An old id that keeps its id and its summary is not logged. Both runtimes call :func:`restatement_log`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Set
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

TABLE = "restatements"
REASONS = ("updated", "split", "merged", "new_first_event")
# (name, arrow type name): the log's columns, in file order.
COLUMNS = (
    ("run", "int32"),
    ("machine_id", "string"),
    ("old_session_id", "string"),
    ("new_session_id", "string"),
    ("reason", "string"),
)
_KEY = ["machine_id", "event_id"]


def log_file(run: int) -> str:
    """The lake-relative name of run ``run``'s log (one file: a run restates few sessions)."""
    return f"{TABLE}/part-{run:05d}-00000.parquet"


def log_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([(name, getattr(pa, kind)()) for name, kind in COLUMNS])


def session_pairs(old: pa.Table, new: pa.Table) -> pa.Table:
    """Distinct (machine_id, old_session_id, new_session_id) of the events in both tables.

    ``old``/``new`` hold ``machine_id``, ``event_id``, ``session_id``; an event without a session
    (a late one) on either side pairs nothing.
    """
    old = old.select([*_KEY, "session_id"]).rename_columns([*_KEY, "old_session_id"])
    new = new.select([*_KEY, "session_id"]).rename_columns([*_KEY, "new_session_id"])
    joined = old.join(new, keys=_KEY, join_type="inner")
    import pyarrow.compute as pc

    joined = joined.filter(pc.and_(joined["old_session_id"].is_valid(), joined["new_session_id"].is_valid()))
    return joined.group_by(["machine_id", "old_session_id", "new_session_id"]).aggregate([])


def restatement_log(run: int, old: pa.Table, new: pa.Table, changed_sessions: Set[str]) -> pa.Table:
    """The log of run ``run``: ``old``/``new`` are the events (``machine_id``, ``event_id``,
    ``session_id``) of the machines concerned before and after the run; ``changed_sessions`` the old
    ids whose summary row differs after the run or is gone."""
    pairs = session_pairs(old, new)
    return log_from_pairs(
        run,
        zip(
            pairs["machine_id"].to_pylist(),
            pairs["old_session_id"].to_pylist(),
            pairs["new_session_id"].to_pylist(),
            strict=True,
        ),
        changed_sessions,
    )


def log_from_pairs(run: int, pairs: Iterable[tuple[str, str, str]], changed_sessions: Set[str]) -> pa.Table:
    """:func:`restatement_log` from the distinct (machine_id, old id, new id) pairs of the events:
    for a runtime that joins the events itself (the Spark backfill joins them on the cluster)."""
    import pyarrow as pa

    distinct = sorted(set(pairs))
    new_ids: defaultdict[tuple[str, str], set[str]] = defaultdict(set)
    old_ids: defaultdict[tuple[str, str], set[str]] = defaultdict(set)
    for machine, old_id, new_id in distinct:
        new_ids[machine, old_id].add(new_id)
        old_ids[machine, new_id].add(old_id)
    rows: list[tuple[str, str, str, str]] = []
    for machine, old_id, new_id in distinct:
        if len(new_ids[machine, old_id]) > 1:
            reason = "split"
        elif len(old_ids[machine, new_id]) > 1:
            reason = "merged"
        elif old_id != new_id:
            reason = "new_first_event"
        elif old_id in changed_sessions:
            reason = "updated"
        else:
            continue  # the same session, the same summary: nothing to restate
        rows.append((machine, old_id, new_id, reason))
    columns = list(zip(*rows, strict=True)) if rows else [(), (), (), ()]
    return pa.table(
        [pa.array([run] * len(rows), pa.int32()), *(pa.array(values, pa.string()) for values in columns)],
        schema=log_schema(),
    )
