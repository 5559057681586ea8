"""The id, creation time and model of a response, whatever its API."""

from __future__ import annotations

import time
import uuid

__all__ = ["ResponseIds"]


class ResponseIds:
    """id / created / model for what the proxy writes itself: the upstream's when known,
    else an id of the proxy's own (``prefix``: each API's, e.g. ``chatcmpl-guardproxy-``)."""

    __slots__ = ("id", "created", "model")

    def __init__(self, model: str, id: str = "", created: int = 0, prefix: str = "guardproxy-") -> None:
        self.id = id or f"{prefix}{uuid.uuid4().hex}"
        self.created = created or int(time.time())
        self.model = model
