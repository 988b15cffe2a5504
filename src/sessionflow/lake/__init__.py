"""The lake's protocol, shared by every runtime that writes a lake (``run``, ``backfill``, ``aws-local fetch``).

Layout (DuckDB, Spark and Athena read it as it is)::

    DIR/events/event_date=YYYY-MM-DD/part-RRRRR-NNNNN.parquet
    DIR/sessions/session_date=YYYY-MM-DD/part-RRRRR-NNNNN.parquet
    DIR/rejected/reason=CODE/part-RRRRR-NNNNN.jsonl
    DIR/_sessionflow/ledger/run-NNNNN.json   what each run did (``sessionflow verify`` checks it)
    DIR/_sessionflow/staging/run-NNNNN/      a run's files until it commits
    DIR/_sessionflow/lock                    one writer at a time

The modules: :mod:`.layout` (names and paths), :mod:`.ledger` (the ledger record), :mod:`.lock`,
:mod:`.commit` (staging, the commit point, roll forward, recovery), :mod:`.writer` (the Parquet
writer, needs pyarrow) and :mod:`.verify` (needs DuckDB and pyarrow when it runs). Importing this
package imports none of them.
"""
