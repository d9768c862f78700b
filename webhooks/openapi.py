"""The OpenAPI 3.1 document, generated once at start from the routes and schemas.

Paths come from the application's router and bodies from the marshmallow
schemas that the handlers load and dump, so the document lists what is
served. Each operation's prose, parameters and status codes are in
``_operations`` below. A served route missing there still appears, marked
``x-undocumented``, and the tests fail on that mark.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

import webhooks
from webhooks import events
from webhooks.admin_api import DeliveryQuery
from webhooks.config import Config
from webhooks.console import CONSOLE
from webhooks.netpolicy import NetworkPolicy
from webhooks.problems import PROBLEM_CONTENT_TYPE
from webhooks.resource_schemas import (
    ClientDeliveryPageResource,
    ClientHealthResource,
    CreatedClientResource,
    CustomerScoreResource,
    DeliveryDetailResource,
    DeliveryPageResource,
    DeliveryResource,
    ErasureResource,
    HealthResource,
    ProblemDocument,
    ReadinessResource,
    ResultResource,
    RotatedSecretResource,
    RotatedSigningKeysResource,
    ScoreEvent,
    ScoreRequestedEvent,
    ScoreRequestResource,
    SigningKeysResource,
    TimelineResource,
    UnfetchedPageResource,
)
from webhooks.tracking_api import ClientDeliveryQuery, UnfetchedQuery
from webhooks.schemas import (
    CUSTOMER_ID_PATTERN,
    ClientBody,
    ResultBody,
    ScoreRequestBody,
)

OPENAPI_VERSION = "3.1.0"
JSON = "application/json"

# Problem responses shared by the operations: status, component name, text.
_PROBLEMS = {
    400: ("MalformedJson", "The body is not valid JSON."),
    401: ("Unauthorized", "The bearer token is missing or invalid."),
    404: ("NotFound", "The ID is unknown, or belongs to another client."),
    409: ("Conflict", "The request conflicts with the stored state."),
    413: ("PayloadTooLarge", "The body is larger than server.max_body_bytes."),
    415: ("UnsupportedMediaType", "The content type is not JSON."),
    422: (
        "ValidationFailed",
        "The request failed validation; errors names each field.",
    ),
    429: ("TooManyRequests", "Rate limit exceeded; retry after Retry-After seconds."),
}
_BODY_PROBLEMS = (400, 413, 415, 422)

_SECURITY_SCHEMES = {
    "ClientApiKey": "The API key of a client system, one per client.",
    "BackendToken": "The token of the scoring backend, from backend.token.",
    "AdminToken": "The operator token, from admin.token.",
}

_RETRY_AFTER = {
    "description": "Seconds to wait before polling again (pending requests only).",
    "schema": {"type": "integer", "minimum": 1},
}


def _json(schema: Any, description: str, **headers: dict[str, Any]) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {JSON: {"schema": schema}},
    }
    if headers:
        response["headers"] = headers
    return response


def _body(schema: Any, description: str) -> dict[str, Any]:
    return {
        "required": True,
        "description": description,
        "content": {JSON: {"schema": schema}},
    }


def _problems(*statuses: int) -> dict[str, str]:
    return {str(status): _PROBLEMS[status][0] for status in statuses}


def _secured(scheme: str, *problems: int) -> dict[str, Any]:
    """Return the security and the problem responses of an authenticated operation."""
    return {
        "security": [{scheme: []}],
        "problems": (401, 429, *problems),
    }


def _path_id(name: str, description: str, pattern: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "minLength": 1}
    if pattern is not None:
        schema["pattern"] = pattern
    return {
        "in": "path",
        "name": name,
        "required": True,
        "description": description,
        "schema": schema,
    }


def _operations(config: Config) -> dict[tuple[str, str], dict[str, Any]]:
    """Return the documentation of each served operation by (method, path)."""
    policy = NetworkPolicy(
        allow_http=config.delivery.allow_http,
        allow_private_networks=config.delivery.allow_private_networks,
    )
    correlation_id = _path_id(
        "correlation_id", "The correlation ID of a score request."
    )
    delivery_id = _path_id("delivery_id", "The ID of a delivery.")
    return {
        ("GET", "/healthz"): {
            "summary": "Report that the process is alive",
            "tags": ["operations"],
            "responses": {"200": _json(HealthResource, "The process is alive.")},
        },
        ("GET", "/readyz"): {
            "summary": "Report whether the service can take traffic",
            "description": (
                "Ready when the store answers in time, every migration is "
                "applied and the dispatcher runs."
            ),
            "tags": ["operations"],
            "responses": {
                "200": _json(ReadinessResource, "Ready."),
                "503": _json(ReadinessResource, "Not ready; reason says why."),
            },
        },
        ("GET", "/metrics"): {
            "summary": "Return the metrics in the Prometheus text format",
            "tags": ["operations"],
            "responses": {
                "200": {
                    "description": "Prometheus text format 0.0.4.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        },
        ("GET", "/openapi.json"): {
            "summary": "Return this OpenAPI document",
            "tags": ["operations"],
            "responses": {
                "200": _json({"type": "object"}, "The OpenAPI 3.1 document.")
            },
        },
        ("POST", "/v1/score-requests"): {
            "summary": "Submit a score request",
            "description": (
                "Returns 202 while the score is computed, or 201 when a valid "
                "stored score answers at once. Either way a webhook follows."
            ),
            "tags": ["clients"],
            **_secured("ClientApiKey", *_BODY_PROBLEMS),
            "parameters": [
                {
                    "in": "header",
                    "name": "Idempotency-Key",
                    "required": False,
                    "description": (
                        "Repeats with the same body return the first response; "
                        "with another body they get 422. Kept at least 24 hours."
                    ),
                    "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"},
                }
            ],
            "requestBody": _body(ScoreRequestBody(policy), "The request to score."),
            "responses": {
                "201": _json(
                    ScoreRequestResource,
                    "Ready at once from a valid stored score.",
                    Location=_location_header(),
                ),
                "202": _json(
                    ScoreRequestResource,
                    "Accepted; the score is being computed.",
                    Location=_location_header(),
                    **{"Retry-After": _RETRY_AFTER},
                ),
            },
        },
        ("GET", "/v1/score-requests/{correlation_id}"): {
            "summary": "Read a score request",
            "tags": ["clients"],
            **_secured("ClientApiKey", 404),
            "parameters": [correlation_id],
            "responses": {
                "200": _json(
                    ScoreRequestResource,
                    "The request, with the score once ready.",
                    **{"Retry-After": _RETRY_AFTER},
                )
            },
        },
        ("GET", "/v1/customers/{customer_id}/score"): {
            "summary": "Read the newest valid score of a customer",
            "description": "Only for customers that this client has requested before.",
            "tags": ["clients"],
            **_secured("ClientApiKey", 404, 422),
            "parameters": [
                _path_id(
                    "customer_id",
                    "The client's reference of the customer.",
                    _ecma_pattern(CUSTOMER_ID_PATTERN),
                )
            ],
            "responses": {
                "200": _json(CustomerScoreResource, "The newest valid score.")
            },
        },
        ("POST", "/v1/clients/me/signing-secret/rotate"): {
            "summary": "Rotate the client's signing secret",
            "description": (
                "The previous secrets keep signing beside the new one until "
                "previous_secrets_expire_at."
            ),
            "tags": ["clients"],
            **_secured("ClientApiKey", 409),
            "responses": {
                "201": _json(RotatedSecretResource, "The new secret, shown only here.")
            },
        },
        ("GET", "/v1/webhooks/signing-keys"): {
            "summary": "List the public keys that sign v1a signatures",
            "tags": ["clients"],
            "responses": {
                "200": _json(
                    SigningKeysResource, "The Ed25519 public keys, newest first."
                )
            },
        },
        ("POST", "/v1/admin/signing-keys/rotate"): {
            "summary": "Create a new Ed25519 signing key",
            "description": "The previous key keeps signing until the overlap ends.",
            "tags": ["operators"],
            **_secured("AdminToken"),
            "responses": {
                "201": _json(RotatedSigningKeysResource, "The new key and every key.")
            },
        },
        ("PUT", "/v1/backend/score-requests/{correlation_id}/result"): {
            "summary": "Store the result of a computation",
            "description": (
                "Idempotent: an identical repeat returns 200 and notifies nobody "
                "again, and a different result gets 409. A ready outcome needs "
                "score; a failed one needs reason."
            ),
            "tags": ["backend"],
            **_secured("BackendToken", 404, 409, *_BODY_PROBLEMS),
            "parameters": [correlation_id],
            "requestBody": _body(
                ResultBody(config.scores.min, config.scores.max), "The result."
            ),
            "responses": {"200": _json(ResultResource, "The result is stored.")},
        },
        ("POST", "/v1/admin/clients"): {
            "summary": "Create a client system",
            "tags": ["operators"],
            **_secured("AdminToken", *_BODY_PROBLEMS),
            "requestBody": _body(ClientBody, "The client to create."),
            "responses": {
                "201": _json(
                    CreatedClientResource,
                    "Created; the API key and signing secret are shown only here.",
                )
            },
        },
        ("GET", "/v1/admin/deliveries"): {
            "summary": "List deliveries, newest first",
            "tags": ["operators"],
            **_secured("AdminToken", 422),
            "parameters": [{"in": "query", "schema": DeliveryQuery}],
            "responses": {
                "200": _json(DeliveryPageResource, "One page of deliveries.")
            },
        },
        ("GET", "/v1/admin/deliveries/{delivery_id}"): {
            "summary": "Read a delivery with all its attempts",
            "tags": ["operators"],
            **_secured("AdminToken", 404),
            "parameters": [delivery_id],
            "responses": {"200": _json(DeliveryDetailResource, "The delivery.")},
        },
        ("POST", "/v1/admin/deliveries/{delivery_id}/replay"): {
            "summary": "Replay a failed or delivered delivery",
            "description": (
                "Makes it due now with a fresh retry budget. The webhook-id stays."
            ),
            "tags": ["operators"],
            **_secured("AdminToken", 404, 409),
            "parameters": [delivery_id],
            "responses": {"202": _json(DeliveryResource, "The delivery, due now.")},
        },
        ("DELETE", "/v1/admin/clients/{client_id}/customers/{customer_id}"): {
            "summary": "Erase a client's customer",
            "description": (
                "In one transaction: deletes the customer's scores, idempotency "
                "records and request timelines, clears request metadata, cancels "
                "pending and held deliveries, fails pending requests, and replaces "
                "the customer ID in every row kept by a keyed hash. An audit "
                "record keeps the hash, never the ID. Repeating it changes "
                "nothing more but adds another audit record."
            ),
            "tags": ["operators"],
            **_secured("AdminToken", 404, 422),
            "parameters": [
                _path_id("client_id", "The ID of a client."),
                _path_id(
                    "customer_id",
                    "The client's reference of the customer.",
                    _ecma_pattern(CUSTOMER_ID_PATTERN),
                ),
            ],
            "responses": {
                "200": _json(ErasureResource, "Erased; the rows changed per table.")
            },
        },
        ("GET", "/v1/score-requests/{correlation_id}/timeline"): {
            "summary": "Follow one of your requests step by step",
            "description": (
                "Each step was recorded when it happened. The backend's side is "
                "left out."
            ),
            "tags": ["clients"],
            **_secured("ClientApiKey", 404),
            "parameters": [correlation_id],
            "responses": {"200": _json(TimelineResource, "The steps in order.")},
        },
        ("GET", "/v1/admin/score-requests/{correlation_id}/timeline"): {
            "summary": "Follow any request step by step, the backend's side included",
            "tags": ["operators"],
            **_secured("AdminToken", 404),
            "parameters": [correlation_id],
            "responses": {"200": _json(TimelineResource, "The steps in order.")},
        },
        ("GET", "/v1/admin/score-requests"): {
            "summary": "List requests delivered but not fetched",
            "description": (
                "Requests whose webhook the receiver accepted longer ago than "
                "delivered_not_fetched_for (such as 90s, 15m, 2h or 3d) and whose "
                "result the client never read."
            ),
            "tags": ["operators"],
            **_secured("AdminToken", 422),
            "parameters": [{"in": "query", "schema": UnfetchedQuery}],
            "responses": {"200": _json(UnfetchedPageResource, "One page of requests.")},
        },
        ("GET", "/v1/clients/me/deliveries"): {
            "summary": "List your webhook deliveries, such as held or failed ones",
            "tags": ["clients"],
            **_secured("ClientApiKey", 422),
            "parameters": [{"in": "query", "schema": ClientDeliveryQuery}],
            "responses": {
                "200": _json(ClientDeliveryPageResource, "One page of deliveries.")
            },
        },
        ("GET", "/v1/clients/me/health"): {
            "summary": "See how your receivers fare",
            "description": "Failing since when, the last error, and held deliveries.",
            "tags": ["clients"],
            **_secured("ClientApiKey"),
            "responses": {"200": _json(ClientHealthResource, "Receiver health.")},
        },
    }


def _location_header() -> dict[str, Any]:
    return {
        "description": "Path of the request resource.",
        "required": True,
        "schema": {"type": "string"},
    }


def _ecma_pattern(pattern: str) -> str:
    r"""Return a Python pattern in the ECMA-262 dialect of JSON Schema.

    Python's ``\Z`` (end of text) has no ECMA-262 form; ``$`` without the
    multiline flag means the same there.
    """
    return pattern.removesuffix(r"\Z") + "$" if pattern.endswith(r"\Z") else pattern


def _webhook_headers() -> list[dict[str, Any]]:
    def header(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "in": "header",
            "name": name,
            "required": True,
            "description": description,
            "schema": schema,
        }

    return [
        header(
            "webhook-id",
            "The delivery's message ID, the same on every retry and replay.",
            {"type": "string"},
        ),
        header(
            "webhook-timestamp",
            "Unix time in seconds of this attempt.",
            {"type": "string", "pattern": "^[0-9]+$"},
        ),
        header(
            "webhook-signature",
            "Space-separated signatures after the Standard Webhooks "
            "specification: v1,<base64 HMAC-SHA256> over "
            "{webhook-id}.{webhook-timestamp}.{body}, one per valid secret.",
            {
                "type": "string",
                "pattern": "^v1a?,[A-Za-z0-9+/=]+( v1a?,[A-Za-z0-9+/=]+)*$",
            },
        ),
    ]


def _webhook(schema_name: str, summary: str, description: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "description": description,
            "parameters": _webhook_headers(),
            "requestBody": {
                "required": True,
                "content": {
                    JSON: {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}
                },
            },
            "responses": {
                "2XX": {"description": "Acknowledged; no more attempts."},
                "410": {
                    "description": "Gone: the delivery fails at once, without retries."
                },
                "default": {
                    "description": (
                        "Any other status, a redirect, a timeout or a connection "
                        "error is retried on the retry schedule."
                    )
                },
            },
        }
    }


def _webhooks() -> dict[str, Any]:
    to_client = (
        "POSTed to the callback_url of the request. The event carries no "
        "score: GET score_url with the API key to read it."
    )
    return {
        events.SCORE_READY: _webhook("ScoreEvent", "The score is ready", to_client),
        events.SCORE_FAILED: _webhook("ScoreEvent", "The score failed", to_client),
        events.SCORE_REQUESTED: _webhook(
            "ScoreRequestedEvent",
            "A new computation, sent to the scoring backend",
            "POSTed to backend.url and signed with backend.signing_secret. "
            "Answer with PUT /v1/backend/score-requests/{correlation_id}/result.",
        ),
    }


def _undocumented(route: web.AbstractRoute) -> dict[str, Any]:
    summary = (route.handler.__doc__ or route.handler.__name__).strip().splitlines()[0]
    return {
        "summary": summary,
        "x-undocumented": True,
        "responses": {"default": {"description": "Not documented yet."}},
    }


def _add_components(spec: APISpec) -> None:
    for name, description in _SECURITY_SCHEMES.items():
        spec.components.security_scheme(
            name, {"type": "http", "scheme": "bearer", "description": description}
        )
    spec.components.schema("Problem", schema=ProblemDocument)
    for status, (name, description) in sorted(_PROBLEMS.items()):
        response: dict[str, Any] = {
            "description": description,
            "content": {PROBLEM_CONTENT_TYPE: {"schema": "Problem"}},
        }
        if status == 401:
            response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        if status == 429:
            response["headers"] = {
                "Retry-After": {"schema": {"type": "integer", "minimum": 0}}
            }
        spec.components.response(name, response)
    spec.components.schema("ScoreEvent", schema=ScoreEvent)
    spec.components.schema("ScoreRequestedEvent", schema=ScoreRequestedEvent)


def _add_path(
    spec: APISpec, route: web.AbstractRoute, operation: dict[str, Any]
) -> None:
    operation = dict(operation)
    responses = dict(operation["responses"])
    responses.update(_problems(*operation.pop("problems", ())))
    operation["responses"] = responses
    operation.setdefault("operationId", route.handler.__name__)
    assert route.resource is not None
    spec.path(
        path=route.resource.canonical, operations={route.method.lower(): operation}
    )


def _set_score_range(document: dict[str, Any], config: Config) -> None:
    """Add the configured score range, which ResultBody checks in code."""
    score = document["components"]["schemas"]["ResultBody"]["properties"]["score"]
    score["minimum"] = config.scores.min
    score["maximum"] = config.scores.max


def build_document(app: web.Application, config: Config) -> dict[str, Any]:
    """Build the document for every route of ``app`` except HEAD ones."""
    spec = APISpec(
        title="Score webhooks",
        version=webhooks.__version__,
        openapi_version=OPENAPI_VERSION,
        plugins=[MarshmallowPlugin()],
        info={
            "description": (
                "Asynchronous credit-score requests answered with signed webhooks "
                "(Standard Webhooks). Errors are RFC 9457 problem documents."
            )
        },
        servers=[{"url": config.server.public_url}],
        webhooks=_webhooks(),
    )
    _add_components(spec)
    operations = _operations(config)
    for route in app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue
        if route.resource.canonical.startswith(f"{CONSOLE}/"):
            continue  # the console's HTML pages are not part of the JSON API
        key = (route.method, route.resource.canonical)
        _add_path(spec, route, operations.get(key) or _undocumented(route))
    document = spec.to_dict()
    _set_score_range(document, config)
    return document


OPENAPI_DOCUMENT = web.AppKey("openapi_document", bytes)


def add_openapi_document(app: web.Application, config: Config) -> None:
    """Serve the document at /openapi.json, built at start once the routes are final."""

    async def build_on_startup(app: web.Application) -> None:
        document = build_document(app, config)
        app[OPENAPI_DOCUMENT] = json.dumps(document, separators=(",", ":")).encode()

    app.router.add_get("/openapi.json", serve_document)
    app.on_startup.append(build_on_startup)


async def serve_document(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI_DOCUMENT], content_type=JSON)
