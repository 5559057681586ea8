"""The console of one worker among several: it follows the shared audit file.

A thread reads the lines the workers append (polling every 0.1 s), follows a rotation
(the path's inode changes: the rest of the old file is read first, then the new one
from its start) and hands decision records and labels to the store on the event loop.
At start it reads the last part of the file, so that a restarted worker's console is
not empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from typing import Any

import msgspec

from ._store import DecisionStore

__all__ = ["AuditFollower"]

logger = logging.getLogger("guardproxy")

_POLL_S = 0.1
_BACKFILL_BYTES = 16 * 1024 * 1024
_decoder = msgspec.json.Decoder()


class AuditFollower:
    def __init__(self, path: str, store: DecisionStore) -> None:
        self.path = path
        self.store = store
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="guardproxy-audit-follow", daemon=True)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)

    def _run(self) -> None:
        f = None
        rest = b""
        backfill = True
        while not self._stop.is_set():
            try:
                if f is None:
                    f = open(self.path, "rb")  # held across polls
                    if backfill:
                        size = os.fstat(f.fileno()).st_size
                        if size > _BACKFILL_BYTES:
                            f.seek(size - _BACKFILL_BYTES)
                            f.readline()  # the first line is cut
                    backfill = False
                data = f.read()
                if data:
                    rest = self._lines(rest + data)
                    continue
                if _rotated(f, self.path):
                    f.close()
                    f, rest = None, b""
                    continue
            except FileNotFoundError:
                backfill = False  # not written yet: everything in it will be new
            except OSError as exc:
                logger.warning("console: cannot read the audit log %s: %s", self.path, exc.strerror or exc)
            self._stop.wait(_POLL_S)
        if f is not None:
            f.close()

    def _lines(self, data: bytes) -> bytes:
        *lines, rest = data.split(b"\n")
        docs = []
        for line in lines:
            with contextlib.suppress(msgspec.DecodeError):
                doc = _decoder.decode(line)
                if isinstance(doc, dict) and isinstance(doc.get("request_id"), str):
                    docs.append((doc, line))
        if docs and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: the app is stopping
                self._loop.call_soon_threadsafe(self._apply, docs)
        return rest

    def _apply(self, docs: list[tuple[dict[str, Any], bytes]]) -> None:
        for doc, line in docs:
            if doc.get("type") == "decision":
                self.store.add(doc, line)
            elif doc.get("type") == "label":
                self.store.label(doc)


def _rotated(f: Any, path: str) -> bool:
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(f.fileno())
    return (current.st_ino, current.st_dev) != (mine.st_ino, mine.st_dev)
