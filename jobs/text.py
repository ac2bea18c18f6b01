"""Small text rules shared by the jobs and the faces."""

from __future__ import annotations

# The words a yes/no option takes: `?starttls=1` in SMTP_URL, `?dry_run=1` on a trigger.
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"", "0", "false", "no", "off"})


def parse_flag(text: str) -> bool | None:
    """True or False for a yes/no word (any case; empty is no), None for anything else."""
    word = text.lower()
    if word in TRUE_WORDS:
        return True
    return False if word in FALSE_WORDS else None


def one_line(text: str) -> str:
    """`text` with every run of whitespace, line breaks included, as one space: a header
    value (an email's subject or recipient) or an answer quoted in a log line."""
    return " ".join(text.split())
