"""``sessionflow query``: SQL over a lake's views (:mod:`.lake_db`), its result as a table, CSV or JSON.

With no SQL on a terminal it is a prompt: statements end with ``;``, ``.tables`` lists the views,
``.quit`` (or end of input) leaves. With no SQL and no terminal, the SQL is read from standard input.
"""

from __future__ import annotations

import contextlib
import csv
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import orjson

from sessionflow.errors import InputError, UsageError
from sessionflow.lake.lock import shared_lock
from sessionflow.report.lake_db import open_lake

FORMATS = ("table", "csv", "json")
PROMPT, MORE = "sessionflow> ", "       ...> "
VIEWS_NOTE = "views: events, sessions, rejected, runs, and restatements when the lake has a restatement log"


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict):
        return orjson.dumps(value, default=str).decode()
    return str(value)


def write_table(names: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO) -> None:
    """Columns padded to their widest value, numbers to the right; then how many rows."""
    cells = [[_text(value) for value in row] for row in rows]
    numeric = [
        all(isinstance(row[i], int | float) and not isinstance(row[i], bool) for row in rows if row[i] is not None)
        for i in range(len(names))
    ]
    widths = [max([len(name), *(len(row[i]) for row in cells)]) for i, name in enumerate(names)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            value.rjust(width) if right else value.ljust(width)
            for value, width, right in zip(values, widths, numeric, strict=True)
        ).rstrip()

    out.write(line(list(names)) + "\n")
    out.write("  ".join("-" * width for width in widths) + "\n")
    for row in cells:
        out.write(line(row) + "\n")
    out.write(f"({len(rows)} row{'s' if len(rows) != 1 else ''})\n")


def write_csv(names: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(names)
    writer.writerows([_text(value) for value in row] for row in rows)


def write_json(names: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO) -> None:
    """A JSON array of one object per row (dates and times as ISO text, decimals as text)."""
    records = [dict(zip(names, row, strict=True)) for row in rows]
    out.write(orjson.dumps(records, default=str, option=orjson.OPT_NON_STR_KEYS).decode() + "\n")


WRITERS: dict[str, Callable[[Sequence[str], Sequence[Sequence[Any]], TextIO], None]] = {
    "table": write_table,
    "csv": write_csv,
    "json": write_json,
}


def _execute(db: Any, sql: str, fmt: str, out: TextIO) -> None:
    """Every statement of ``sql``; each that returns rows is written in ``fmt``."""
    import duckdb

    try:
        statements = db.extract_statements(sql)
    except duckdb.Error as exc:
        raise UsageError(f"query: {exc}") from None
    for statement in statements:
        try:
            cursor = db.execute(statement)
            rows = cursor.fetchall() if cursor.description else None
        except duckdb.IOException as exc:
            raise InputError(f"query: {exc}") from None
        except duckdb.Error as exc:
            raise UsageError(f"query: {exc}") from None
        if rows is not None:
            WRITERS[fmt]([column[0] for column in cursor.description], rows, out)


def query(lake: Path, sql: str | None, fmt: str, *, stdin: TextIO = sys.stdin, out: TextIO = sys.stdout) -> None:
    """``sql`` over the lake; None: the prompt on a terminal, else the SQL standard input holds."""
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    db, _ = open_lake(lake)
    with shared_lock(lake):
        if sql is not None:
            _execute(db, sql, fmt, out)
        elif stdin.isatty():
            prompt(db, fmt, out)
        else:
            text = stdin.read()
            if not text.strip():
                raise UsageError("query: no SQL given (as an argument, or on standard input)")
            _execute(db, text, fmt, out)


def prompt(db: Any, fmt: str, out: TextIO, read: Callable[[str], str] = input) -> None:
    """Statements typed at a prompt until ``.quit`` or the end of input; an error is shown, not fatal."""
    with contextlib.suppress(ImportError):  # line editing and history, where the platform has them
        import readline  # noqa: F401
    out.write(f"sessionflow query: SQL ending with ';'. {VIEWS_NOTE}. .tables, .quit\n")
    pending: list[str] = []
    while True:
        try:
            line = read(MORE if pending else PROMPT)
        except EOFError:
            out.write("\n")
            return
        except KeyboardInterrupt:
            out.write("\n")
            pending.clear()
            continue
        stripped = line.strip()
        if not pending and stripped in (".quit", ".exit", "quit", "exit"):
            return
        if not pending and stripped == ".tables":
            _execute(db, "SELECT table_name AS view FROM information_schema.tables ORDER BY 1", "table", out)
            continue
        if not stripped and not pending:
            continue
        pending.append(line)
        if not stripped.endswith(";"):
            continue
        sql, pending = "\n".join(pending), []
        try:
            _execute(db, sql, fmt, out)
        except (UsageError, InputError) as exc:
            out.write(f"{exc}\n")
