"""Network policy for callback URLs, against server-side request forgery.

A callback host must mean a public unicast address. A host name is judged
in its ASCII (punycode) form after IDNA 2008 processing with the UTS #46
mapping, the form that the HTTP client later connects to, so full-width
digits or other look-alikes cannot hide a literal address. Literal
addresses are judged as written, in any notation ``inet_aton`` accepts
(``2130706433``, ``0177.0.0.1``, ``0x7f.1``), and IPv6 forms that embed an
IPv4 address are judged by that address too.

This module judges text and addresses only; ``webhooks.resolver`` resolves
host names and applies the same judgement to every address they resolve to.
"""

from __future__ import annotations

import ipaddress
import socket
import unicodedata
from dataclasses import dataclass

import idna
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
        """Return the parsed URL; raise PolicyViolation saying what is wrong.

        The URL's ``raw_host`` is the ASCII form that was judged, the one the
        HTTP client resolves and connects to. A host name passes here, but
        its DNS answer is judged by ``webhooks.resolver``.
        """
        if len(text) > MAX_URL_LENGTH:
            raise PolicyViolation(f"the URL is longer than {MAX_URL_LENGTH} characters")
        if any(char.isspace() or unicodedata.category(char) == "Cc" for char in text):
            # yarl drops some of these silently, so the stored URL would not
            # be the one used; percent-encode them instead.
            raise PolicyViolation(
                "the URL must not contain spaces or control characters; "
                "percent-encode them"
            )
        try:
            url = URL(text)
        except UnicodeError as exc:
            raise PolicyViolation(
                f"the host name is not a valid internationalised domain name: {exc}"
            ) from None
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
        if url.port == 0:
            raise PolicyViolation("the URL's port must be 1 to 65535")
        address = literal_address(url.raw_host)
        if address is not None:
            self.check_address(address)
            return url
        check_host_name(text, url)
        if not self.allow_private_networks and is_localhost(url.raw_host):
            raise PolicyViolation(f"{url.raw_host} names the loopback interface")
        return url

    def check_address(self, address: IPAddress) -> None:
        """Raise PolicyViolation unless the address is public unicast."""
        if self.allow_private_networks:
            return
        reason = non_public_reason(address)
        if reason is not None:
            raise PolicyViolation(f"{address} is not a public address ({reason})")


def check_host_name(text: str, url: URL) -> None:
    """Raise PolicyViolation unless the host of ``text`` is valid IDNA 2008.

    ``url`` is ``URL(text)``. yarl falls back to the older IDNA 2003 rules
    where IDNA 2008 rejects a name, so the host is encoded here again,
    strictly, and must give the same ASCII form that yarl will connect to.
    """
    written = URL(text, encoded=True).raw_host or ""
    try:
        judged = idna.encode(written, uts46=True).decode("ascii")
    except UnicodeError as exc:
        raise PolicyViolation(
            f"the host name {written!r} is not a valid internationalised "
            f"domain name (IDNA 2008): {exc}"
        ) from None
    if judged != url.raw_host:
        raise PolicyViolation(
            f"the host name {written!r} has no unambiguous ASCII form "
            f"({judged!r} or {url.raw_host!r})"
        )


def is_localhost(host: str) -> bool:
    """Return whether a name is ``localhost`` or under it (RFC 6761: loopback)."""
    name = host.rstrip(".").lower()
    return name == "localhost" or name.endswith(".localhost")


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


# NAT64 well-known prefix (RFC 6052): the last 32 bits are an IPv4 address.
_NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address in _NAT64_PREFIX:
        return ipaddress.IPv4Address(address.packed[12:])
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


# Special-purpose ranges (IANA registries, RFC 6890) named in rejections.
# ipaddress rejects them too, but calls most of them "private".
_NAMED_NETWORKS = tuple(
    (name, ipaddress.ip_network(network))
    for name, networks in (
        ("this network", ["0.0.0.0/8"]),
        ("shared address space, carrier-grade NAT", ["100.64.0.0/10"]),
        ("IETF protocol assignments", ["192.0.0.0/24"]),
        (
            "documentation",
            ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"],
        ),
        ("benchmarking", ["198.18.0.0/15", "2001:2::/48"]),
        ("reserved", ["240.0.0.0/4"]),
        ("unique-local", ["fc00::/7"]),
        ("discard-only", ["100::/64"]),
    )
    for network in networks
)


def non_public_reason(address: IPAddress) -> str | None:
    """Return why an address is not public unicast, or None if it is."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            reason = non_public_reason(embedded)
            return None if reason is None else f"{reason} (embedded in IPv6)"
    named = next(
        (name for name, network in _NAMED_NETWORKS if address in network), None
    )
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        # fec0::/10, deprecated but still routed inside some networks, and
        # not marked non-global by Python 3.11's ipaddress.
        ("site-local", getattr(address, "is_site_local", False)),
        ("multicast", address.is_multicast),
        ("broadcast", address == ipaddress.IPv4Address("255.255.255.255")),
        (named, named is not None),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("non-global", not address.is_global),
    )
    for reason, matches in checks:
        if matches:
            return reason
    return None
