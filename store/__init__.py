"""Persistence behind one async interface, chosen by the store URL."""

from store.base import MigrationError, Store, StoreError, Transaction, UniqueViolation


async def open_store(url: str, *, synchronous: str = "full") -> Store:
    """Open the store a URL names (``sqlite:///PATH``) and migrate its schema."""
    if url.startswith("sqlite:"):
        from store.sqlite import SqliteStore

        return await SqliteStore.open(url, synchronous=synchronous)
    raise ValueError(f"unsupported store URL {url.split(':', 1)[0]!r}; use sqlite:///PATH")


__all__ = [
    "MigrationError",
    "Store",
    "StoreError",
    "Transaction",
    "UniqueViolation",
    "open_store",
]
