"""Network policy for callback URLs, against server-side request forgery.

A callback host must mean a public unicast address. Literal addresses are
judged as written, in any notation ``inet_aton`` accepts (``2130706433``,
``0177.0.0.1``, ``0x7f.1``), and IPv6 forms that embed an IPv4 address are
judged by that address too.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from yarl import URL

MAX_URL_LENGTH = 2048

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class PolicyViolation(ValueError):
    """A URL or an address is not allowed as a callback target."""


@dataclass(frozen=True, kw_only=True)
class NetworkPolicy:
    allow_http: bool = False
    allow_private_networks: bool = False

    def check_url(self, text: str) -> URL:
        """Return the parsed URL; raise PolicyViolation saying what is wrong."""
        if len(text) > MAX_URL_LENGTH:
            raise PolicyViolation(f"the URL is longer than {MAX_URL_LENGTH} characters")
        try:
            url = URL(text)
        except ValueError:
            raise PolicyViolation("not a valid URL") from None
        schemes = ("https", "http") if self.allow_http else ("https",)
        if not url.is_absolute() or url.scheme not in schemes:
            expected = " or ".join(schemes)
            raise PolicyViolation(f"the URL must be absolute and use {expected}")
        if url.raw_user is not None or url.raw_password is not None:
            raise PolicyViolation("the URL must not contain a user name or password")
        if not url.raw_host:
            raise PolicyViolation("the URL has no host")
        if url.fragment:
            raise PolicyViolation("the URL must not contain a fragment")
        address = literal_address(url.raw_host)
        if address is not None:
            self.check_address(address)
        return url

    def check_address(self, address: IPAddress) -> None:
        """Raise PolicyViolation unless the address is public unicast."""
        if self.allow_private_networks:
            return
        reason = non_public_reason(address)
        if reason is not None:
            raise PolicyViolation(f"{address} is not a public address ({reason})")


def literal_address(host: str) -> IPAddress | None:
    """Return the address a host names literally, or None for a DNS name."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if host and all(char in "0123456789abcdefxABCDEFX." for char in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    packed = address.packed
    if packed[:12] == bytes(12) and packed[12:] not in (bytes(4), b"\0\0\0\1"):
        return ipaddress.IPv4Address(packed[12:])  # IPv4-compatible, ::a.b.c.d
    return None


def non_public_reason(address: IPAddress) -> str | None:
    """Return why an address is not public unicast, or None if it is."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            reason = non_public_reason(embedded)
            return None if reason is None else f"{reason} (embedded in IPv6)"
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("non-global", not address.is_global),
    )
    for reason, matches in checks:
        if matches:
            return reason
    return None
