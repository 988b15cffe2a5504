"""Keyed state stores behind one small protocol: the memory store and DynamoDB.

See :mod:`sessionflow.state.base` for the contract every backend honours.
"""

from sessionflow.state.base import Item, StateStore, StoreStats
from sessionflow.state.memory import MemoryStore

__all__ = ["Item", "MemoryStore", "StateStore", "StoreStats"]
