"""DNS answers judged by the network policy, at submission and at connect time.

One resolver object serves both checks. ``check_resolved_host`` judges the
DNS answer when a client submits a callback URL. ``PolicyResolver`` judges
it again every time the dispatcher's connector looks the name up, so a name
whose answer changes in between (DNS rebinding) still cannot reach a
non-public address. aiohttp connects to a host written as an IP address
without a lookup, so ``guarded_socket_factory`` checks the address of each
socket before it connects.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable

import aiohttp
from aiohappyeyeballs import AddrInfoType, SocketFactoryType
from aiohttp.abc import AbstractResolver, ResolveResult

from webhooks.netpolicy import (
    NetworkPolicy,
    PolicyViolation,
    literal_address,
    non_public_reason,
)

# Limit on one lookup at submission, so a slow DNS server cannot hold the
# client's request open.
RESOLVE_TIMEOUT_S = 5.0


class AddressRejected(PolicyViolation, OSError):
    """The network policy rejected an address that a connection would go to.

    It is an OSError so that aiohttp wraps it as the ``os_error`` of a
    ClientConnectorError, where ``attempts.describe_error`` finds it.
    """


def _check_addresses(
    policy: NetworkPolicy, host: str, addresses: Iterable[str]
) -> None:
    """Raise AddressRejected naming the first address the policy rejects."""
    if policy.allow_private_networks:
        return
    for text in addresses:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise AddressRejected(
                f"{host} resolves to {text!r}, not an IP address"
            ) from None
        reason = non_public_reason(address)
        if reason is None:
            continue
        if text == host:
            raise AddressRejected(f"{address} is not a public address ({reason})")
        raise AddressRejected(
            f"{host} resolves to {address}, which is not a public address ({reason})"
        )


async def check_resolved_host(
    policy: NetworkPolicy,
    resolver: AbstractResolver,
    host: str,
    port: int,
    *,
    timeout_s: float = RESOLVE_TIMEOUT_S,
) -> None:
    """Resolve a callback host; raise PolicyViolation unless every address is public.

    Literal addresses are judged by ``NetworkPolicy.check_url`` and skipped
    here. With private networks allowed nothing is looked up, so tests and
    local development need no DNS.
    """
    if policy.allow_private_networks or literal_address(host) is not None:
        return
    try:
        async with asyncio.timeout(timeout_s):
            results = await resolver.resolve(host, port, family=socket.AF_UNSPEC)
    except TimeoutError:
        raise PolicyViolation(
            f"the host {host} did not resolve within {timeout_s:g} s"
        ) from None
    except OSError:
        raise PolicyViolation(f"the host {host} does not resolve") from None
    if not results:
        raise PolicyViolation(f"the host {host} does not resolve")
    _check_addresses(policy, host, (result["host"] for result in results))


class PolicyResolver(AbstractResolver):
    """An aiohttp resolver that raises AddressRejected for a non-public answer.

    One non-public address rejects the whole answer, as at submission, so a
    name that mixes public and private addresses is never connected to.
    """

    def __init__(self, inner: AbstractResolver, policy: NetworkPolicy) -> None:
        self._inner = inner
        self._policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family=family)
        _check_addresses(self._policy, host, (result["host"] for result in results))
        return results

    async def close(self) -> None:
        """Leave the inner resolver open: its owner closes it."""


def guarded_socket_factory(policy: NetworkPolicy) -> SocketFactoryType:
    """Return a socket factory for aiohttp's TCPConnector that checks each address."""

    def create(addr_info: AddrInfoType) -> socket.socket:
        family, socket_type, proto, _, address = addr_info
        _check_addresses(policy, str(address[0]), [str(address[0])])
        return socket.socket(family=family, type=socket_type, proto=proto)

    return create


def policy_connector(
    policy: NetworkPolicy,
    resolver: AbstractResolver,
    *,
    limit: int,
    limit_per_host: int,
) -> aiohttp.TCPConnector:
    """Return the connector of client webhooks, which applies the policy on connect.

    Resolved addresses stay in aiohttp's DNS cache (10 s by default) only
    after they passed the policy.
    """
    return aiohttp.TCPConnector(
        limit=limit,
        limit_per_host=limit_per_host,
        resolver=PolicyResolver(resolver, policy),
        socket_factory=guarded_socket_factory(policy),
    )
