"""The ledger: one row per call (docs/ledger.md). `open_ledger(url)` picks the backend;
`LedgerWriter` records rows off the request path with a crash-safe journal."""

from __future__ import annotations

from pathlib import Path

from tallygate.errors import ConfigError
from tallygate.ledger.base import LedgerStore, LedgerWriter, WriterStats, replay_orphans

__all__ = [
    "LedgerStore",
    "LedgerWriter",
    "WriterStats",
    "default_journal_dir",
    "open_ledger",
    "replay_orphans",
]

_SCHEMES = "sqlite:///PATH, postgresql://USER@HOST:PORT/DB, postgres://…, memory://"


def sqlite_path(url: str) -> str | None:
    """The file path of a sqlite:/// URL (":memory:" for memory://), else None."""
    if url.startswith("memory://"):
        return ":memory:"
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        if not path:
            raise ConfigError(f"ledger URL {url!r} has no file path (sqlite:///PATH)")
        return path
    return None


async def open_ledger(url: str) -> LedgerStore:
    """Connect to the ledger at `url` and apply pending migrations."""
    path = sqlite_path(url)
    if path is not None:
        from tallygate.ledger.sqlite import SqliteLedger

        return await SqliteLedger(path, url).open()
    if url.startswith(("postgresql://", "postgres://")):
        from tallygate.ledger.postgres import PostgresLedger

        return await PostgresLedger(url).open()
    scheme = url.partition("://")[0] if "://" in url else url
    raise ConfigError(f"unknown ledger URL scheme {scheme!r}: use one of {_SCHEMES}")


def default_journal_dir(url: str, base: str | Path = ".") -> Path | None:
    """Where the writer's journal lives by default: beside a SQLite file
    (`PATH.journal/`), `<base>/.tallygate-journal/` for PostgreSQL, none for memory://."""
    path = sqlite_path(url)
    if path == ":memory:":
        return None
    if path is not None:
        return Path(path + ".journal")
    return Path(base) / ".tallygate-journal"
