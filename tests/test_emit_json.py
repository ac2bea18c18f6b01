"""`--json` output is what json.dumps(indent=2, default=str) wrote before orjson took over the
common case: the same text for scripts that compare it, and non-ASCII still escaped so no
control or bidi character in a tenant's name reaches a terminal raw."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from console.context import CliContext


@dataclass(frozen=True)
class Point:
    x: int


def emitted(data: Any) -> str:
    ctx = CliContext.__new__(CliContext)
    ctx.stdout = io.StringIO()
    ctx.emit_json(data)
    return ctx.stdout.getvalue()


@pytest.mark.parametrize("data", [
    {"run": {"id": 7, "started_at": datetime(2026, 11, 29, 2, 0, tzinfo=UTC),
             "revenue": Decimal("12.30"), "items": [], "summary": {}, "ratio": 0.25,
             "point": Point(1), "error": None, "ok": True}},
    {3: "int keys become strings"},
    [{"tenant_name": "Evil\r\n\x1b[31mShop\x9b2J\u202e"}],
    {"tenant_name": "Café Ünïcode"},
    {"too_big_for_64_bits": 2 ** 70},
])
def test_json_output_is_what_the_standard_library_writes(data: Any) -> None:
    text = emitted(data)
    assert text == json.dumps(data, indent=2, default=str) + "\n"
    assert text.isascii()


def streamed(data: dict[str, Any], path: tuple[str, ...], items: list[Any]) -> str:
    ctx = CliContext.__new__(CliContext)
    ctx.stdout = io.StringIO()
    ctx.emit_json_with_items(data, path, iter(items))
    return ctx.stdout.getvalue()


ITEM = {"tenant_id": "t1", "detail": {"orders": 3, "revenue": Decimal("9.50"), "tags": []}}


@pytest.mark.parametrize("items", [
    [],
    [ITEM],
    [ITEM, {"tenant_id": "t2", "detail": {}}, 7, [1, [2]], None],
    [ITEM, {"tenant_name": "Evil\x1b[31m\u202eShop"}],
])
def test_items_written_one_at_a_time_are_the_whole_documents_text(items: list[Any]) -> None:
    head = {"message": "Job completed", "run_id": 4, "now": datetime(2026, 11, 29, tzinfo=UTC),
            "results": {"processed": len(items), "errors": [], "items": ["replaced"],
                        "summary": {"tenants": 2}}, "timestamp": "2026-11-29T00:00:00Z"}
    whole = {**head, "results": {**head["results"], "items": items}}
    text = streamed(head, ("results", "items"), items)
    assert text == json.dumps(whole, indent=2, default=str) + "\n"
    assert json.loads(text)["results"]["items"] == json.loads(json.dumps(items, default=str))
    assert head["results"]["items"] == ["replaced"]  # the caller's document is left as it was


def test_a_list_at_the_top_level_of_the_document_streams_too() -> None:
    assert streamed({"items": []}, ("items",), [1, {"a": "b"}]) == json.dumps(
        {"items": [1, {"a": "b"}]}, indent=2) + "\n"
