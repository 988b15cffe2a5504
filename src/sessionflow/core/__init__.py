"""The pure core: records -> events | rejections; cleaning rules; sessionizer; ids. No I/O."""

from sessionflow.core.ids import session_id
from sessionflow.core.pipeline import LineRefiner, Pipeline, Refined, Tally, rejection_row
from sessionflow.core.refine import Event, Refiner, strip_record
from sessionflow.core.rejections import Reason, Rejection, RejectRecord
from sessionflow.core.sessionizer import Outputs, Sessionizer
from sessionflow.core.snapshot import MachineState, OpenSession, Snapshot, SnapshotError, StreamClock

__all__ = [
    "Event",
    "LineRefiner",
    "MachineState",
    "OpenSession",
    "Outputs",
    "Pipeline",
    "Reason",
    "Refined",
    "Refiner",
    "RejectRecord",
    "Rejection",
    "Sessionizer",
    "Snapshot",
    "SnapshotError",
    "StreamClock",
    "Tally",
    "rejection_row",
    "session_id",
    "strip_record",
]
