"""Small helpers of the operations tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

BENIGN = [{"role": "user", "content": "How do plants grow?"}]
UNSAFE_TRACE = [f" s{i}" for i in range(20)] + [" UNSAFE"] + [f" u{i}" for i in range(60)]
BENIGN_TRACE = [f" step{i}" for i in range(20)]


def eventually(probe: Callable[[], T], timeout: float = 3.0) -> T:
    """``probe()`` once it is truthy: the request's end is recorded just after its last byte."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.01)


def app_of(proxy: Any) -> Any:
    return proxy.server.server.config.app
