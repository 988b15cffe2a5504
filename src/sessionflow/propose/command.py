"""``sessionflow init --from SAMPLE``: read the first records of a feed, write a proposed config,
and print what that config does to them.

The I/O of the proposal (the sample in, the file out, the summary on stdout); the choices are
made by the pure modules beside this one.
"""

from __future__ import annotations

import gzip
import io
import logging
import sys
import time
import tomllib
from pathlib import Path
from typing import BinaryIO

import orjson

from sessionflow.config import Config, ConfigError
from sessionflow.core import strip_record
from sessionflow.errors import InputError, OutputError
from sessionflow.propose.preview import preview
from sessionflow.propose.proposal import Proposal, propose
from sessionflow.propose.render import render
from sessionflow.propose.times import describe

log = logging.getLogger("sessionflow")

_GZIP_MAGIC = b"\x1f\x8b"


def read_sample(source: str, limit: int) -> list[bytes]:
    """The first ``limit`` non-blank lines of a JSON-lines file (gzip or not), or of standard input (``-``)."""
    try:
        raw: BinaryIO = sys.stdin.buffer if source == "-" else open(source, "rb")  # noqa: SIM115
    except OSError as exc:
        raise InputError(f"{source}: {exc.strerror}") from None
    lines: list[bytes] = []
    try:
        buffered = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(raw)  # type: ignore[type-var]
        stream: BinaryIO = buffered
        if buffered.peek(2)[:2] == _GZIP_MAGIC:
            stream = gzip.GzipFile(fileobj=buffered, mode="rb")  # type: ignore[assignment]
        for line in stream:
            if line.strip():
                lines.append(line.rstrip(b"\r\n"))
                if len(lines) >= limit:
                    break
    except (OSError, EOFError) as exc:
        if not lines:
            raise InputError(f"{source}: cannot read: {exc}") from None
        log.warning("%s: read failed after %d lines (%s): proposing from those", source, len(lines), exc)
    finally:
        if raw is not sys.stdin.buffer:
            raw.close()
    return lines


def records_of(lines: list[bytes]) -> tuple[list[dict[str, object]], int]:
    """The lines that are JSON objects, parsed; and how many are not."""
    records = []
    for line in lines:
        try:
            record = orjson.loads(strip_record(line))
        except orjson.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records, len(lines) - len(records)


def init_from(source: str, path: Path, limit: int, now_ms: int | None = None) -> Proposal:
    """Write the proposal for ``source`` to ``path`` and print what it does to the sample."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    lines = read_sample(source, limit)
    records, unreadable = records_of(lines)
    if not records:
        raise InputError(
            f"{source}: no JSON object in its first {len(lines):,} non-blank lines: nothing to propose from"
        )
    proposal = propose(records, source, now_ms, unreadable)
    text = render(proposal)
    try:
        config = Config.from_dict(tomllib.loads(text))
    except (tomllib.TOMLDecodeError, ConfigError) as exc:  # a bug: the proposal must always load
        raise AssertionError(f"the proposed config does not load: {exc}\n{text}") from exc
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"{path}: cannot write: {exc.strerror or exc}") from None
    print(f"wrote {path}, proposed from the first {len(lines):,} records of {source}:")
    for line in summary(proposal):
        print(line)
    print("on those records, this config gives:")
    for line in preview(config, lines, now_ms).render():
        print(line)
    print(f"check the lines marked CHECK in {path}, then: sessionflow run {source} --config {path} --out lake/")
    return proposal


def summary(proposal: Proposal) -> list[str]:
    fields = proposal.fields
    rows = []
    unknown = "? (none fits: set it in [fields])"
    for role, label in (("machine_id", "machine"), ("event_type", "event type")):
        rows.append((label, fields.get(role, unknown)))
    time = proposal.time
    rows.append(("time", f"{time.field}: {describe(time)}" if time else unknown))
    if proposal.event_id_from:
        rows.append(("event id", f"made from {', '.join(proposal.event_id_from)} (the feed has no unique id)"))
    else:
        rows.append(("event id", fields.get("event_id", unknown)))
    for role in ("user_id", "app_version"):
        if role in fields:
            rows.append((role.replace("_", " "), fields[role]))
    columns = [f"{path} ({kind})" for path, kind in proposal.columns.items()]
    if columns:
        rows.append(("columns", ", ".join(columns)))
    if proposal.renames:
        rows.append(("rename", ", ".join(f"{path} to {name}" for path, name in proposal.renames.items())))
    if proposal.casts:
        rows.append(("cast", ", ".join(f"{path} to {kind}" for path, kind in proposal.casts.items())))
    return [f"  {label:<11} {text}" for label, text in rows]
