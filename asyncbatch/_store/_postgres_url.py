"""PostgreSQL store URLs: ``postgresql://user:password@host:5432/db?schema=NAME``.

Parsing is separate from the store so that ``open_store`` can refuse a bad
URL at once, without importing asyncpg. asyncbatch's own options are taken
out of the query string; the rest (``sslmode``, ``connect_timeout``,
``application_name``, ...) is passed to asyncpg as libpq would read it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import SplitResult, parse_qsl, quote, unquote, urlencode, urlsplit

from asyncbatch._errors import ConfigError

__all__ = ["DEFAULT_SCHEMA", "SCHEMES", "PostgresTarget", "parse_postgres_url"]

SCHEMES = ("postgresql://", "postgres://", "postgresql+asyncpg://")
DEFAULT_SCHEMA = "asyncbatch"
DEFAULT_RETRY_TIMEOUT = 30.0
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_FORM = "postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?schema=NAME]"


@dataclass(frozen=True, slots=True, kw_only=True)
class PostgresTarget:
    """Where a PostgreSQL store lives.

    Attributes:
        dsn: what asyncpg connects to (asyncbatch's options taken out).
        url: the URL without its password: safe to print and log.
        schema: the schema holding asyncbatch's tables.
        retry_timeout: seconds to keep retrying while the database is away.
    """

    dsn: str
    url: str
    schema: str
    retry_timeout: float

    @property
    def where(self) -> str:
        """``host:port/database``, for error messages."""
        parts = urlsplit(self.url)
        return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"


def _seconds(text: str, name: str, url: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also refuses nan
        raise ConfigError(f"{name} in {url!r} must be seconds >= 0, got {text!r}")
    return value


def parse_postgres_url(url: str, *, retry_timeout: float | None = None) -> PostgresTarget:
    """Split a PostgreSQL store URL into what asyncpg needs and asyncbatch's options.

    Args:
        url: ``postgresql://`` or ``postgres://`` (also ``postgresql+asyncpg://``),
            with ``?schema=NAME`` (default ``asyncbatch``) and
            ``?retry_timeout=SECONDS`` (default 30) among its query options.
        retry_timeout: overrides the URL's ``retry_timeout``.

    Raises:
        ConfigError: not a PostgreSQL URL, or a bad option value.
    """
    if not url.startswith(SCHEMES):
        raise ConfigError(f"not a PostgreSQL URL: {url!r}; use {_FORM}")
    rest = url.partition("://")[2]
    parts = urlsplit("postgresql://" + rest)
    try:
        options = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ConfigError(f"malformed PostgreSQL URL {_redact(url)!r}; use {_FORM}") from None
    ours = {k: v for k, v in options if k in ("schema", "retry_timeout")}
    passed = [(k, v) for k, v in options if k not in ours]
    schema = ours.get("schema", DEFAULT_SCHEMA)
    if not _IDENT.match(schema):
        raise ConfigError(
            f"schema={schema!r} in {_redact(url)!r} is not a plain SQL name "
            "(letters, digits and _, not starting with a digit, at most 63)"
        )
    if retry_timeout is None:
        retry_timeout = _seconds(
            ours.get("retry_timeout", str(DEFAULT_RETRY_TIMEOUT)), "retry_timeout", _redact(url)
        )
    dsn = _join(parts.netloc, parts.path, passed)
    shown = [("schema", schema)] if "schema" in ours else []
    safe = _join(_netloc(parts), parts.path, shown + passed)
    return PostgresTarget(dsn=dsn, url=safe, schema=schema, retry_timeout=retry_timeout)


def _netloc(parts: SplitResult) -> str:
    """``user@host:port`` of a URL, without its password."""
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    user = f"{quote(unquote(parts.username), safe='')}@" if parts.username else ""
    return f"{user}{host}{'' if parts.port is None else f':{parts.port}'}"


def _join(netloc: str, path: str, query: list[tuple[str, str]]) -> str:
    # Not urlunsplit: it drops the empty host of postgresql:///db (a local socket).
    return f"postgresql://{netloc}{path}" + (f"?{urlencode(query)}" if query else "")


def _redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for error messages)."""
    return re.sub(r"(://[^:/@?#]*):[^@/?#]*@", r"\1:***@", url)
