"""A DNS resolver for tests: answers from a table and never sends a query."""

from __future__ import annotations

import socket

from aiohttp.abc import AbstractResolver, ResolveResult

# Well-known public addresses used as DNS answers. Tests never connect to
# them: a test that lets a delivery go to a name never answers it with these.
PUBLIC_IPV4 = "93.184.216.34"
PUBLIC_IPV6 = "2606:2800:220:1:248:1893:25c8:1946"


class StaticResolver(AbstractResolver):
    """Answer each name from ``answers``; an unknown name fails as NXDOMAIN does.

    ``answers`` may be changed while the service runs, to model a DNS answer
    that changes between two lookups. ``lookups`` records every name asked.
    """

    def __init__(self, answers: dict[str, list[str]] | None = None) -> None:
        self.answers = dict(answers or {})
        self.lookups: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.lookups.append(host)
        results = []
        for address in self.answers.get(host.rstrip(".").lower(), []):
            address_family = socket.AF_INET6 if ":" in address else socket.AF_INET
            if family not in (socket.AF_UNSPEC, address_family):
                continue
            results.append(
                ResolveResult(
                    hostname=host,
                    host=address,
                    port=port,
                    family=address_family,
                    proto=0,
                    flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                )
            )
        if not results:
            raise socket.gaierror(socket.EAI_NONAME, f"{host}: name not known")
        return results

    async def close(self) -> None:
        pass
