"""Network policy for callback URLs, with the policy on and a test-controlled resolver.

No test here sends a DNS query or connects anywhere but 127.0.0.1: host
names resolve through ``StaticResolver``, and a public address is only ever
a DNS answer or a callback that is never delivered to.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from conftest import Receiver, Service, make_config, wait_for
from fake_resolver import PUBLIC_IPV4, PUBLIC_IPV6, StaticResolver
from store.records import DeliveryFilter
from webhooks import attempts
from webhooks.app import create_app
from webhooks.config import Config
from webhooks.netpolicy import NetworkPolicy, PolicyViolation
from webhooks.resolver import AddressRejected, PolicyResolver, policy_connector

# How long a test waits to be sure that nothing reaches a receiver.
QUIET_PERIOD_S = 0.3

ANSWERS = {
    "public.example": [PUBLIC_IPV4],
    "dual.example": [PUBLIC_IPV4, PUBLIC_IPV6],
    "xn--bcher-kva.example": [PUBLIC_IPV4],
    "loopback.example": ["127.0.0.1"],
    "private.example": ["10.1.2.3"],
    "metadata.example": ["169.254.169.254"],
    "mixed.example": [PUBLIC_IPV4, "10.0.0.1"],
    "mapped.example": ["::ffff:127.0.0.1"],
    "ula.example": [PUBLIC_IPV6, "fd00::1"],
    "cgnat.example": ["100.64.1.1"],
}

IDNA = "is not a valid internationalised domain name"
SCHEME = "the URL must be absolute and use https or http"
USER_INFO = "the URL must not contain a user name or password"
MAPPED = "(embedded in IPv6)"

# Each case: the callback URL, a fragment of the expected 422 message, an ID.
REJECTED = [
    pytest.param("http://127.0.0.1/", "(loopback)", id="loopback"),
    pytest.param("http://127.1.2.3/", "(loopback)", id="loopback-other"),
    pytest.param("http://127.1/", "(loopback)", id="loopback-short"),
    pytest.param("http://2130706433/", "(loopback)", id="loopback-decimal"),
    pytest.param("http://0x7f000001/", "(loopback)", id="loopback-hex"),
    pytest.param("http://0177.0.0.1/", "(loopback)", id="loopback-octal"),
    pytest.param("http://0x7f.0x0.0x0.0x1/", "(loopback)", id="loopback-hex-dotted"),
    pytest.param("http://0x7f.1/", "(loopback)", id="loopback-hex-short"),
    pytest.param(
        "http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/",
        "(loopback)",
        id="loopback-fullwidth-digits",
    ),
    pytest.param("http://[::1]/", "(loopback)", id="loopback-ipv6"),
    pytest.param("http://[::ffff:127.0.0.1]/", MAPPED, id="ipv4-mapped-loopback"),
    pytest.param("http://[::ffff:7f00:1]/", MAPPED, id="ipv4-mapped-hex"),
    pytest.param("http://[::ffff:10.0.0.1]/", MAPPED, id="ipv4-mapped-private"),
    pytest.param("http://[::127.0.0.1]/", MAPPED, id="ipv4-compatible-loopback"),
    pytest.param("http://[2002:c0a8:101::1]/", MAPPED, id="6to4-private"),
    pytest.param("http://[2002:7f00:1::1]/", MAPPED, id="6to4-loopback"),
    pytest.param(
        "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",
        "(documentation (embedded in IPv6))",
        id="teredo-documentation",
    ),
    pytest.param("http://[64:ff9b::7f00:1]/", MAPPED, id="nat64-loopback"),
    pytest.param("http://10.0.0.1/", "(private)", id="private-10"),
    pytest.param("http://172.16.0.1/", "(private)", id="private-172-16"),
    pytest.param("http://172.31.255.254/", "(private)", id="private-172-31"),
    pytest.param("http://192.168.1.1/", "(private)", id="private-192-168"),
    pytest.param("http://100.64.0.1/", "carrier-grade NAT", id="cgnat"),
    pytest.param("http://100.127.255.254/", "carrier-grade NAT", id="cgnat-top"),
    pytest.param("http://169.254.1.1/", "(link-local)", id="link-local"),
    pytest.param(
        "https://169.254.169.254/latest/meta-data", "(link-local)", id="cloud-metadata"
    ),
    pytest.param(
        "http://2852039166/latest/meta-data",
        "(link-local)",
        id="cloud-metadata-decimal",
    ),
    pytest.param("http://[fd00:ec2::254]/", "(unique-local)", id="cloud-metadata-ipv6"),
    pytest.param("http://0.0.0.0/", "(unspecified)", id="unspecified"),
    pytest.param("http://0/", "(unspecified)", id="unspecified-decimal"),
    pytest.param("http://0.1.2.3/", "(this network)", id="this-network"),
    pytest.param("http://[::]/", "(unspecified)", id="unspecified-ipv6"),
    pytest.param("http://224.0.0.1/", "(multicast)", id="multicast"),
    pytest.param("http://239.255.255.250/", "(multicast)", id="multicast-ssdp"),
    pytest.param("http://[ff02::1]/", "(multicast)", id="multicast-ipv6"),
    pytest.param("http://255.255.255.255/", "(broadcast)", id="broadcast"),
    pytest.param("http://240.0.0.1/", "(reserved)", id="reserved-240"),
    pytest.param(
        "http://192.0.0.1/",
        "(IETF protocol assignments)",
        id="ietf-protocol-assignments",
    ),
    pytest.param("http://192.0.2.1/", "(documentation)", id="documentation-192-0-2"),
    pytest.param(
        "http://198.51.100.1/", "(documentation)", id="documentation-198-51-100"
    ),
    pytest.param(
        "http://203.0.113.1/", "(documentation)", id="documentation-203-0-113"
    ),
    pytest.param("http://198.18.0.1/", "(benchmarking)", id="benchmarking"),
    pytest.param("http://[2001:db8::1]/", "(documentation)", id="documentation-ipv6"),
    pytest.param("http://[fd00::1]/", "(unique-local)", id="unique-local"),
    pytest.param("http://[fc00::1]/", "(unique-local)", id="unique-local-fc"),
    pytest.param("http://[fe80::1]/", "(link-local)", id="link-local-ipv6"),
    pytest.param("http://[fe80::1%25eth0]/", "(link-local)", id="link-local-ipv6-zone"),
    pytest.param("http://[fec0::1]/", "(site-local)", id="site-local-ipv6"),
    pytest.param("http://[100::1]/", "(discard-only)", id="discard-only-ipv6"),
    pytest.param("http://localhost/", "names the loopback", id="localhost-name"),
    pytest.param(
        "http://api.localhost./", "names the loopback", id="localhost-subdomain"
    ),
    pytest.param(
        "http://loopback.example/",
        "loopback.example resolves to 127.0.0.1",
        id="dns-loopback",
    ),
    pytest.param(
        "http://private.example/",
        "private.example resolves to 10.1.2.3",
        id="dns-private",
    ),
    pytest.param(
        "http://metadata.example/latest/meta-data",
        "metadata.example resolves to 169.254.169.254",
        id="dns-cloud-metadata",
    ),
    pytest.param("http://cgnat.example/", "carrier-grade NAT", id="dns-cgnat"),
    pytest.param(
        "http://mixed.example/",
        "mixed.example resolves to 10.0.0.1",
        id="dns-one-private-of-two",
    ),
    pytest.param(
        "http://mapped.example/",
        "mapped.example resolves to ::ffff:7f00:1",
        id="dns-ipv4-mapped",
    ),
    pytest.param(
        "http://ula.example/", "ula.example resolves to fd00::1", id="dns-unique-local"
    ),
    pytest.param("http://nowhere.example/", "does not resolve", id="dns-unresolvable"),
    pytest.param("http://user:pass@public.example/", USER_INFO, id="user-and-password"),
    pytest.param("http://user@public.example/", USER_INFO, id="user-only"),
    pytest.param("http://:pass@public.example/", USER_INFO, id="password-only"),
    pytest.param(
        "http://public.example\\@127.0.0.1/",
        "not a valid URL",
        id="backslash-authority",
    ),
    pytest.param("http://%31%32%37.0.0.1/", IDNA, id="percent-encoded-host"),
    pytest.param("http://xn--zz.example/", IDNA, id="idna-invalid-a-label"),
    pytest.param("http://\u0661\u0662\u0663.example/", IDNA, id="idna-bidi-rule"),
    pytest.param(
        "http://a\u200d.example/", "not a valid URL", id="idna-zero-width-joiner"
    ),
    pytest.param(
        "http://ex ample.example/", "spaces or control characters", id="host-with-space"
    ),
    pytest.param("http://under_score.example/", IDNA, id="host-with-underscore"),
    pytest.param("http://-start.example/", IDNA, id="host-leading-hyphen"),
    pytest.param("http://" + "a" * 64 + ".example/", IDNA, id="host-label-too-long"),
    pytest.param("http://public.example:0/", "port must be 1 to 65535", id="port-zero"),
    pytest.param(
        "http://public.example/#top", "must not contain a fragment", id="fragment"
    ),
    pytest.param("ftp://public.example/", SCHEME, id="scheme-ftp"),
    pytest.param("file:///etc/passwd", SCHEME, id="scheme-file"),
    pytest.param("gopher://public.example/", SCHEME, id="scheme-gopher"),
    pytest.param("/hooks", SCHEME, id="relative"),
    pytest.param(
        "https://public.example/" + "a" * 2048,
        "longer than 2048 characters",
        id="longer-than-2048",
    ),
]

ACCEPTED = [
    ("https://public.example/hooks", "public-name"),
    ("https://PUBLIC.example./hooks?x=1", "public-name-fqdn-uppercase"),
    ("https://public.example:8443/hooks", "public-name-port"),
    ("https://dual.example/hooks", "public-name-ipv4-and-ipv6"),
    ("https://b\u00fccher.example/hooks", "idn-public"),
    (f"https://{PUBLIC_IPV4}/hooks", "public-ipv4"),
    (f"https://[{PUBLIC_IPV6}]/hooks", "public-ipv6"),
    ("https://[64:ff9b::5db8:d822]/hooks", "nat64-public"),
    ("https://[::ffff:93.184.216.34]/hooks", "ipv4-mapped-public"),
    ("http://public.example/hooks", "plain-http-allowed"),
]


def policy_config(config: Config, **delivery: Any) -> Config:
    """Return ``config`` with the network policy on, plus ``delivery`` overrides."""
    overrides = {"allow_private_networks": False, "allow_http": True, **delivery}
    return replace(config, delivery=replace(config.delivery, **overrides))


@pytest.fixture
async def start_service(
    aiohttp_client: Any,
    make_receiver: Callable[..., Awaitable[Receiver]],
    tmp_path: Path,
) -> Callable[..., Awaitable[Service]]:
    """Start the app on ``tmp_path`` with a StaticResolver and a backend on 127.0.0.1.

    The backend receiver is trusted operator configuration: its events go
    out even with the policy on.
    """
    backend = await make_receiver(default_status=202)

    async def start(
        resolver: StaticResolver, config: Config | None = None, **delivery: Any
    ) -> Service:
        base = config or make_config(tmp_path)
        base = replace(base, backend=replace(base.backend, url=backend.url("/events")))
        backend.secret = base.backend.signing_secret
        final = policy_config(base, **delivery)
        http = await aiohttp_client(create_app(final, resolver=resolver))
        service = Service(http=http, config=final)
        service.backend = backend  # type: ignore[attr-defined]
        return service

    return start


async def _deliveries(service: Service) -> list[Any]:
    page = await service.state.store.list_deliveries(DeliveryFilter(), 100, None)
    return page.deliveries


@pytest.mark.parametrize(("url", "expected"), REJECTED)
async def test_submission_rejects_url(
    start_service: Callable[..., Awaitable[Service]], url: str, expected: str
) -> None:
    service = await start_service(StaticResolver(ANSWERS))
    client = await service.new_client()

    response = await service.submit(client, customer_id="cust-1", callback_url=url)

    assert response.status == 422, await response.text()
    assert response.content_type == "application/problem+json"
    problem = await response.json()
    assert list(problem["errors"]) == ["callback_url"]
    [message] = problem["errors"]["callback_url"]
    assert expected in message
    assert await _deliveries(service) == []


@pytest.mark.parametrize(("url", "case"), ACCEPTED, ids=[case for _, case in ACCEPTED])
async def test_submission_accepts_public_url(
    start_service: Callable[..., Awaitable[Service]], url: str, case: str
) -> None:
    service = await start_service(StaticResolver(ANSWERS))
    client = await service.new_client()

    response = await service.submit(client, customer_id="cust-1", callback_url=url)

    assert response.status == 202, await response.text()
    assert (await response.json())["callback_url"] == url
    await wait_for(lambda: len(service.backend.received) == 1)  # type: ignore[attr-defined]


async def test_submission_requires_https_by_default(
    start_service: Callable[..., Awaitable[Service]],
) -> None:
    service = await start_service(StaticResolver(ANSWERS), allow_http=False)
    client = await service.new_client()

    plain = await service.submit(
        client, customer_id="cust-1", callback_url="http://public.example/hooks"
    )
    secure = await service.submit(
        client, customer_id="cust-1", callback_url="https://public.example/hooks"
    )

    assert plain.status == 422
    assert (await plain.json())["errors"]["callback_url"] == [
        "the URL must be absolute and use https"
    ]
    assert secure.status == 202


async def test_submission_names_unresolvable_host(
    start_service: Callable[..., Awaitable[Service]],
) -> None:
    service = await start_service(StaticResolver(ANSWERS))
    client = await service.new_client()

    response = await service.submit(
        client, customer_id="cust-1", callback_url="https://nowhere.example/hooks"
    )

    assert response.status == 422
    errors = (await response.json())["errors"]
    assert errors == {"callback_url": ["the host nowhere.example does not resolve"]}


async def test_submission_names_private_answer(
    start_service: Callable[..., Awaitable[Service]],
) -> None:
    service = await start_service(StaticResolver(ANSWERS))
    client = await service.new_client()

    response = await service.submit(
        client, customer_id="cust-1", callback_url="https://metadata.example/"
    )

    assert response.status == 422
    message = (await response.json())["errors"]["callback_url"][0]
    assert message == (
        "metadata.example resolves to 169.254.169.254, which is not a public "
        "address (link-local)"
    )


async def test_submission_resolves_punycode_form(
    start_service: Callable[..., Awaitable[Service]],
) -> None:
    resolver = StaticResolver(ANSWERS)
    service = await start_service(resolver)
    client = await service.new_client()

    response = await service.submit(
        client, customer_id="cust-1", callback_url="https://b\u00fccher.example/hooks"
    )

    assert response.status == 202
    assert resolver.lookups == ["xn--bcher-kva.example"]


async def test_submission_explains_invalid_idna(
    start_service: Callable[..., Awaitable[Service]],
) -> None:
    service = await start_service(StaticResolver(ANSWERS))
    client = await service.new_client()

    response = await service.submit(
        client, customer_id="cust-1", callback_url="https://xn--zz.example/hooks"
    )

    assert response.status == 422
    message = (await response.json())["errors"]["callback_url"][0]
    assert "not a valid internationalised domain name" in message


async def test_private_networks_switch_skips_lookup(
    start_service: Callable[..., Awaitable[Service]],
) -> None:
    resolver = StaticResolver(ANSWERS)
    service = await start_service(resolver, allow_private_networks=True)
    client = await service.new_client()

    response = await service.submit(
        client, customer_id="cust-1", callback_url="http://loopback.example/hooks"
    )

    assert response.status == 202
    assert resolver.lookups == []


async def _submit(service: Service, client: Any, callback_url: str) -> str:
    """Submit a request and return its correlation ID."""
    response = await service.submit(
        client, customer_id="cust-1", callback_url=callback_url
    )
    assert response.status == 202, await response.text()
    return (await response.json())["correlation_id"]


async def _first_attempt(service: Service, client: Any, correlation_id: str) -> Any:
    """Post the request's result and return the first attempt of its webhook."""
    response = await service.post_result(correlation_id, outcome="ready", score=700)
    assert response.status == 200
    store = service.state.store
    page = await store.list_deliveries(
        DeliveryFilter(client_id=client.record.id), 1, None
    )
    delivery_id = page.deliveries[0].id

    async def attempted() -> bool:
        return len(await store.list_attempts(delivery_id)) >= 1

    await wait_for(attempted)
    await asyncio.sleep(QUIET_PERIOD_S)
    return (await store.list_attempts(delivery_id))[0]


