"""The jobs' ids, in the order every list shows them.

A module of its own, importing nothing, so the command line can name the jobs in its
`--help` without loading the settings (cron parsing) or the database layer."""

from __future__ import annotations

JOB_IDS = ("expiry-checker", "payment-reminders", "analytics-aggregate", "cleanup")
