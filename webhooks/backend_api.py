"""The scoring backend's readiness signal."""

from __future__ import annotations

import functools

from aiohttp import web

from store.records import RequestStatus
from webhooks import bodies
from webhooks.auth import require_backend
from webhooks.resource_schemas import ResultResource
from webhooks.schemas import ResultBody
from webhooks.service import Result
from webhooks.state import STATE
from webhooks.timefmt import utc_now

routes = web.RouteTableDef()

# Building a marshmallow schema deep-copies its fields: about 5 % of the
# service's time in a py-spy profile of scripts/bench.py. The schemas keep
# no state between calls, so one instance serves every call.
_RESULT_RESOURCE = ResultResource()


@functools.lru_cache(maxsize=4)
def _result_body(score_min: int, score_max: int) -> ResultBody:
    return ResultBody(score_min, score_max)


@routes.put("/v1/backend/score-requests/{correlation_id}/result")
async def put_result(request: web.Request) -> web.Response:
    """Store a result; idempotent, and 409 for one that contradicts the stored one."""
    state = request.app[STATE]
    require_backend(request)
    document = await bodies.read_json(request)
    scores = state.config.scores
    body = bodies.load(_result_body(scores.min, scores.max), document)

    result = Result(
        outcome=RequestStatus(body["outcome"]),
        score=body.get("score"),
        valid_until=body.get("valid_until"),
        reason=body.get("reason"),
    )
    record, changed = await state.service.record_result(
        request.match_info["correlation_id"], result, utc_now()
    )
    resource = {
        "correlation_id": record.correlation_id,
        "status": record.status,
        "changed": changed,
    }
    return web.json_response(_RESULT_RESOURCE.dump(resource))
