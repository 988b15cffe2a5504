"""Stop taking work before the invocation's time runs out.

Lambda ends an invocation at its timeout wherever it is. Work cut there is not lost (the commit
protocol recovers it), but the whole batch is retried and counts against its retries. So a handler
asks :meth:`TimeBudget.exhausted` before each record (or batch, or shard) it takes: once less than
the reserve is left it takes nothing more, for good, and reports what it left as batch item
failures, which Lambda delivers again from the first of them.
"""

from __future__ import annotations

from typing import Any


class TimeBudget:
    def __init__(self, context: Any, reserve_ms: int) -> None:
        # No Lambda context (the local poller, a test, a hand call): never runs out.
        self._remaining = getattr(context, "get_remaining_time_in_millis", None)
        self.reserve_ms = reserve_ms
        self.spent = False

    def exhausted(self) -> bool:
        """True once less than the reserve is left; it stays True (the records after stay untaken)."""
        if not self.spent and self._remaining is not None:
            self.spent = int(self._remaining()) < self.reserve_ms
        return self.spent
