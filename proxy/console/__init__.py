"""The decisions console and the audit log: decision records, kept, shown, labelled.

``Recorder`` turns each finished guarded request into a decision record (``_records``)
for the in-memory ring (``_store``) and the audit log (``_audit``); with several
workers each worker's ring follows the shared audit log instead (``_follow``).
``console_router`` serves the page and its API at ``/console`` (``_routes``), on the
proxy's port or a listener of its own (``_listener``); ``_whatif`` decides stored
verdicts again under other cuts and calibrates from labels.
"""

from ._listener import console_socket, split_listeners
from ._recorder import Recorder
from ._records import Capture, Record, build_record
from ._routes import ConsoleAccess, console_router
from ._store import DecisionStore, Filter
from ._whatif import calibration, calibration_items, what_if

__all__ = [
    "Capture",
    "ConsoleAccess",
    "DecisionStore",
    "Filter",
    "Record",
    "Recorder",
    "build_record",
    "calibration",
    "calibration_items",
    "console_router",
    "console_socket",
    "split_listeners",
    "what_if",
]
