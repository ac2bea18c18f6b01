"""Finding tenants by name or id, for the faces (the console's analytics picker, the
CLI's `analytics TENANT`)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import case, func, or_, select
from sqlalchemy.engine import Engine

from jobs.db import require_platform_tables, tenants, transaction
from jobs.errors import UsageError


@dataclass(frozen=True)
class TenantRef:
    id: str
    name: str
    status: str


def search_tenants(engine: Engine, text: str, limit: int = 20) -> list[TenantRef]:
    """Tenants whose id or name contains `text` (any case): an exact id first, then names
    that start with it, then the rest by name. `%` and `_` in the text match themselves."""
    needle = text.strip().lower()
    q = select(tenants.c.id, tenants.c.name, tenants.c.status).limit(limit)
    if needle:
        lid, lname = func.lower(tenants.c.id), func.lower(tenants.c.name)
        q = q.where(or_(lid.contains(needle, autoescape=True),
                        lname.contains(needle, autoescape=True)))
        rank = case((lid == needle, 0), (lname.startswith(needle, autoescape=True), 1), else_=2)
        q = q.order_by(rank, tenants.c.name, tenants.c.id)
    else:
        q = q.order_by(tenants.c.name, tenants.c.id)
    require_platform_tables(engine)  # "no platform tables", not "no such table: tenants"
    with transaction(engine) as conn:
        return [TenantRef(r.id, r.name, r.status) for r in conn.execute(q)]


def get_tenant(engine: Engine, tenant_id: str) -> TenantRef | None:
    require_platform_tables(engine)
    with transaction(engine) as conn:
        row = conn.execute(
            select(tenants.c.id, tenants.c.name, tenants.c.status).where(tenants.c.id == tenant_id)
        ).first()
    return None if row is None else TenantRef(row.id, row.name, row.status)


CANDIDATES_SHOWN = 10  # names an ambiguous lookup lists before "and N more"


class AmbiguousTenantError(UsageError):
    """Part of a name that several tenants share: the candidates, so the operator can
    pick one (exit 2, as any usage error)."""

    def __init__(self, key: str, candidates: list[TenantRef], more: bool) -> None:
        self.key = key
        self.candidates = candidates
        shown = "; ".join(f"{t.name} ({t.id})" for t in candidates[:CANDIDATES_SHOWN])
        extra = len(candidates) - CANDIDATES_SHOWN
        tail = f"; and {extra}{'+' if more else ''} more" if extra > 0 else ""
        super().__init__(f"{key!r} matches {len(candidates)}{'+' if more else ''} tenants: "
                         f"{shown}{tail}; give more of the name, or the id")


def find_tenant(engine: Engine, key: str, *, candidates: int = 50) -> TenantRef:
    """The tenant with this id, else the one with this exact name, else the one whose name
    (or id) contains `key` in any case.

    UsageError when there is none or when several share the exact name (the id tells them
    apart); AmbiguousTenantError, listing them, when the part matches several."""
    require_platform_tables(engine)  # a database that is not StoreFlow's says so
    with transaction(engine) as conn:
        rows = conn.execute(
            select(tenants.c.id, tenants.c.name, tenants.c.status)
            .where(or_(tenants.c.id == key, tenants.c.name == key))
            .order_by((tenants.c.id == key).desc())
            .limit(2)
        ).all()
    if len(rows) > 1 and rows[0].id != key:
        raise UsageError(f"several tenants are named {key!r}; give the tenant id")
    if rows:
        return TenantRef(str(rows[0].id), str(rows[0].name), rows[0].status)
    found = search_tenants(engine, key, limit=candidates + 1) if key.strip() else []
    if not found:
        raise UsageError(f"unknown tenant {key!r}")
    if len(found) > 1:
        raise AmbiguousTenantError(key, found[:candidates], more=len(found) > candidates)
    return found[0]


__all__ = ["AmbiguousTenantError", "TenantRef", "find_tenant", "get_tenant", "search_tenants"]
