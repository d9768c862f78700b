"""GET /openapi.json: a valid OpenAPI 3.1 document that matches what is served."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import hypothesis
import jsonschema
import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, Phase, given
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from conftest import ADMIN_TOKEN, Receiver, Service, make_config, wait_for
from webhooks import openapi
from webhooks.app import create_app

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Bounds of the property-based run: examples per operation and mode, and
# the time after which the remaining operations get no more examples.
EXAMPLES_PER_OPERATION = 10
TIME_BUDGET_S = 90.0


async def _document(service: Service) -> dict[str, Any]:
    response = await service.http.get("/openapi.json")
    assert response.status == 200
    assert response.content_type == "application/json"
    return await response.json()


def _served_operations(app: web.Application) -> set[tuple[str, str]]:
    """Return the JSON API's operations; the console's HTML pages are not in it."""
    return {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD"
        and route.resource is not None
        and not route.resource.canonical.startswith("/console/")
    }


def _component_validator(document: dict[str, Any], name: str) -> jsonschema.Validator:
    """Return a JSON Schema 2020-12 validator of one component, with its references."""
    schema = {
        "$ref": f"#/components/schemas/{name}",
        "components": document["components"],
    }
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


async def test_document_is_valid_openapi_31(service: Service) -> None:
    document = await _document(service)

    validate(document)
    assert document["openapi"] == "3.1.0"


async def test_document_lists_every_served_route(service: Service) -> None:
    document = await _document(service)

    documented = {
        (method, path)
        for path, operations in document["paths"].items()
        for method in operations
    }
    assert documented == _served_operations(service.http.app)
    assert ("get", "/openapi.json") in documented


async def test_every_route_documented_in_full(service: Service) -> None:
    document = await _document(service)

    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            label = f"{method.upper()} {path}"
            assert "x-undocumented" not in operation, f"{label}: add it to openapi.py"
            assert any(code.startswith("2") for code in operation["responses"]), label
            assert operation["summary"], label


async def test_security_schemes_are_three_bearers(service: Service) -> None:
    document = await _document(service)

    schemes = document["components"]["securitySchemes"]
    assert set(schemes) == {"ClientApiKey", "BackendToken", "AdminToken"}
    for scheme in schemes.values():
        assert scheme == {**scheme, "type": "http", "scheme": "bearer"}
    operations = document["paths"]
    assert operations["/v1/score-requests"]["post"]["security"] == [
        {"ClientApiKey": []}
    ]
    result = operations["/v1/backend/score-requests/{correlation_id}/result"]["put"]
    assert result["security"] == [{"BackendToken": []}]
    assert operations["/v1/admin/deliveries"]["get"]["security"] == [{"AdminToken": []}]
    assert "security" not in operations["/healthz"]["get"]


async def test_errors_are_problem_documents(service: Service) -> None:
    document = await _document(service)

    submit = document["paths"]["/v1/score-requests"]["post"]["responses"]
    for status in ("400", "401", "413", "415", "422", "429"):
        reference = submit[status]["$ref"]
        name = reference.rsplit("/", 1)[-1]
        content = document["components"]["responses"][name]["content"]
        assert list(content) == ["application/problem+json"]
    problem = document["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail"}


async def test_webhooks_section_names_events(service: Service) -> None:
    document = await _document(service)

    webhooks = document["webhooks"]
    assert set(webhooks) == {"score.ready", "score.failed", "score.requested"}
    for event in webhooks.values():
        headers = {
            p["name"] for p in event["post"]["parameters"] if p["in"] == "header"
        }
        assert headers == {"webhook-id", "webhook-timestamp", "webhook-signature"}


async def test_document_built_once_at_start(
    make_service: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    build = openapi.build_document

    def counting_build(*args: Any) -> dict[str, Any]:
        calls.append(args)
        return build(*args)

    monkeypatch.setattr(openapi, "build_document", counting_build)
    service = await make_service()
    first = await (await service.http.get("/openapi.json")).read()
    second = await (await service.http.get("/openapi.json")).read()

    assert len(calls) == 1
    assert first == second


async def test_webhook_bodies_match_document(
    service: Service, backend: Receiver, make_receiver: Any
) -> None:
    document = await _document(service)
    client = await service.new_client()
    receiver = await make_receiver(secret=client.signing_secret)
    correlation_ids = []
    for customer_id in ("cust-ready", "cust-failed"):
        response = await service.submit(
            client, customer_id=customer_id, callback_url=receiver.url()
        )
        assert response.status == 202
        correlation_ids.append((await response.json())["correlation_id"])
    await service.post_result(correlation_ids[0], outcome="ready", score=700)
    await service.post_result(correlation_ids[1], outcome="failed", reason="no file")

    await wait_for(lambda: len(backend.received) == 2 and len(receiver.received) == 2)

    requested = _component_validator(document, "ScoreRequestedEvent")
    for hook in backend.received:
        requested.validate(hook.event)
    completed = _component_validator(document, "ScoreEvent")
    assert {hook.event["type"] for hook in receiver.received} == {
        "score.ready",
        "score.failed",
    }
    for hook in receiver.received:
        completed.validate(hook.event)
    header_schemas = {
        parameter["name"]: parameter["schema"]
        for parameter in document["webhooks"]["score.ready"]["post"]["parameters"]
    }
    for hook in [*backend.received, *receiver.received]:
        for name, schema in header_schemas.items():
            jsonschema.validate(hook.headers[name], schema)


@dataclass(frozen=True)
class LiveService:
    base_url: str
    callback_url: str
    backend_token: str


@contextmanager
def _live_service(tmp_path: Path) -> Iterator[LiveService]:
    """Run the app, a backend stand-in and a callback receiver on 127.0.0.1.

    They run on an event loop in a thread of their own, because
    schemathesis sends its requests with the blocking ``requests`` library.
    """
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=30)

    async def acknowledge(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=202)

    async def start(app: web.Application) -> tuple[web.AppRunner, str]:
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        return runner, f"http://{host}:{port}"

    async def start_all() -> tuple[list[web.AppRunner], LiveService]:
        receiver = web.Application()
        receiver.router.add_route("*", "/{tail:.*}", acknowledge)
        receiver_runner, receiver_url = await start(receiver)
        config = make_config(tmp_path)
        config = replace(
            config, backend=replace(config.backend, url=f"{receiver_url}/backend")
        )
        app_runner, base_url = await start(create_app(config))
        live = LiveService(
            base_url=base_url,
            callback_url=f"{receiver_url}/hooks",
            backend_token=config.backend.token,
        )
        return [app_runner, receiver_runner], live

    runners, live = run(start_all())
    try:
        yield live
    finally:
        for runner in runners:
            run(runner.cleanup())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def _seed(session: requests.Session, live: LiveService) -> tuple[str, dict[str, str]]:
    """Create a client and one request; return its API key and real path IDs."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    response = session.post(
        f"{live.base_url}/v1/admin/clients", json={"name": "fuzz"}, headers=admin
    )
    assert response.status_code == 201, response.text
    api_key = response.json()["api_key"]
    client_id = response.json()["client_id"]
    response = session.post(
        f"{live.base_url}/v1/score-requests",
        json={"customer_id": "cust-1", "callback_url": live.callback_url},
        headers={"Authorization": f"Bearer {api_key}"},
    )
    assert response.status_code == 202, response.text
    correlation_id = response.json()["correlation_id"]
    response = session.get(f"{live.base_url}/v1/admin/deliveries", headers=admin)
    delivery_id = response.json()["deliveries"][0]["id"]
    ids = {
        "client_id": client_id,
        "correlation_id": correlation_id,
        "customer_id": "cust-1",
        "delivery_id": delivery_id,
    }
    return api_key, ids