async def test_rebinding_to_loopback_is_rejected(
    start_service: Callable[..., Awaitable[Service]],
    make_receiver: Callable[..., Awaitable[Receiver]],
) -> None:
    """A name public at submission and loopback on delivery gets nothing through."""
    receiver = await make_receiver()
    resolver = StaticResolver({"rebind.example": [PUBLIC_IPV4]})
    service = await start_service(resolver)
    client = await service.new_client()
    assert receiver.server is not None
    callback_url = f"http://rebind.example:{receiver.server.port}/hooks"

    correlation_id = await _submit(service, client, callback_url)
    resolver.answers["rebind.example"] = ["127.0.0.1"]
    first = await _first_attempt(service, client, correlation_id)

    assert first.status_code is None
    assert first.error == (
        "rejected by network policy: rebind.example resolves to 127.0.0.1, "
        "which is not a public address (loopback)"
    )
    assert resolver.lookups.count("rebind.example") >= 2
    assert receiver.received == []


async def test_rebinding_reaches_receiver_when_allowed(
    start_service: Callable[..., Awaitable[Service]],
    make_receiver: Callable[..., Awaitable[Receiver]],
) -> None:
    """The rebinding test's setup delivers once private networks are allowed."""
    receiver = await make_receiver()
    resolver = StaticResolver({"rebind.example": ["127.0.0.1"]})
    service = await start_service(resolver, allow_private_networks=True)
    client = await service.new_client()
    receiver.secret = client.signing_secret
    assert receiver.server is not None
    callback_url = f"http://rebind.example:{receiver.server.port}/hooks"

    correlation_id = await _submit(service, client, callback_url)
    first = await _first_attempt(service, client, correlation_id)

    assert first.status_code == 200
    assert first.error is None
    assert len(receiver.received) == 1
    assert receiver.invalid == []


