"""Secrets out of what people and logs read: the one way to show a URL or an error text.

A URL carries a secret in two places: its userinfo (`scheme://user:password@host`) and
its query string (`postgresql://…?password=…` is libpq's way, `redis://…?password=…`
redis-py's; other services take `?token=`, `?api_key=`, `?secret=`). `redact(url)` masks
both and keeps everything else (scheme, user, host, port, database, harmless options)
byte for byte, so an operator still sees where the URL points. `scrub(text)` does the
same to every URL inside free text (a driver's error message, a log line) and to the
`password=…` pairs of a libpq connection string.

Nothing here parses a port or decodes a host: a URL too broken to use is still shown
without its password (a port that is not a number must not turn the masking off).
"""

from __future__ import annotations

import re
from urllib.parse import unquote

MASK = "***"

# Names of query parameters and key=value pairs whose value is a secret. Broad on
# purpose: masking a harmless `sslkey=/path` costs nothing, showing a password does.
_SECRET_NAME = re.compile(r"pass|pwd|token|secret|key|auth|credential|signature", re.IGNORECASE)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
# A URL inside text ends at whitespace or a quote (drivers quote what they echo).
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_PAIR = re.compile(
    r"(?P<name>[\w.-]*(?:pass|pwd|token|secret|key|auth|credential|signature)[\w.-]*)"
    r"(?P<eq>\s*=\s*)(?P<value>'(?:[^'\\]|\\.)*'|\"[^\"]*\"|[^\s&;,'\"]+)",
    re.IGNORECASE,
)


def is_secret_name(name: str) -> bool:
    """Whether a query parameter or option called `name` holds a secret."""
    return bool(_SECRET_NAME.search(unquote(name)))


def _query(query: str) -> str:
    parts = []
    for pair in query.split("&"):
        name, eq, value = pair.partition("=")
        parts.append(f"{name}={MASK}" if eq and value and is_secret_name(name) else pair)
    return "&".join(parts)


def redact(url: str) -> str:
    """`url` fit for a screen, a log line or an error message: no password, no secret
    query parameter; anything that is not a URL gets `scrub`'s treatment."""
    scheme, sep, rest = url.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        return _pairs(url)
    if not rest.startswith("/") and "@" in rest:
        # The userinfo ends at the LAST "@": a password written unencoded may hold "@",
        # "/", "?" or "#". It is userinfo only if the user name before it looks like one
        # (no "/", "?", "#"); otherwise the "@" belongs to the path or the query.
        userinfo, _, after = rest.rpartition("@")
        user, colon, password = userinfo.partition(":")
        if not any(c in user for c in "/?#"):
            rest = f"{user}:{MASK}@{after}" if colon and password else f"{userinfo}@{after}"
    base, q, query = rest.partition("?")
    if q:
        query, h, fragment = query.partition("#")
        rest = f"{base}?{_query(query)}{h}{fragment}"
    return f"{scheme}://{rest}"


def _pairs(text: str) -> str:
    return _PAIR.sub(lambda m: f"{m['name']}{m['eq']}{MASK}", text)


def scrub(text: str) -> str:
    """`text` with every URL in it redacted and every `password=…`-like pair masked."""
    out: list[str] = []
    pos = 0
    for m in _URL_IN_TEXT.finditer(text):
        out.append(_pairs(text[pos:m.start()]))
        out.append(redact(m.group()))
        pos = m.end()
    out.append(_pairs(text[pos:]))
    return "".join(out)


def has_secret(url: str) -> bool:
    """Whether `url` carries a password or a secret option (`redact` would change it)."""
    return redact(url) != url


def origin(url: str) -> str:
    """Scheme and host (and port) of a URL whose path or query is itself the secret (a
    webhook, a ping URL): nothing after the host, no userinfo. A host part that does not
    look like a host (an unencoded password with "/" in it) is shown as "?"."""
    scheme, sep, rest = url.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        return "?"
    candidates = [rest.split("/", 1)[0]]
    if "@" in rest:  # the userinfo ends at the last "@", and may hold a "/"
        candidates.append(rest.rpartition("@")[2].split("/", 1)[0])
    for netloc in candidates:
        host = netloc.split("?", 1)[0].split("#", 1)[0].rpartition("@")[2]
        if _HOST.fullmatch(host):
            return f"{scheme.lower()}://{host}"
    return f"{scheme.lower()}://?"
