"""sessionflow: raw app usage events in, clean, enriched, sessionized events out.

The core (``sessionflow.core``) is pure Python with no I/O; runtimes adapt it to files
(``runtimes.local``), AWS (``runtimes.aws``) and Spark (``runtimes.backfill``).
"""

__version__ = "0.1.0"
