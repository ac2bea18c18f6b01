"""What every command gets: parsed settings and a lazily opened, migrated database."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, TextIO

from console.formatting import terminal_safe
from jobs.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from jobs.cache import Cache


@dataclass
class CliContext:
    settings: Settings
    json: bool = False
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)

    @cached_property
    def engine(self) -> Engine:
        """The database, reachable and with current ops_ tables (or UnreachableError; a
        SQLite file that does not exist is a UsageError, see make_engine)."""
        from jobs.db import make_engine
        from jobs.migrate import checked

        return checked(make_engine(self.settings.database_url, create=False))

    def close(self) -> None:
        """Close the database, if the command opened it (before the frozen exit, see
        console.cli.entry)."""
        from jobs.db import dispose_quietly

        dispose_quietly(self.__dict__.pop("engine", None))

    def cache(self) -> Cache:
        from jobs.cache import open_cache  # redis-py, for the commands that read the cache

        return open_cache(self.settings.cache_url, self.engine, self.settings.cache_prefix)

    # Text output goes through terminal_safe: whatever data it quotes, no control
    # character reaches the terminal. emit_json stays exact (JSON escapes them itself).
    def out(self, text: str = "") -> None:
        print(terminal_safe(text, keep_newlines=True), file=self.stdout)

    def err(self, text: str) -> None:
        print(terminal_safe(text, keep_newlines=True), file=self.stderr)

    def emit_json(self, data: Any) -> None:
        print(json_text(data), file=self.stdout)

    def emit_json_with_items(self, data: dict[str, Any], path: tuple[str, ...],
                             items: Iterable[Any]) -> None:
        """`data` with `items` as the list at `path` (a key of nested dicts), written one
        item at a time: a run's report of 40,000 tenants is never one document in memory,
        nor one string. The text is exactly what emit_json of the whole would write."""
        doc = placed = dict(data)
        for key in path[:-1]:
            placed[key] = placed = dict(placed[key])
        placed[path[-1]] = _ITEMS_HERE
        head, marker, tail = json_text(doc).partition(json_text(_ITEMS_HERE))
        assert marker, "the items' place was not found"
        line_start = head.rfind("\n") + 1
        indent = " " * (len(head) - line_start - len(head[line_start:].lstrip()) + 2)
        write = self.stdout.write
        write(head + "[")
        first = True
        for item in items:
            write(("\n" if first else ",\n") + indent
                  + json_text(item).replace("\n", "\n" + indent))
            first = False
        write("]" if first else "\n" + indent[:-2] + "]")
        write(tail + "\n")


# What emit_json_with_items writes in the items' place first: a string no data contains.
_ITEMS_HERE = "\0items go here\0"


def json_text(data: Any) -> str:
    """`json.dumps(data, indent=2, default=str)`, quicker.

    orjson first: a run's report lists every tenant, and json.dumps took a quarter of a
    second for 10,000 of them. Datetimes and dataclasses pass through to `str`, as with
    json.dumps(default=str), so the text is the same (tests/test_emit_json.py). Non-ASCII
    output goes through json.dumps after all: its \\u escapes keep a bidi override or a
    C1 control in a tenant's name from reaching the terminal raw, where orjson writes
    them as UTF-8."""
    import orjson

    options = (orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS
               | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS)
    try:
        text = orjson.dumps(data, default=str, option=options).decode()
    except orjson.JSONEncodeError:  # what json.dumps takes and orjson not: huge ints
        text = "\N{REPLACEMENT CHARACTER}"
    if not text.isascii():
        import json

        text = json.dumps(data, indent=2, default=str)
    return text
