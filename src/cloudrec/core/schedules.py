"""Records of scheduled recordings and of recording templates and rules (the CSS style of tasks).

A scheduled task records what its `scope` names (for CSS: the stream "domain/app/stream") between
`start_s` and `end_s`; templates and rules belong to a `service` (the account has no app id there).
Template bodies are the dialect's own JSON: the store keeps them, only the dialect reads them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleRecord:
    task_id: str
    service: str
    scope: str
    start_s: int  # unix seconds
    end_s: int
    template_id: int = 0
    stopped_s: int = 0  # when it was stopped for good through the API; 0 = never
    hidden: bool = False  # deleted through the API: no longer listed (a running recording goes on)
    created_at: float = 0.0
    source_query: str = ""  # a rule's task: the query string of the push it records (CSS `stream_param`)


@dataclass(frozen=True, slots=True, kw_only=True)
class TemplateRecord:
    id: int
    service: str
    name: str
    body: str  # JSON of the dialect's fields
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleRecord:
    """Binds a template to a scope: every push matching it is recorded with that template."""

    id: int
    service: str
    scope: str
    template_id: int
    created_at: float
    updated_at: float
