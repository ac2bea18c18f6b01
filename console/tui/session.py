"""What every screen of the console shares: settings, the clock, read-only mode, and the
database and cache once they are open. No Textual here, so it is easy to test and reuse."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine

from jobs.cache import Cache, open_cache
from jobs.db import dispose_quietly, make_engine
from jobs.errors import OpsError
from jobs.presence import who_am_i
from jobs.redaction import redact
from jobs.settings import Settings
from jobs.timeutil import Clock, utc_now

CacheFactory = Callable[[Engine], Cache]


class NotConnectedError(OpsError):
    def __init__(self) -> None:
        super().__init__("not connected to the database yet")


@dataclass
class Session:
    settings: Settings
    read_only: bool = False
    clock: Clock = utc_now
    engine: Engine | None = None
    cache_factory: CacheFactory | None = None
    started_by: str = field(default_factory=who_am_i)
    _cache: Cache | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def connect(self) -> Engine:
        """Open (or re-check) the database and bring the ops_ tables up to date.
        Raises UnreachableError/UsageError with a message fit for the status line."""
        from jobs.migrate import checked  # Alembic: loaded off the UI's first paint

        with self._lock:
            self.engine = checked(self.engine or make_engine(self.settings.database_url,
                                                             create=False))
            return self.engine

    def close(self) -> None:
        """Close the database once the console has ended (before the frozen exit, see
        console.cli.entry)."""
        with self._lock:
            engine, self.engine = self.engine, None
        dispose_quietly(engine)

    @property
    def connected(self) -> bool:
        return self.engine is not None

    def db(self) -> Engine:
        if self.engine is None:
            raise NotConnectedError()
        return self.engine

    def cache(self) -> Cache:
        if self._cache is None:
            engine = self.db()
            self._cache = (self.cache_factory(engine) if self.cache_factory is not None
                           else open_cache(self.settings.cache_url, engine,
                                           self.settings.cache_prefix))
        return self._cache

    @property
    def database_label(self) -> str:
        return redact(self.settings.database_url)

    @property
    def cache_label(self) -> str:
        if self.settings.cache_url:
            return f"redis {redact(self.settings.cache_url)}"
        return "embedded (ops_cache table)"

    @property
    def smtp_label(self) -> str | None:
        return redact(self.settings.smtp_url) if self.settings.smtp_url else None
