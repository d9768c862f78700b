"""Persistence behind one async interface, chosen by the store URL."""

from store.base import MigrationError, Store, StoreError, Transaction, UniqueViolation


async def open_store(url: str, *, synchronous: str = "full", pool_size: int = 10) -> Store:
    """Open the store a URL names and migrate its schema.

    ``sqlite:///PATH`` opens an embedded file; ``postgresql://USER:PASSWORD@HOST:PORT/DB``
    a pool of ``pool_size`` connections. ``synchronous`` applies to SQLite only.
    """
    if url.startswith("sqlite:"):
        from store.sqlite import SqliteStore

        return await SqliteStore.open(url, synchronous=synchronous)
    if url.startswith(("postgresql:", "postgres:")):
        from store.postgres import PostgresStore

        return await PostgresStore.open(url, pool_size=pool_size)
    scheme = url.split(":", 1)[0]
    raise ValueError(f"unsupported store URL scheme {scheme!r}; use sqlite or postgresql")


__all__ = [
    "MigrationError",
    "Store",
    "StoreError",
    "Transaction",
    "UniqueViolation",
    "open_store",
]
