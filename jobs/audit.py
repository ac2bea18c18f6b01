"""Who changed what, when and why: the audit trail.

Every action that changes something writes one `ops_audit` row through `record`, on the
connection of the transaction that makes the change, so the change and its record are
committed together or not at all. Reads (preview, listings) are never recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection, Engine

from jobs.db import ops_audit, transaction


class AuditAction(StrEnum):
    TRIGGER = "trigger"
    PAUSE = "pause"
    RESUME = "resume"
    EMAIL_RETRY = "email_retry"
    RECOMPUTE = "recompute"
    PRUNE = "prune"
    RELOAD = "reload"


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: AuditAction
    job: str | None
    run_id: int | None
    reason: str | None
    detail: str | None

    def as_json(self) -> dict[str, object]:
        return {"id": self.id, "at": self.at.isoformat(), "actor": self.actor,
                "action": str(self.action), "job": self.job, "run_id": self.run_id,
                "reason": self.reason, "detail": self.detail}


def record(conn: Connection, *, at: datetime, actor: str, action: AuditAction,
           job: str | None = None, run_id: int | None = None, reason: str | None = None,
           detail: str | None = None) -> None:
    """Write one audit row on `conn`: call it inside the transaction making the change."""
    conn.execute(insert(ops_audit).values(
        at=at, actor=actor, action=str(action), job_id=job, run_id=run_id,
        reason=reason or None, detail=detail,
    ))


def recent(engine: Engine, limit: int = 50) -> list[AuditEntry]:
    """The newest `limit` entries, newest first."""
    a = ops_audit.c
    with transaction(engine) as conn:
        rows = conn.execute(
            select(ops_audit).order_by(a.at.desc(), a.id.desc()).limit(limit)
        ).all()
    return [AuditEntry(r.id, r.at, r.actor, AuditAction(r.action), r.job_id, r.run_id,
                       r.reason, r.detail) for r in rows]
