"""Errors of the model side.

    GuardError                  anything that kept a guard from giving a verdict
    ├── GuardBackendError       the backend failed: connection, HTTP status, engine error
    │   └── GuardTimeout        no answer within the check's deadline
    └── VerdictParseError       the guard answered, but not in its output format

The proxy treats every GuardError alike (``on_guard_error``): an answer that does not
parse is never read as "safe".
"""

from __future__ import annotations

__all__ = ["GuardError", "GuardBackendError", "GuardTimeout", "VerdictParseError"]


class GuardError(Exception):
    """A guard could not give a verdict."""


class GuardBackendError(GuardError):
    """The backend serving the guard model failed."""


class GuardTimeout(GuardBackendError):
    """The guard gave no answer within the check's deadline."""


class VerdictParseError(GuardError):
    """The guard's output does not follow its output format."""

    def __init__(self, message: str, output: str) -> None:
        super().__init__(message)
        self.output = output
