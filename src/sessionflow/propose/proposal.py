"""A proposed config for a feed, from a sample of its records: fields, columns, and one mapping rule.

Pure: records in, a :class:`Proposal` out; :mod:`render` writes it as a commented sessionflow.toml.
Every choice says why (``notes``), and what the sample could not tell is marked to check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sessionflow.config import DEFAULT_COLUMNS, RESERVED_COLUMNS, column_name
from sessionflow.config_mapping import TimeFormat
from sessionflow.propose import roles
from sessionflow.propose.sample import Leaf, Sample, analyse
from sessionflow.propose.times import TimeGuess, guess_time

REQUIRED = ("event_id", "machine_id", "event_type", "timestamp")
ROLES = (*REQUIRED, "user_id", "app_version")
MAX_COLUMNS = 16
COMMON = 0.5  # a field in at least this share of the sample gets a typed column
OPENING_EVENTS = frozenset(
    {"app_open", "Application Opened", "application_opened", "session_start", "Session Started", "session_started"}
)
_INT64 = (-(2**63), 2**63 - 1)
_OUTPUT_NAMES = frozenset({*REQUIRED, *(name for name, _ in DEFAULT_COLUMNS), *RESERVED_COLUMNS})


@dataclass
class Proposal:
    source: str
    sample: Sample
    fields: dict[str, str] = field(default_factory=dict)  # role -> the field (path) that holds it
    notes: dict[str, str] = field(default_factory=dict)  # role or column -> what the sample shows
    missing: list[str] = field(default_factory=list)  # required roles no field fits
    time: TimeGuess | None = None
    event_id_from: list[str] = field(default_factory=list)  # the fields of an event_id rule, if one
    id_collisions: int = 0  # records whose made id another record of other content shares
    event_id_into: str = "event_id"
    casts: dict[str, str] = field(default_factory=dict)
    renames: dict[str, str] = field(default_factory=dict)  # path -> the default column it fills
    columns: dict[str, str] = field(default_factory=dict)  # path -> type, added to the defaults
    removed_columns: list[str] = field(default_factory=list)  # default columns set to false
    opening_events: list[str] = field(default_factory=list)
    event_types: list[str] = field(default_factory=list)
    # No field fits the event type: every event gets this one (set), into a field of its own.
    set_type: tuple[str, str] | None = None

    @property
    def parse_time(self) -> TimeFormat | None:
        return self.time.rule if self.time is not None else None


def propose(records: list[dict[str, Any]], source: str, now_ms: int, unreadable: int = 0) -> Proposal:
    sample = analyse(records, unreadable)
    proposal = Proposal(source, sample)
    taken: list[str] = []

    def take(role: str, leaf: Leaf | None, note: str) -> None:
        if leaf is None:
            if role in REQUIRED:
                proposal.missing.append(role)
            return
        proposal.fields[role] = leaf.path
        proposal.notes[role] = note
        taken.append(leaf.path)
        if role != "timestamp" and _mostly_not_text(leaf):
            proposal.casts[leaf.path] = "string"

    event_id = roles.pick_event_id(sample)
    if event_id is not None:
        take("event_id", event_id, f"unique in the sample ({event_id.distinct:,} values)")
    machine = roles.pick_machine(sample, taken)
    take("machine_id", machine, _values_note(sample, machine, "machines"))
    event_type = roles.pick_type(sample, taken)
    if event_type is not None:
        take("event_type", event_type, _values_note(sample, event_type, "types"))
        counts = _counts(event_type.values)
        proposal.event_types = [value for value, _ in counts]
        proposal.opening_events = sorted(OPENING_EVENTS & set(proposal.event_types))
    else:
        # Every event of one type (a web log's requests): sessions by time alone, until the user maps one.
        into = _free_name(sample, "event_type")
        proposal.set_type = (into, "event")
        proposal.fields["event_type"] = into
        proposal.notes["event_type"] = "CHECK: no field of the sample looks like an event type: set by the rule below"
    proposal.time = _pick_time(sample, now_ms, taken)
    if proposal.time is not None:
        time_leaf = sample.leaves[proposal.time.field]
        proposal.fields["timestamp"] = time_leaf.path
        proposal.notes["timestamp"] = proposal.time.what
        taken.append(time_leaf.path)
    else:
        proposal.missing.append("timestamp")
    for role, leaf in (
        ("user_id", roles.pick_optional(sample, roles.USER_HINTS, taken)),
        ("app_version", roles.pick_app_version(sample, taken)),
    ):
        if leaf is not None:
            take(role, leaf, f"in {_share(sample, leaf)} of the records")
    if event_id is None and machine is not None and proposal.time is not None:
        base = [machine.path, proposal.time.field, event_type.path if event_type else ""]
        proposal.event_id_from, proposal.id_collisions = roles.id_fields(sample, base)
        # The made id goes to a field of its own, never over one the feed has.
        into = _free_name(sample, "event_id")
        proposal.event_id_into = into
        proposal.fields["event_id"] = into
        proposal.notes["event_id"] = "made by the rule below: no field of the sample is a unique event id"
        if "event_id" in proposal.missing:
            proposal.missing.remove("event_id")
    elif event_id is None:
        proposal.missing.append("event_id")
    _unclash(proposal)
    _renames(proposal, taken)
    _default_columns(proposal)
    _columns(proposal, taken)
    return proposal


def overlap(one: str, other: str) -> bool:
    """The same field, or one inside the other."""
    return one == other or one.startswith(other + ".") or other.startswith(one + ".")


def _unclash(proposal: Proposal) -> None:
    """A role left at its default name must not name a field another role reads (the time in ``user_id``)."""
    for role in ROLES:
        if role not in proposal.fields and any(overlap(role, path) for path in proposal.fields.values()):
            proposal.fields[role] = _free_name(proposal.sample, role)
            proposal.notes.setdefault(role, f"its default, {role!r}, is another role's field here")


def _free_name(sample: Sample, name: str) -> str:
    """``name``, or ``_name``, ``__name``...: a top-level field no record of the sample has."""
    while any(path == name or path.startswith(name + ".") for path in sample.leaves) or any(
        name in record for record in sample.records
    ):
        name = "_" + name
    return name


def _pick_time(sample: Sample, now_ms: int, taken: list[str]) -> TimeGuess | None:
    named = roles.by_name(sample, roles.TIME_HINTS, taken)
    others = [leaf for leaf in sample.leaves.values() if leaf not in named and leaf.path not in taken]
    for leaf in [*named, *others]:
        if not sample.everywhere(leaf):
            continue
        guess = guess_time(leaf, now_ms)
        if guess is not None:
            return guess
    return None


def _counts(values: list[Any]) -> list[tuple[Any, int]]:
    counted: dict[Any, int] = {}
    for value in values:
        counted[value] = counted.get(value, 0) + 1
    return sorted(counted.items(), key=lambda item: (-item[1], str(item[0])))


def _mostly_not_text(leaf: Leaf) -> bool:
    """Numbers where a string is wanted, more than once in a hundred values: the feed's way, cast them.
    Rarer, they are broken records, rejected as wrong_type as ever."""
    return leaf.count - leaf.types["str"] > leaf.count // 100


def _share(sample: Sample, leaf: Leaf) -> str:
    return f"{leaf.count / max(1, sample.size):.0%}"


def _values_note(sample: Sample, leaf: Leaf | None, what: str) -> str:
    if leaf is None:
        return ""
    common = ", ".join(str(value) for value, _ in _counts(leaf.values)[:3])
    return f"{leaf.distinct:,} {what} in the sample (e.g. {common})"


def _renames(proposal: Proposal, taken: list[str]) -> None:
    """A default column the feed keeps under another name (``context.os.name``) is moved there.

    Only when no record has a field of the column's own name (a rename would write over it), and the
    field holds strings or whole numbers, as the column wants.
    """
    sample = proposal.sample
    required = [proposal.fields.get(role, role) for role in REQUIRED]
    for name, hints in (("os", roles.OS_HINTS), ("document_id", roles.DOCUMENT_HINTS)):
        if any(name in record for record in sample.records) or any(overlap(name, path) for path in required):
            continue
        leaf = roles.pick_optional(sample, hints, [*taken, *proposal.renames])
        if leaf is None or any(overlap(leaf.path, path) for path in [*required, *taken]):
            continue
        proposal.renames[leaf.path] = name
        proposal.notes[name] = f"from {leaf.path!r}, in {_share(sample, leaf)} of the records"


def _default_columns(proposal: Proposal) -> None:
    """A default column (user_id, app_version, os, document_id) must take what the feed has there."""
    sample = proposal.sample
    required = [proposal.fields.get(role, role) for role in REQUIRED]
    for name, _ in DEFAULT_COLUMNS:
        if any(overlap(name, path) for path in required):
            proposal.removed_columns.append(name)
            proposal.notes[name] = f"{name!r} is a required field here"
            continue
        moved = [path for path, into in proposal.renames.items() if into == name]
        if moved:
            if _mostly_not_text(sample.leaves[moved[0]]):
                proposal.casts[name] = "string"  # the rename runs first: the cast names the column
            continue
        path = proposal.fields.get(name, name)
        top = [record.get(path) for record in sample.records if "." not in path]
        containers = any(isinstance(value, dict | list) for value in top)
        leaf = sample.leaves.get(path)
        if containers or (leaf is not None and not leaf.only("str", "int", "float", "bool")):
            proposal.removed_columns.append(name)
            proposal.notes[name] = f"{path!r} holds objects or lists in the sample: kept in extra"
        elif leaf is not None and _mostly_not_text(leaf):
            proposal.casts[path] = "string"


def _columns(proposal: Proposal, taken: list[str]) -> None:
    sample = proposal.sample
    used = set(taken) | set(proposal.casts) | set(proposal.renames) | {proposal.event_id_into}
    names = set(_OUTPUT_NAMES)
    # Fields a column may not be inside of, or hold: the roles' and the default columns'.
    kept = [name for name, _ in DEFAULT_COLUMNS if name not in proposal.removed_columns]
    fixed = [*(proposal.fields.get(role, role) for role in ROLES), *kept, *proposal.renames]
    common = [
        leaf
        for leaf in sorted(sample.leaves.values(), key=lambda leaf: (-leaf.count, leaf.path))
        if leaf.count >= COMMON * sample.size and leaf.path not in used
    ]
    for leaf in common:
        if len(proposal.columns) >= MAX_COLUMNS:
            break
        name = column_name(leaf.path)
        if name in names or any(overlap(leaf.path, path) for path in fixed):
            continue
        kind = _column_kind(leaf)
        if kind is None:
            continue
        if kind == "string" and not leaf.only("str"):
            proposal.casts[leaf.path] = "string"
        proposal.columns[leaf.path] = kind
        proposal.notes[leaf.path] = f"in {_share(sample, leaf)} of the records"
        names.add(name)
        fixed.append(leaf.path)


def _column_kind(leaf: Leaf) -> str | None:
    if not leaf.only("str", "int", "float", "bool"):
        return None
    if leaf.only("str"):
        return "string"
    if leaf.only("bool"):
        return "bool"
    if leaf.only("int"):
        return "int" if all(_INT64[0] <= value <= _INT64[1] for value in leaf.values) else "float"
    if leaf.only("int", "float"):
        return "float"
    return "string"  # mixed: cast to string
