"""`analytics --all` (every tenant's cached value for a day) and `analytics verify` (the
day recomputed without writing, compared with the cache)."""

from __future__ import annotations

import argparse
import csv
from datetime import date, timedelta

from console.context import CliContext
from console.formatting import terminal_safe
from jobs.analytics import latest_day
from jobs.analytics_day import read_day, sort_day, verify_day
from jobs.errors import ExitCode, UsageError
from jobs.humanize import amount, number, plural, span
from jobs.presence import who_am_i
from jobs.records import parse_day
from jobs.timeutil import utc_now

CSV_COLUMNS = ("tenant_id", "name", "orders", "revenue", "newCustomers", "productsSold", "ttl",
               "missing")


def _day(ctx: CliContext, text: str | None) -> date:
    """--date, else yesterday in the analytics job's timezone."""
    return parse_day("--date", text) if text is not None else latest_day(ctx.settings, utc_now())


def cmd_analytics_all(ctx: CliContext, args: argparse.Namespace) -> int:
    if args.tenant is not None:
        raise UsageError("--all lists every tenant: give it without TENANT")
    if args.limit is not None and args.limit < 0:
        raise UsageError("--limit: must be 0 or more")
    day = read_day(ctx.engine, ctx.cache(), _day(ctx, args.date))
    rows = sort_day(day.tenants, args.sort)
    if args.limit is not None:
        rows = rows[: args.limit]
    if ctx.json:
        from jobs.analytics_day import day_json

        ctx.emit_json(day_json(day, rows))
        return ExitCode.OK
    if args.csv:
        # Data as it is (the csv module quotes what needs quoting), not made terminal-safe.
        writer = csv.writer(ctx.stdout, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for r in rows:
            j = r.to_json()
            writer.writerow(["" if j[c] is None else str(j[c]).lower() if isinstance(j[c], bool)
                             else j[c] for c in CSV_COLUMNS])
        return ExitCode.OK
    from console.commands import table

    t = day.totals
    ctx.err(f"{day.day.isoformat()}: {plural(t.tenants, 'tenant')}, {t.missing:,} without a "
            f"cached value; sorted by {args.sort}")
    body = [(r.tenant_id, r.name, number(r.orders, missing="-"), amount(r.revenue, missing="-"),
             number(r.newCustomers, missing="-"), number(r.productsSold, missing="-"),
             "missing" if r.missing else "no expiry" if r.ttl is None
             else span(timedelta(seconds=r.ttl)))
            for r in rows]
    body.append(("TOTAL", plural(t.tenants, "tenant"), number(t.orders), amount(t.revenue),
                 number(t.newCustomers), number(t.productsSold), f"{t.missing:,} missing"))
    ctx.out(table(("TENANT", "NAME", "ORDERS", "REVENUE", "NEW CUSTOMERS", "PRODUCTS SOLD",
                   "TTL"), body))
    return ExitCode.OK


def cmd_analytics_verify(ctx: CliContext, args: argparse.Namespace) -> int:
    if args.all or args.sort != "revenue" or args.limit is not None or args.csv:
        raise UsageError("analytics verify takes --date and --json only")
    result = verify_day(ctx.engine, ctx.settings, ctx.cache(), _day(ctx, args.date),
                        now=utc_now(), started_by=who_am_i())
    code = ExitCode.OK if result.ok else ExitCode.FAILED
    if ctx.json:
        ctx.emit_json(result.to_json())
        return code
    ctx.out(f"{result.day.isoformat()}: {plural(result.checked, 'tenant')} checked, "
            f"{result.matching:,} matching, {len(result.differing):,} differing, "
            f"{len(result.missing):,} missing from the cache")
    if result.differing:
        from console.commands import table

        ctx.out("")
        rows = []
        for d in result.differing:
            for field in d.fields:
                show = amount if field == "revenue" else number
                rows.append((d.tenant_id, d.name, field, show(d.cached[field]),
                             show(d.actual[field])))
        ctx.out(table(("TENANT", "NAME", "FIGURE", "CACHED", "ACTUAL"), rows))
    if result.missing:
        ctx.out("")
        ctx.out("missing:")
        for tenant_id, name in result.missing:
            ctx.out(f"  {tenant_id}  {terminal_safe(name)}")
    if not result.ok:
        ctx.err(f"storeflow-ops: the cache differs from the database for {result.day.isoformat()}"
                f"; `storeflow-ops trigger analytics-aggregate --date {result.day.isoformat()}` "
                "writes it again")
    return code


__all__ = ["CSV_COLUMNS", "cmd_analytics_all", "cmd_analytics_verify"]
