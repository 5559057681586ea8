"""Errors of the model side.

    GuardError                  anything that kept a guard from giving a verdict
    ├── GuardBackendError       the backend failed: connection, HTTP status, engine error
    │   ├── GuardTimeout        no answer within the check's deadline
    │   └── GuardUnreachable    no connection: refused, no route to the host, unknown name
    └── VerdictParseError       the guard answered, but not in its output format
        └── VerdictTruncated    the guard stopped at max_tokens: its answer may be cut

The proxy treats every GuardError alike (``on_guard_error``): an answer that does not
parse is never read as "safe". A truncated answer is not read at all, even where it
parses: the score line may be cut (``1`` of ``15``), or the verdict may not be written yet.
"""

from __future__ import annotations

__all__ = [
    "GuardBackendError",
    "GuardError",
    "GuardTimeout",
    "GuardUnreachable",
    "VerdictParseError",
    "VerdictTruncated",
]


class GuardError(Exception):
    """A guard could not give a verdict."""


class GuardBackendError(GuardError):
    """The backend serving the guard model failed."""


class GuardTimeout(GuardBackendError):
    """The guard gave no answer within the check's deadline."""


class GuardUnreachable(GuardBackendError):
    """No connection to the guard server could be made (refused, no route to the host,
    a name that does not resolve): it is down or misaddressed, not slow."""


class VerdictParseError(GuardError):
    """The guard's output does not follow its output format."""

    def __init__(self, message: str, output: str) -> None:
        super().__init__(message)
        self.output = output


class VerdictTruncated(VerdictParseError):
    """The guard's generation stopped at ``max_tokens`` (finish_reason "length")."""
