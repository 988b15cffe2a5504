"""Which sessionizer runs: the compiled one (``_native``, built from ``_native.pyx``) when present.

The compiled sessionizer is the pure one with native data structures; it takes the same records,
writes the same snapshots and gives the same results (``tests/core/test_native.py``). An
installation that could not compile it (no C compiler) runs the pure one, and so does any run with
``SESSIONFLOW_PURE=1`` in its environment: the way to rule the compiled code out when in doubt.
This is the one place the choice is made: a runtime's own compiled parts follow it (the local
runtime's block feed, ``sessionflow.runtimes.local.feeds.sessionizing``).
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import cast

from sessionflow.config import SessionConfig
from sessionflow.core.sessionizer import Sessionizer

PURE_ENV = "SESSIONFLOW_PURE"


def compiled() -> ModuleType | None:
    """The compiled module, or None when it is not built or ``SESSIONFLOW_PURE`` is set."""
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return None
    try:
        from sessionflow.core import _native
    except ImportError:
        return None
    return _native


def sessionizer_class() -> type[Sessionizer]:
    """The class to build and restore sessionizers with (both have ``Sessionizer``'s methods)."""
    module = compiled()
    # Not a subclass, but the same methods and results (tests/core/test_native.py): typed as one.
    return Sessionizer if module is None else cast(type[Sessionizer], module.NativeSessionizer)


def new_sessionizer(config: SessionConfig) -> Sessionizer:
    return sessionizer_class()(config)


def implementation() -> str:
    """``"compiled"`` or ``"pure"``: for reports and benchmarks."""
    return "pure" if compiled() is None else "compiled"
