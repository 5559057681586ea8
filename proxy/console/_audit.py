"""The audit log: decision records and labels as JSON lines, written off the request path.

A request only puts its line in a bounded queue (``[audit] queue``) and never waits: a
thread of its own drains the queue to the file. When the queue is full, or the disk
refuses a write (full, gone, read-only), the lines are dropped, counted
(``guardproxy_audit_dropped_total{reason}``) and logged at most every 10 s; the request
that made them has already been answered, and is not delayed.

Every write is whole lines to a file opened with ``O_APPEND``, under an exclusive
``flock`` of that file, so several processes (``serve --workers N``) append to one file
without interleaving, and the one that finds the file past ``max_bytes`` rotates it
(``path`` -> ``path.1`` -> ... -> ``path.<keep_files>``) while holding the lock. A
writer whose file was rotated by another process finds the path's inode changed and
reopens. Lines reach the kernel at once (no fsync: a machine crash may lose the last
ones).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import queue
import stat
import threading
import time
from collections.abc import Callable

from .._config import AuditConfig

__all__ = ["AuditWriter"]

logger = logging.getLogger("guardproxy")

_BATCH = 512  # lines per write: one lock and one system call for a burst
_LOG_EVERY_S = 10.0


class AuditWriter:
    def __init__(self, config: AuditConfig, on_drop: Callable[[str, int], None] | None = None) -> None:
        assert config.path is not None
        self.path = config.path
        self.max_bytes = config.max_bytes
        self.keep_files = config.keep_files
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=config.queue)
        self._on_drop = on_drop
        self.dropped = 0
        self.written = 0
        self._fd: int | None = None
        self._logged_at = 0.0
        self._unlogged = 0
        self._drop_lock = threading.Lock()  # requests drop on a full queue, the thread on a failed write
        self._thread = threading.Thread(target=self._run, name="guardproxy-audit", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, line: bytes) -> None:
        """Queue one line (JSON, without its newline); never blocks, never raises."""
        try:
            self._queue.put_nowait(line)
        except queue.Full:
            self._drop("queue_full", 1, None)

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued (for at most ``timeout_s``), then stop."""
        if not self._thread.is_alive():
            return
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            logger.warning("audit log: the queue did not drain at shutdown; %d lines dropped", self._queue.qsize())
        self._thread.join(timeout_s)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until what was queued so far is written or dropped (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.005)
        return False

    # -- the writer thread -------------------------------------------------------------

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            lines = [first]
            while len(lines) < _BATCH:
                try:
                    lines.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(line is None for line in lines)
            batch = [line for line in lines if line is not None]
            try:
                if batch:
                    self._write(b"\n".join(batch) + b"\n", len(batch))
            finally:
                for _ in lines:
                    self._queue.task_done()
            if stop:
                return

    def _write(self, data: bytes, count: int) -> None:
        try:
            fd = self._locked_fd()
        except OSError as exc:
            self._drop("write_error", count, exc)
            return
        try:
            info = os.fstat(fd)
            if stat.S_ISREG(info.st_mode) and info.st_size and info.st_size + len(data) > self.max_bytes:
                fd = self._rotate(fd)
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            self.written += count
        except OSError as exc:
            self._drop("write_error", count, exc)
        finally:
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def _locked_fd(self) -> int:
        """The file's descriptor, locked, and still the file at ``path`` (another
        process may have rotated it while this one waited for the lock)."""
        for _ in range(10):
            if self._fd is None:
                self._fd = self._open()
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            mine = os.fstat(self._fd)
            if current is not None and (current.st_ino, current.st_dev) == (mine.st_ino, mine.st_dev):
                return self._fd
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        raise OSError(errno.EAGAIN, "the audit file kept changing under the lock")

    def _rotate(self, fd: int) -> int:
        """Shift path.N-1 -> path.N ... path -> path.1 under the lock; a fresh file."""
        if self.keep_files == 0:
            os.unlink(self.path)
        else:
            for n in range(self.keep_files - 1, 0, -1):
                older = f"{self.path}.{n}"
                if os.path.exists(older):
                    os.replace(older, f"{self.path}.{n + 1}")
            os.replace(self.path, f"{self.path}.1")
        new = self._open()
        fcntl.flock(new, fcntl.LOCK_EX)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        self._fd = new
        return new

    def _drop(self, reason: str, count: int, exc: OSError | None) -> None:
        if self._on_drop is not None:
            with contextlib.suppress(Exception):
                self._on_drop(reason, count)
        with self._drop_lock:
            self.dropped += count
            self._unlogged += count
            now = time.monotonic()
            if now - self._logged_at < _LOG_EVERY_S:
                return
            unlogged, self._unlogged, self._logged_at = self._unlogged, 0, now
        cause = f": {exc.strerror or exc}" if exc is not None else ""
        logger.warning("audit log %s: %d records dropped (%s%s); requests are not affected", self.path, unlogged, reason, cause)
