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
