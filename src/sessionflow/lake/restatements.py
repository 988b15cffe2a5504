"""PLACEHOLDER until the shared restatement log lands (replaced at merge)."""

from __future__ import annotations

from collections import defaultdict

import pyarrow as pa

RESTATEMENT_SCHEMA = pa.schema(
    [
        ("run", pa.int32()),
        ("machine_id", pa.string()),
        ("old_session_id", pa.string()),
        ("new_session_id", pa.string()),
        ("reason", pa.string()),
    ]
)


def restatement_log(run: int, old: pa.Table, new: pa.Table, changed_sessions: set[str]) -> pa.Table:
    olds = {
        (m, e): s for m, e, s in zip(*(old.column(n).to_pylist() for n in ("machine_id", "event_id", "session_id")))
    }
    pairs: dict[str, set[str]] = defaultdict(set)
    machine_of: dict[str, str] = {}
    for m, e, s in zip(*(new.column(n).to_pylist() for n in ("machine_id", "event_id", "session_id"))):
        o = olds.get((m, e))
        if o is not None and o in changed_sessions:
            pairs[o].add(s)
            machine_of[o] = m
    into: dict[str, set[str]] = defaultdict(set)
    for o, news in pairs.items():
        for n in news:
            into[n].add(o)
    rows = []
    for o, news in sorted(pairs.items()):
        for n in sorted(news):
            if len(news) > 1:
                reason = "split"
            elif len(into[n]) > 1:
                reason = "merged"
            elif n == o:
                reason = "updated"
            else:
                reason = "new_first_event"
            rows.append(
                {"run": run, "machine_id": machine_of[o], "old_session_id": o, "new_session_id": n, "reason": reason}
            )
    return pa.Table.from_pylist(rows, schema=RESTATEMENT_SCHEMA)
