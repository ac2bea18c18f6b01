"""Finding a tenant by id or exact name (`analytics --tenant`). Both databases."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import Engine

from jobs.errors import UsageError
from jobs.tenants import TenantRef, find_tenant
from tests.factories import add_tenant


def test_find_tenant_by_id_or_exact_name(engine: Engine) -> None:
    add_tenant(engine, id="abc-1", name="Twin Shop")
    add_tenant(engine, id="abc-2", name="Twin Shop", status="paused")
    add_tenant(engine, id="Twin Shop", name="Named Like Its Twins")
    add_tenant(engine, id="q-3", name="Quiet Quill")
    assert find_tenant(engine, "q-3") == TenantRef("q-3", "Quiet Quill", "active")
    assert find_tenant(engine, "Quiet Quill").id == "q-3"
    assert find_tenant(engine, "abc-2").status == "paused"
    # An id wins over the names it shares a spelling with.
    assert find_tenant(engine, "Twin Shop").id == "Twin Shop"
    with pytest.raises(UsageError, match="unknown tenant 'quiet quill'"):
        find_tenant(engine, "quiet quill")  # exact: no case folding, no substring


def test_a_name_several_tenants_share_needs_the_id(engine: Engine) -> None:
    add_tenant(engine, id="abc-1", name="Twin Shop")
    add_tenant(engine, id="abc-2", name="Twin Shop")
    with pytest.raises(UsageError) as refused:
        find_tenant(engine, "Twin Shop")
    assert refused.value.message == "several tenants are named 'Twin Shop'; give the tenant id"
