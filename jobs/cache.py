"""The analytics cache: Redis (or Vercel KV's Redis URL), or an embedded ops_cache table.

Both keep the same keys, the same values and the same expiry, so the dashboard
reads what the job wrote whichever is configured.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

# The generic ARRAY, not the PostgreSQL dialect's: importing a dialect's package costs every
# command that imports this module, SQLite ones included (tests/test_cli_imports.py).
from sqlalchemy import ARRAY, Text, any_, bindparam, delete, func, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.elements import ColumnElement

from jobs.db import insert_ignore, is_sqlite, ops_cache, transaction
from jobs.errors import CacheRefusedError, UnreachableError, UsageError
from jobs.redaction import redact

# redis-py is imported where Redis is used: a tenth of a second that the commands and the
# console's first screen, which never touch the cache, need not pay.
if TYPE_CHECKING:
    import redis

READ_BATCH = 5_000  # keys per round trip when reading many
# Values and TTLs of KEYS in one reply: [value1, ttl1, value2, ttl2, ...] (nil: no key).
GET_WITH_TTL = """
local out = {}
for i, key in ipairs(KEYS) do
  out[2 * i - 1] = redis.call('GET', key)
  out[2 * i] = redis.call('TTL', key)
end
return out
"""

# Seconds since the epoch (`time.time`): what the embedded cache measures expiry with.
EpochClock = Callable[[], float]


@dataclass(frozen=True)
class CachedValue:
    key: str
    value: str
    ttl: int | None  # seconds left; None = no expiry


class Cache(Protocol):
    """What the jobs and the faces need of a cache."""

    @property
    def description(self) -> str: ...

    def ping(self) -> None: ...

    def set_many(self, values: Mapping[str, str], ttl: int) -> None:
        """Write (overwrite) every key with the same time to live, in seconds."""

    def get_many(self, keys: Iterable[str]) -> dict[str, CachedValue]:
        """The keys that exist and have not expired."""

    def get(self, key: str) -> CachedValue | None: ...


def check_redis_url(url: str) -> None:
    """UsageError unless redis-py can use `url` (scheme, port, database number, options);
    nothing is connected, so a malformed URL is refused before any work starts."""
    import redis

    try:
        redis.ConnectionPool.from_url(url)
        parts = urlsplit(url)
        db = parts.path.strip("/")
        # redis-py quietly uses database 0 for a path that is not a number.
        if parts.scheme != "unix" and db and not db.isdigit():
            raise ValueError(f"the database {db!r} is not a number (redis://host:port/0)")
    except (ValueError, TypeError) as exc:
        raise UsageError(f"cache URL {redact(url)} is not a valid Redis URL: {exc}") from None


class RedisCache:
    """Redis; writes are pipelined `SET key value EX ttl`."""

    def __init__(self, url: str, prefix: str = "", client: redis.Redis | None = None) -> None:
        import redis

        self.url = url
        self.prefix = prefix
        if client is None:
            check_redis_url(url)
        self._client = client or redis.Redis.from_url(
            url, socket_connect_timeout=3, socket_timeout=10, decode_responses=True
        )
        self._get_with_ttl = self._client.register_script(GET_WITH_TTL)
        self._scripts = True

    @property
    def description(self) -> str:
        return f"redis {redact(self.url)}"

    def _guard(self, what: Callable[[], object]) -> object:
        import redis

        try:
            return what()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
            raise UnreachableError("cache", redact(self.url), reason) from None
        except redis.InvalidResponse as exc:
            # Something answers on that port, but not in Redis's protocol (an HTTP server,
            # a database): as useless to the jobs as no answer at all.
            raise UnreachableError("cache", redact(self.url),
                                   f"the server there is not Redis ({exc})") from None
        except redis.ResponseError as exc:
            # Redis's own words ("OOM command not allowed when used memory > 'maxmemory'",
            # "READONLY ...") are what the operator needs; the stack is not.
            kind = "" if type(exc) is redis.ResponseError else f"{type(exc).__name__}: "
            raise CacheRefusedError(redact(self.url), f"{kind}{exc}") from None

    def ping(self) -> None:
        self._guard(self._client.ping)

    def set_many(self, values: Mapping[str, str], ttl: int) -> None:
        from hiredis import pack_command

        def write() -> None:
            # A pipeline of identical SETs, sent as one buffer packed by hiredis and answered
            # one reply per key on a connection of redis-py's pool (its timeouts and error
            # mapping). redis-py's Pipeline object spends ~10 µs a key on bookkeeping these
            # SETs do not need: 10,000 keys in 0.12 s against 0.05 s (bench/cache_bench.py).
            payload = b"".join([
                # hiredis's stub declares a one-element tuple; it takes any command.
                pack_command(("SET", self.prefix + key, value, "EX", ttl))  # type: ignore[arg-type]
                for key, value in values.items()
            ])
            pool = self._client.connection_pool
            conn = pool.get_connection()

            def send() -> None:
                conn.send_packed_command([payload])  # type: ignore[no-untyped-call]
                for _ in range(len(values)):
                    conn.read_response()  # raises the error of a refused SET

            try:
                # The client's retry policy, as redis-py's own pipeline applies it (none by
                # default: a connection lost mid-batch fails the run, exit 3). Resending the
                # whole batch is safe, SET being idempotent; a refused SET is not retried.
                # A connection Redis closed while it sat in the pool is replaced by
                # get_connection() itself.
                conn.retry.call_with_retry(send, lambda _error: conn.disconnect())  # type: ignore[no-untyped-call]
            except BaseException:
                # Replies left unread would answer the connection's next command.
                conn.disconnect()  # type: ignore[no-untyped-call]
                raise
            finally:
                pool.release(conn)

        if values:
            self._guard(write)

    def get_many(self, keys: Iterable[str]) -> dict[str, CachedValue]:
        import redis
        from hiredis import pack_command

        keys = list(keys)

        def read() -> list[object]:
            # GET and TTL of every key in batches, each one script call: its reply (values
            # and TTLs of 5,000 keys) is one array hiredis parses in C. 100,000 keys as
            # separate replies cost ~1 s of Python on their own.
            if self._scripts:
                try:
                    replies: list[object] = []
                    for start in range(0, len(keys), READ_BATCH):
                        batch = [self.prefix + k for k in keys[start:start + READ_BATCH]]
                        replies.extend(self._get_with_ttl(keys=batch))
                    return replies
                except redis.ResponseError as exc:
                    if "WRONGTYPE" in str(exc):
                        raise
                    self._scripts = False  # scripting off or not allowed (NOPERM) here
            return read_commands()

        def read_commands() -> list[object]:
            # Without scripts: GET and TTL of every key, packed by hiredis in batches as
            # set_many sends its SETs.
            pool = self._client.connection_pool
            conn = pool.get_connection()
            replies: list[object] = []
            try:
                for start in range(0, len(keys), READ_BATCH):
                    batch = keys[start:start + READ_BATCH]
                    payload = b"".join([
                        pack_command((verb, self.prefix + key))  # type: ignore[arg-type]
                        for key in batch for verb in ("GET", "TTL")
                    ])
                    conn.send_packed_command([payload])  # type: ignore[no-untyped-call]
                    replies.extend(conn.read_response() for _ in range(2 * len(batch)))
            except BaseException:
                conn.disconnect()  # type: ignore[no-untyped-call]
                raise
            finally:
                pool.release(conn)
            return replies

        raw = self._guard(read) if keys else []
        assert isinstance(raw, list)
        out: dict[str, CachedValue] = {}
        for i, key in enumerate(keys):
            value, ttl = raw[2 * i], raw[2 * i + 1]
            if value is None:
                continue
            assert isinstance(ttl, int)
            out[key] = CachedValue(key, str(value), ttl if ttl >= 0 else None)
        return out

    def get(self, key: str) -> CachedValue | None:
        return self.get_many([key]).get(key)

    def values(self, keys: Sequence[str]) -> list[str | None]:
        """The value of each key (None: absent or expired), without TTLs: one MGET per
        batch, every batch sent before the first reply is read, so a read of 100,000 keys
        waits for Redis once rather than once per batch, and each reply is one flat array
        hiredis parses in C (half the size of values and TTLs)."""
        from hiredis import pack_command

        def read() -> list[str | None]:
            batches = [keys[start:start + READ_BATCH] for start in range(0, len(keys), READ_BATCH)]
            payload = b"".join([
                pack_command(("MGET", *[self.prefix + k for k in batch]))  # type: ignore[arg-type]
                for batch in batches
            ])
            pool = self._client.connection_pool
            conn = pool.get_connection()
            out: list[str | None] = []
            try:
                conn.send_packed_command([payload])  # type: ignore[no-untyped-call]
                for _ in batches:
                    out.extend(conn.read_response())
            except BaseException:
                conn.disconnect()  # type: ignore[no-untyped-call]
                raise
            finally:
                pool.release(conn)
            return out

        if not keys:
            return []
        raw = self._guard(read)
        assert isinstance(raw, list)
        return raw


class TableCache:
    """The embedded cache: the ops_cache table, expiry checked on read and swept on write."""

    def __init__(self, engine: Engine, clock: EpochClock = time.time) -> None:
        self.engine = engine
        self.clock = clock

    @property
    def description(self) -> str:
        return "embedded (ops_cache table)"

    def now(self) -> datetime:
        """The time expiry is measured against."""
        return datetime.fromtimestamp(self.clock(), UTC)

    @staticmethod
    def live(key: str, value: str, expires: datetime | None, now: datetime) -> CachedValue | None:
        """A row of ops_cache as what a read returns: None once it has expired."""
        if expires is not None and expires <= now:
            return None
        return CachedValue(key, value, None if expires is None
                           else int((expires - now).total_seconds()))

    def ping(self) -> None:
        with transaction(self.engine) as conn:
            conn.execute(select(ops_cache.c.key).limit(1))

    def set_many(self, values: Mapping[str, str], ttl: int) -> None:
        if not values:
            return
        now = self.now()
        expires = now + timedelta(seconds=ttl)
        with transaction(self.engine) as conn:
            conn.execute(delete(ops_cache).where(_key_in(conn, list(values))))
            conn.execute(delete(ops_cache).where(ops_cache.c.expires_at <= now))
            insert_ignore(
                conn,
                ops_cache,
                [{"key": k, "value": v, "expires_at": expires} for k, v in values.items()],
                ["key"],
            )

    def get_many(self, keys: Iterable[str]) -> dict[str, CachedValue]:
        keys = list(keys)
        if not keys:
            return {}
        now = self.now()
        with transaction(self.engine) as conn:
            rows = conn.execute(
                select(ops_cache.c.key, ops_cache.c.value, ops_cache.c.expires_at).where(
                    _key_in(conn, keys)
                )
            ).all()
        out: dict[str, CachedValue] = {}
        for key, value, expires in rows:
            cached = self.live(key, value, expires, now)
            if cached is not None:
                out[key] = cached
        return out

    def get(self, key: str) -> CachedValue | None:
        return self.get_many([key]).get(key)


def _key_in(conn: Connection, keys: list[str]) -> ColumnElement[bool]:
    """`key IN (...)` for any number of keys as one statement with one parameter: an
    array on PostgreSQL, a JSON list that json_each unpacks on SQLite. A parameter per
    key would stop at the driver's limit (65,535 for psycopg, 32,766 for SQLite) long
    before a day of 100,000 tenants."""
    if len(keys) <= 100:
        return ops_cache.c.key.in_(keys)
    if is_sqlite(conn):
        listed = func.json_each(bindparam("keys", json.dumps(keys))).table_valued("value")
        return ops_cache.c.key.in_(select(listed.c.value))
    return ops_cache.c.key == any_(bindparam("keys", keys, type_=ARRAY(Text)))


def open_cache(cache_url: str | None, engine: Engine, prefix: str = "") -> Cache:
    if cache_url:
        return RedisCache(cache_url, prefix=prefix)
    return TableCache(engine)
