"""The console's memory: the newest decision records, their labels, and live subscribers.

A bounded ring (``[console] keep``) with an index by request id. Each record is kept as
its JSON (the bytes the audit log gets, a fraction of the memory of the same record as
Python objects, and nothing for the garbage collector to walk) beside the few fields
the filters read; the API sends the JSON as it is, and decodes only what it computes
with (what-if, calibration). A label re-encodes its record once.

Records and labels are added on the event loop; each live subscriber (one per open
``/console/api/events``) has a bounded queue of its own. A subscriber that does not
keep up has its queue emptied and gets one ``lagged`` event (the page then reloads the
list), rather than holding memory or slowing the requests that publish.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import deque
from collections.abc import Iterator
from typing import Any

import msgspec

from ..protocols._wire import encode
from ._records import Record, all_checks, flagged_stages

__all__ = ["DecisionStore", "Entry", "Filter", "LABEL_STAGES", "LABEL_VERDICTS", "parse_time"]

LABEL_STAGES = ("prompt", "reasoning", "answer")
LABEL_VERDICTS = ("right", "wrong")
_SUBSCRIBER_QUEUE = 1000
_decoder = msgspec.json.Decoder()


def parse_time(value: str) -> float:
    """Seconds since the epoch, or an ISO 8601 time (UTC unless it names a zone)."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r} is neither seconds since the epoch nor an ISO 8601 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


class Entry:
    """One record in the ring: what the filters read, and its JSON."""

    __slots__ = ("request_id", "time", "outcome", "tenant", "model", "stages", "categories", "data")

    def __init__(self, record: Record, data: bytes) -> None:
        self.request_id: str = record["request_id"]
        self.time: float = record.get("time", 0.0)
        self.outcome: str = record.get("outcome", "")
        self.tenant: str = record.get("tenant", "")
        self.model: str = record.get("model", "")
        self.stages = tuple(flagged_stages(record))
        self.categories = tuple(_categories(record))
        self.data = data

    def record(self) -> Record:
        doc: Record = _decoder.decode(self.data)
        return doc


def _categories(record: Record) -> set[str]:
    """FlexGuard's codes named by any verdict, and harmful_reasoning for a
    ReasoningShield verdict above Judgment 0 (the key the annotations use)."""
    out: set[str] = set()
    for _, check in all_checks(record):
        for v in check.get("verdicts", ()):
            out.update(v.get("categories", ()))
            if v.get("guard") == "reasoningshield" and (v.get("risk_score") or 0) > 0:
                out.add("harmful_reasoning")
    return out


class Filter(msgspec.Struct, kw_only=True, frozen=True):
    outcome: str | None = None  # one outcome, or several comma-separated
    stage: str | None = None  # a stage where a check flagged or failed, or that stopped the request
    category: str | None = None  # named by any verdict of any check
    tenant: str | None = None
    model: str | None = None
    since: float | None = None
    until: float | None = None

    def matches(self, e: Entry) -> bool:
        return (
            (self.outcome is None or e.outcome in self.outcome.split(","))
            and (self.tenant is None or e.tenant == self.tenant)
            and (self.model is None or e.model == self.model)
            and (self.since is None or e.time >= self.since)
            and (self.until is None or e.time <= self.until)
            and (self.stage is None or self.stage in e.stages)
            and (self.category is None or self.category in e.categories)
        )


class DecisionStore:
    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._ring: deque[Entry] = deque()
        self._by_id: dict[str, Entry] = {}
        self._subscribers: set[asyncio.Queue[tuple[str, bytes]]] = set()
        # Labels that arrived for a record not (yet) in memory: applied when it comes.
        self._orphan_labels: dict[str, dict[str, str]] = {}

    def __len__(self) -> int:
        return len(self._ring)

    def add(self, record: Record, data: bytes | None = None) -> None:
        """Keep a record; ``data``: its JSON when the caller has it already."""
        labels = self._orphan_labels.pop(record["request_id"], None)
        if labels:
            record["labels"] = {**record.get("labels", {}), **labels}
            data = None
        entry = Entry(record, data if data is not None else encode(record))
        if len(self._ring) >= self.keep:
            old = self._ring.popleft()
            if self._by_id.get(old.request_id) is old:
                del self._by_id[old.request_id]
        self._ring.append(entry)
        self._by_id[entry.request_id] = entry
        self._publish("decision", entry.data)

    def get(self, request_id: str) -> Entry | None:
        return self._by_id.get(request_id)

    def newest(self, where: Filter | None = None, limit: int | None = None) -> Iterator[Entry]:
        n = 0
        for entry in reversed(self._ring):
            if where is None or where.matches(entry):
                yield entry
                n += 1
                if limit is not None and n >= limit:
                    return

    def label(self, line: Record) -> None:
        """Apply a label line ({"type": "label", "request_id", "stage", "verdict"})."""
        entry = self._by_id.get(line["request_id"])
        if entry is None:
            if len(self._orphan_labels) < self.keep:
                self._orphan_labels.setdefault(line["request_id"], {})[line["stage"]] = line["verdict"]
            return
        record = entry.record()
        record.setdefault("labels", {})[line["stage"]] = line["verdict"]
        entry.data = encode(record)
        self._publish("label", encode(line))

    # -- live updates ------------------------------------------------------------------

    def subscribe(self) -> asyncio.Queue[tuple[str, bytes]]:
        q: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(maxsize=_SUBSCRIBER_QUEUE)
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[tuple[str, Any]]) -> None:
        self._subscribers.discard(q)

    def _publish(self, kind: str, data: bytes) -> None:
        for q in self._subscribers:
            try:
                q.put_nowait((kind, data))
            except asyncio.QueueFull:
                while not q.empty():
                    q.get_nowait()
                q.put_nowait(("lagged", b"{}"))