async def test_stored_literal_callback_rejected_on_connect(
    aiohttp_client: Any,
    make_receiver: Callable[..., Awaitable[Receiver]],
    tmp_path: Path,
) -> None:
    """A loopback callback stored while allowed is not delivered once the policy is on.

    aiohttp connects to a literal address without a lookup, so this tests
    the socket factory, which checks every address before connecting.
    """
    receiver = await make_receiver()
    backend = await make_receiver(default_status=202)
    resolver = StaticResolver()
    config = make_config(tmp_path)
    config = replace(
        config, backend=replace(config.backend, url=backend.url("/events"))
    )
    permissive = await aiohttp_client(create_app(config, resolver=resolver))
    service = Service(http=permissive, config=config)
    client = await service.new_client()
    correlation_id = await _submit(service, client, receiver.url())
    await permissive.close()

    strict_config = policy_config(config)
    strict = Service(
        http=await aiohttp_client(create_app(strict_config, resolver=resolver)),
        config=strict_config,
    )
    first = await _first_attempt(strict, client, correlation_id)

    assert first.status_code is None
    assert first.error == (
        "rejected by network policy: 127.0.0.1 is not a public address (loopback)"
    )
    assert receiver.received == []


async def test_policy_resolver_rejects_mixed_answer() -> None:
    resolver = PolicyResolver(StaticResolver(ANSWERS), NetworkPolicy())

    with pytest.raises(AddressRejected) as raised:
        await resolver.resolve("mixed.example", 443)

    assert str(raised.value) == (
        "mixed.example resolves to 10.0.0.1, which is not a public address (private)"
    )


