"""What readers of a lake use: ``sessionflow query`` (SQL over the lake's tables, with DuckDB) and
``sessionflow report`` (one self-contained HTML page of figures). Both only read a lake, written by
any runtime (``run``, ``backfill``, ``aws-local fetch``), through :mod:`.lake_db`."""
