"""Finding a tenant by id, exact name or a unique part of a name (`analytics TENANT`).
Both databases."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import Engine

from jobs.errors import UsageError
from jobs.tenants import AmbiguousTenantError, TenantRef, find_tenant
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
    # Else a part of one name, in any case.
    assert find_tenant(engine, "quiet quill").id == "q-3"
    assert find_tenant(engine, "QUILL").id == "q-3"
    with pytest.raises(UsageError, match="unknown tenant 'silver'"):
        find_tenant(engine, "silver")


def test_a_part_several_names_share_lists_them(engine: Engine) -> None:
    add_tenant(engine, id="s-1", name="Silver Oak")
    add_tenant(engine, id="s-2", name="Quicksilver Goods")
    add_tenant(engine, id="s-3", name="Copper Fox")
    with pytest.raises(AmbiguousTenantError) as refused:
        find_tenant(engine, "silver")
    # Names that start with the part first, then the others by name.
    assert [t.id for t in refused.value.candidates] == ["s-1", "s-2"]
    assert refused.value.exit_code == 2
    assert refused.value.message == ("'silver' matches 2 tenants: Silver Oak (s-1); "
                                     "Quicksilver Goods (s-2); give more of the name, or the id")
    for i in range(12):
        add_tenant(engine, id=f"m-{i:02d}", name=f"Market {i:02d}")
    with pytest.raises(AmbiguousTenantError) as refused:
        find_tenant(engine, "market", candidates=11)
    assert refused.value.message.startswith("'market' matches 11+ tenants: Market 00 (m-00); ")
    assert refused.value.message.endswith("; and 1+ more; give more of the name, or the id")


def test_a_name_several_tenants_share_needs_the_id(engine: Engine) -> None:
    add_tenant(engine, id="abc-1", name="Twin Shop")
    add_tenant(engine, id="abc-2", name="Twin Shop")
    with pytest.raises(UsageError) as refused:
        find_tenant(engine, "Twin Shop")
    assert refused.value.message == "several tenants are named 'Twin Shop'; give the tenant id"
