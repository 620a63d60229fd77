"""One error tree for cloudrec; every error says who is to blame.

    CloudrecError (blame)
    ├── InvalidRequest       client      a request or spec that cannot be run
    ├── NotFound             client      a task or room that does not exist (or has ended)
    ├── LimitReached         client      a quota (concurrency, rate) is exhausted
    ├── Conflict             client      the operation does not fit the current state
    ├── DestinationError     destination storage or callback receiver failed
    └── InternalError        internal    a bug or an unexpected failure of ours

Dialects map these onto vendor error codes; third-party errors are wrapped at the boundary with
`raise … from exc`.
"""

from __future__ import annotations

from enum import Enum


class Blame(Enum):
    CLIENT = "client"
    DESTINATION = "destination"
    INTERNAL = "internal"


class CloudrecError(Exception):
    blame = Blame.INTERNAL

    def __init__(self, message: str, *, field: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field  # which request field is wrong, in core terms, when known
        self.reason = reason  # machine-readable detail (e.g. "missing", "range", "concurrency")


class InvalidRequest(CloudrecError):
    blame = Blame.CLIENT


class NotFound(CloudrecError):
    blame = Blame.CLIENT


class LimitReached(CloudrecError):
    blame = Blame.CLIENT


class Conflict(CloudrecError):
    blame = Blame.CLIENT


class DestinationError(CloudrecError):
    blame = Blame.DESTINATION


class InternalError(CloudrecError):
    blame = Blame.INTERNAL