def _pin_callback(case: Any, callback_url: str) -> None:
    """Point a generated callback URL at the local receiver.

    Every webhook then goes to 127.0.0.1, whatever URL was generated.
    """
    if isinstance(case.body, dict) and isinstance(case.body.get("callback_url"), str):
        case.body["callback_url"] = callback_url


def _check_operation(
    operation: Any,
    mode: schemathesis.GenerationMode,
    *,
    session: requests.Session,
    live: LiveService,
    headers: dict[str, str],
    path_ids: dict[str, str],
    deadline: float,
) -> int:
    """Send generated requests for one operation; return how many went out."""
    names = {p.name for p in operation.path_parameters}
    sent = 0
    fixed = {name: path_ids[name] for name in names} if mode == "positive" else None

    @hypothesis.settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=fixed))
    def check(case: Any) -> None:
        nonlocal sent
        if time.monotonic() > deadline:
            return
        _pin_callback(case, live.callback_url)
        response = case.call(
            base_url=live.base_url, session=session, headers=headers, timeout=10
        )
        sent += 1
        case.validate_response(response, checks=CHECKS)

    check()
    return sent


@pytest.mark.slow
def test_responses_conform_to_document(tmp_path: Path) -> None:
    """Generated requests get no 500 and no response that breaks the document."""
    with _live_service(tmp_path) as live, requests.Session() as session:
        session.trust_env = False  # no proxy from the environment: 127.0.0.1 only
        document = session.get(f"{live.base_url}/openapi.json").json()
        api_key, path_ids = _seed(session, live)
        tokens = {
            "ClientApiKey": api_key,
            "BackendToken": live.backend_token,
            "AdminToken": ADMIN_TOKEN,
        }
        schema = schemathesis.openapi.from_dict(document)
        deadline = time.monotonic() + TIME_BUDGET_S
        checked = 0
        sent = 0

        for result in schema.get_all_operations():
            operation = result.ok()
            raw = document["paths"][operation.path][operation.method.lower()]
            headers = {}
            for requirement in raw.get("security", []):
                for scheme in requirement:
                    headers["Authorization"] = f"Bearer {tokens[scheme]}"
            modes = [schemathesis.GenerationMode.POSITIVE]
            # Negative data needs a parameter or a body to break.
            if raw.get("parameters") or raw.get("requestBody"):
                modes.append(schemathesis.GenerationMode.NEGATIVE)
            for mode in modes:
                sent += _check_operation(
                    operation,
                    mode,
                    session=session,
                    live=live,
                    headers=headers,
                    path_ids=path_ids,
                    deadline=deadline,
                )
            checked += 1

        assert checked == len(_served_paths(document))
        assert sent >= checked * EXAMPLES_PER_OPERATION
        print(f"sent {sent} requests for {checked} operations")
        assert time.monotonic() < deadline, (
            "the time budget ran out; raise it or cut examples"
        )


def _served_paths(document: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m, p) for p, operations in document["paths"].items() for m in operations]
