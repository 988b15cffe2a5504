"""A :class:`Proposal` as a commented sessionflow.toml, each choice with what the sample showed."""

from __future__ import annotations

import json
import re
from typing import Any

from sessionflow.config_mapping import TimeFormat
from sessionflow.propose.proposal import REQUIRED, Proposal
from sessionflow.propose.times import describe

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_COMMENT_AT = 40  # the column comments start at, where the line leaves room


def key(name: str) -> str:
    """A TOML key: bare when it can be, else quoted (a dotted path is one key, not a table)."""
    return name if _BARE_KEY.fullmatch(name) else json.dumps(name)


def value(item: Any) -> str:
    """A TOML value: strings as JSON writes them (TOML basic strings read the same escapes)."""
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, str):
        return json.dumps(item, ensure_ascii=False)
    if isinstance(item, list):
        return "[" + ", ".join(value(v) for v in item) + "]"
    if isinstance(item, dict):
        return "{ " + ", ".join(f"{key(k)} = {value(v)}" for k, v in item.items()) + " }"
    return str(item)


def safe(comment: str) -> str:
    """A comment TOML takes: no control character (a sample's values may hold any)."""
    return _CONTROL.sub("?", comment)


def line(text: str, comment: str = "") -> str:
    if not comment:
        return text
    comment = safe(comment)
    return f"{text.ljust(_COMMENT_AT - 1)} # {comment}" if len(text) < _COMMENT_AT - 1 else f"{text}  # {comment}"


def _seconds(value: Any) -> bool:
    """A number that is a plausible time once multiplied by 1000."""
    return isinstance(value, int | float) and not isinstance(value, bool) and 946_684_800 <= value <= 10**10


def _time_table(spec: TimeFormat) -> dict[str, str] | str:
    if spec.timezone is None and spec.into is None:
        return spec.format
    table = {"format": spec.format}
    if spec.timezone is not None:
        table["timezone"] = spec.timezone
    return table


def render(proposal: Proposal) -> str:
    sample = proposal.sample
    out = [
        f"# sessionflow.toml proposed by `sessionflow init --from` from the first {sample.lines:,} records of",
        safe(f"# {proposal.source}. Check the lines marked CHECK, then: sessionflow check-config, sessionflow run."),
        "# Every key is in the README (The config file, Cleaning rules, Bring your own feed).",
        "",
        "[session]",
        line('timeout = "30m"', "a gap longer than this starts a new session"),
    ]
    if proposal.opening_events:
        out.append(line(f"opening_events = {value(proposal.opening_events)}", "event types that start a session"))
    else:
        shown = ", ".join(map(str, proposal.event_types[:6])) or "none"
        out.append(line("opening_events = []", f"CHECK: none of the sample's types ({shown}) looks like an app start"))
    out += ["", "[fields]                                # where the roles are in your records"]
    for role in (*REQUIRED, "user_id", "app_version"):
        path = proposal.fields.get(role)
        note = proposal.notes.get(role, "")
        if role in proposal.missing:
            check = f"CHECK: no field of the sample fits {role}; name yours"
            out.append(line(f"{role} = {value(path)}" if path else f"# {role} = ?", check))
        elif path is not None and path != role:
            out.append(line(f"{role} = {value(path)}", note))
        elif path is not None:
            out.append(line(f"# {role} = {value(path)}", note or "the default"))
    if proposal.time is not None and proposal.time.rule is None:
        out.append(safe(f"#   the time: {describe(proposal.time)}, read as they are"))
        if proposal.time.unread is not None:
            count, example = proposal.time.unread
            seconds = " (seconds? see `scale` in the README's cleaning rules)" if _seconds(example) else ""
            out.append(safe(f"#   CHECK: {count:,} of the sample's times are not, e.g. {example!r}{seconds}"))
    out += ["", "[columns]                               # typed output columns; other fields go to `extra` (JSON)"]
    for name in proposal.removed_columns:
        out.append(line(f"{key(name)} = false", proposal.notes.get(name, "")))
    for path, kind in proposal.columns.items():
        out.append(line(f"{key(path)} = {value(kind)}", proposal.notes.get(path, "")))
    rule = _rule(proposal)
    if rule:
        out += ["", *rule]
    return "\n".join(out) + "\n"


def _rule(proposal: Proposal) -> list[str]:
    """The mapping rule: renames, casts, the event id, the time. Empty when the feed needs none."""
    lines = []
    if proposal.renames:
        moved = ", ".join(f"{name}: {proposal.notes.get(name, '')}" for name in proposal.renames.values())
        lines.append(line(f"rename = {value(proposal.renames)}", f"into the default columns ({moved})"))
    if proposal.casts:
        lines.append(line(f"cast = {value(proposal.casts)}", "numbers (or mixed values) where a string is wanted"))
    if proposal.event_id_from:
        spec: dict[str, Any] = {"from": proposal.event_id_from}
        if proposal.event_id_into != "event_id":
            spec["into"] = proposal.event_id_into
        collisions = proposal.id_collisions
        note = (
            "the same record sent twice gets the same id: a duplicate"
            if not collisions
            else f"CHECK: {collisions:,} records of the sample share an id with another of other content"
        )
        lines.append(line(f"event_id = {value(spec)}", note))
    if proposal.set_type is not None:
        into, kind = proposal.set_type
        lines.append(line(f"set = {value({into: kind})}", "CHECK: one event type for every event; map one of yours"))
    time = proposal.time
    if time is not None and time.rule is not None:
        table = {time.field: _time_table(time.rule)}
        lines.append(f"parse_time = {value(table)}")
        checks = []
        if time.zone_assumed:
            checks.append(f"the sample's times carry no zone: {time.rule.timezone} is a guess, give theirs")
        if time.other_formats:
            others = ", ".join(repr(f) for f in time.other_formats)
            checks.append(f"the sample reads as {others} too (no day past 12): the most recent reading was taken")
        lines += [safe(f"#   {describe(time)}"), *(safe(f"#   CHECK: {check}") for check in checks)]
    if not lines:
        return []
    return [
        "[[clean]]                               # how the feed's records become events",
        'name = "map the feed"',
        *lines,
    ]