async def test_policy_resolver_passes_public_answer() -> None:
    resolver = PolicyResolver(StaticResolver(ANSWERS), NetworkPolicy())

    results = await resolver.resolve("dual.example", 443, family=0)

    assert [result["host"] for result in results] == [PUBLIC_IPV4, PUBLIC_IPV6]


async def test_policy_resolver_passes_all_when_allowed() -> None:
    policy = NetworkPolicy(allow_private_networks=True)
    resolver = PolicyResolver(StaticResolver(ANSWERS), policy)

    results = await resolver.resolve("loopback.example", 80)

    assert [result["host"] for result in results] == ["127.0.0.1"]


async def test_connector_error_names_policy(
    make_receiver: Callable[..., Awaitable[Receiver]],
) -> None:
    """aiohttp wraps the resolver's rejection; the attempt's error names the policy."""
    receiver = await make_receiver()
    assert receiver.server is not None
    policy = NetworkPolicy(allow_http=True)
    connector = policy_connector(
        policy, StaticResolver(ANSWERS), limit=4, limit_per_host=2
    )
    url = f"http://loopback.example:{receiver.server.port}/hooks"

    async with aiohttp.ClientSession(connector=connector) as session:
        with pytest.raises(aiohttp.ClientConnectorError) as raised:
            await session.post(url, data=b"{}")
        result = await attempts.post(
            session, url, b"{}", {}, connect_timeout_s=1.0, total_timeout_s=2.0
        )

    assert isinstance(raised.value.os_error, AddressRejected)
    assert result.error == (
        "rejected by network policy: loopback.example resolves to 127.0.0.1, "
        "which is not a public address (loopback)"
    )
    assert receiver.received == []


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://b\u00fccher.example/", "xn--bcher-kva.example"),
        ("https://fa\u00df.example/", "xn--fa-hia.example"),
        ("https://\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.com/", "example.com"),
        ("https://Public.Example./", "public.example."),
    ],
    ids=["umlaut", "sharp-s-idna-2008", "fullwidth-letters", "uppercase-fqdn"],
)
def test_check_url_judges_ascii_form(url: str, host: str) -> None:
    assert NetworkPolicy().check_url(url).raw_host == host


def test_check_url_names_idna_failure() -> None:
    with pytest.raises(PolicyViolation) as raised:
        NetworkPolicy().check_url("https://\u0661\u0662\u0663.example/")

    assert str(raised.value).startswith(
        "the host name '\u0661\u0662\u0663.example' is not a valid internationalised "
        "domain name (IDNA 2008)"
    )
