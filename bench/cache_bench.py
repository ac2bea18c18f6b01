"""Benchmark of RedisCache.set_many: the analytics job's 10,000 writes (ten chunks of 1,000).

    python bench/cache_bench.py [--keys 10000] [--repeat 9]
    REDIS_URL=redis://... python bench/cache_bench.py

Side by side, alternating, against the same Redis:
- `set_many`: jobs.cache.RedisCache.set_many (one hiredis-packed buffer per chunk, one reply
  read per key);
- `pipeline`: redis-py's own Pipeline with one raw `SET key value EX ttl` per key, which is
  what set_many did before;
- `pipeline-set`: the same Pipeline with redis-py's `set(key, value, ex=ttl)`.
Every variant writes the same keys under its own prefix; the script checks that each wrote
every key with its value and TTL, then deletes them. Prints the median of --repeat runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from jobs.cache import RedisCache  # noqa: E402

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
CHUNK = 1_000  # jobs.analytics.CHUNK
TTL = 86_400


def values_for(count: int) -> dict[str, str]:
    return {
        f"analytics:{uuid.UUID(int=i)}:overview:daily:2026-11-27":
            f'{{"tenantId":"{uuid.UUID(int=i)}","date":"2026-11-27","orders":{i % 40},'
            f'"revenue":{i % 997}.5,"newCustomers":{i % 7},"productsSold":{i % 90},'
            '"generatedAt":"2026-11-28T01:00:00.000Z"}'
        for i in range(count)
    }


def chunks(values: dict[str, str]) -> list[dict[str, str]]:
    items = list(values.items())
    return [dict(items[i : i + CHUNK]) for i in range(0, len(items), CHUNK)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args(argv)

    tag = uuid.uuid4().hex[:8]
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    values = values_for(args.keys)
    parts = chunks(values)

    def job_set_many(prefix: str) -> None:
        cache = RedisCache(REDIS_URL, prefix=prefix, client=client)
        for part in parts:
            cache.set_many(part, TTL)

    def pipeline(prefix: str, raw: bool) -> None:
        for part in parts:
            with client.pipeline(transaction=False) as pipe:
                for key, value in part.items():
                    if raw:
                        pipe.execute_command("SET", prefix + key, value, "EX", TTL)  # type: ignore[no-untyped-call]
                    else:
                        pipe.set(prefix + key, value, ex=TTL)
                pipe.execute()

    variants: dict[str, Callable[[str], None]] = {
        "set_many": job_set_many,
        "pipeline": lambda prefix: pipeline(prefix, raw=True),
        "pipeline-set": lambda prefix: pipeline(prefix, raw=False),
    }
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for run in range(args.repeat):
            order = list(variants) if run % 2 == 0 else list(reversed(variants))
            for name in order:
                prefix = f"bench-cache:{tag}:{name}:"
                started = time.perf_counter()
                variants[name](prefix)
                seconds[name].append(time.perf_counter() - started)
        for name in variants:  # every key, its value and a TTL, for each variant
            prefix = f"bench-cache:{tag}:{name}:"
            with client.pipeline(transaction=False) as pipe:
                for key in values:
                    pipe.get(prefix + key)
                    pipe.ttl(prefix + key)
                got = pipe.execute()
            wrong = sum(1 for i, (key, value) in enumerate(values.items())
                        if got[2 * i] != value or not 0 < got[2 * i + 1] <= TTL)
            if wrong:
                print(f"{name}: {wrong} keys missing or wrong", file=sys.stderr)
                return 1
    finally:
        keys = list(client.scan_iter(match=f"bench-cache:{tag}:*", count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])

    base = statistics.median(seconds["pipeline"])
    print(f"cache_bench  {args.keys:,} keys in chunks of {CHUNK:,}  repeat {args.repeat}  {REDIS_URL}")
    print(f"{'variant':<14} {'median s':>9} {'min s':>7} {'vs pipeline':>12}")
    for name, times in seconds.items():
        median = statistics.median(times)
        print(f"{name:<14} {median:9.3f} {min(times):7.3f} {median / base:11.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
