"""Marshmallow schemas of request bodies, the single source of their rules."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates, validates_schema

from webhooks.netpolicy import NetworkPolicy, PolicyViolation
from webhooks.timefmt import utc_now

# The pattern ends in \Z because $ also matches before a trailing newline.
CUSTOMER_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}\Z"
MAX_METADATA_BYTES = 4096
MAX_REASON_LENGTH = 500
# Far enough for any real validity, and near enough that every time stays
# within what datetime can represent in any offset.
MAX_VALIDITY = timedelta(days=36525)

customer_id_field = validate.Regexp(
    CUSTOMER_ID_PATTERN,
    error="must be 1 to 64 characters of A-Z a-z 0-9 . _ : -",
)


class _Strict(Schema):
    class Meta:
        unknown = RAISE


class ScoreRequestBody(_Strict):
    customer_id = fields.String(required=True, validate=customer_id_field)
    callback_url = fields.String(required=True)
    metadata = fields.Dict(keys=fields.String(), load_default=None, allow_none=True)

    def __init__(self, policy: NetworkPolicy, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.policy = policy

    @validates("callback_url")
    def _check_callback_url(self, value: str, **kwargs: Any) -> None:
        try:
            self.policy.check_url(value)
        except PolicyViolation as exc:
            raise ValidationError(str(exc)) from None

    @validates("metadata")
    def _check_metadata(self, value: dict[str, Any] | None, **kwargs: Any) -> None:
        if value is None:
            return
        size = len(json.dumps(value, separators=(",", ":")).encode())
        if size > MAX_METADATA_BYTES:
            raise ValidationError(
                f"must be at most {MAX_METADATA_BYTES} bytes as JSON, got {size}"
            )


class ResultBody(_Strict):
    outcome = fields.String(required=True, validate=validate.OneOf(["ready", "failed"]))
    score = fields.Integer(strict=True)
    valid_until = fields.AwareDateTime(format="iso", default_timezone=None)
    reason = fields.String(validate=validate.Length(min=1, max=MAX_REASON_LENGTH))

    def __init__(self, score_min: int, score_max: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.score_min = score_min
        self.score_max = score_max

    @validates_schema
    def _check_outcome_fields(self, data: dict[str, Any], **kwargs: Any) -> None:
        errors: dict[str, list[str]] = {}
        if data.get("outcome") == "ready":
            score = data.get("score")
            if score is None:
                errors["score"] = ["Missing data for required field."]
            elif not self.score_min <= score <= self.score_max:
                errors["score"] = [
                    f"must be between {self.score_min} and {self.score_max}"
                ]
            valid_until = data.get("valid_until")
            now = utc_now()
            if valid_until is not None and valid_until <= now:
                errors["valid_until"] = ["must be in the future"]
            elif valid_until is not None and valid_until > now + MAX_VALIDITY:
                errors["valid_until"] = ["must be at most 100 years ahead"]
            if "reason" in data:
                errors["reason"] = ["only allowed when outcome is failed"]
        if data.get("outcome") == "failed":
            if "reason" not in data:
                errors["reason"] = ["Missing data for required field."]
            for name in ("score", "valid_until"):
                if name in data:
                    errors[name] = ["only allowed when outcome is ready"]
        if errors:
            raise ValidationError(errors)


class ClientBody(_Strict):
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
