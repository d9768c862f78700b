"""Configuration: a TOML file validated on load, or the embedded default.

Secrets may come from the environment instead of the file:

=================================  ============================
environment variable               configuration key
=================================  ============================
``WEBHOOKS_BACKEND_TOKEN``         ``backend.token``
``WEBHOOKS_BACKEND_SIGNING_SECRET`` ``backend.signing_secret``
``WEBHOOKS_ADMIN_TOKEN``           ``admin.token``
``WEBHOOKS_MASTER_KEY``            ``security.master_key``
=================================  ============================
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from webhooks import credentials

log = logging.getLogger("webhooks.config")

ENVIRONMENT_SECRETS = {
    ("backend", "token"): "WEBHOOKS_BACKEND_TOKEN",
    ("backend", "signing_secret"): "WEBHOOKS_BACKEND_SIGNING_SECRET",
    ("admin", "token"): "WEBHOOKS_ADMIN_TOKEN",
    ("security", "master_key"): "WEBHOOKS_MASTER_KEY",
}
EMBEDDED_DATA_DIR = Path("var")
EMBEDDED_SECRETS_FILE = EMBEDDED_DATA_DIR / "secrets.toml"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class ConfigError(Exception):
    """The configuration is invalid; the message names every key at fault."""


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = "http://127.0.0.1:8080"  # base of the score_url in webhooks
    max_body_bytes: int = 64 * 1024


@dataclass(frozen=True, kw_only=True)
class StoreConfig:
    url: str = "sqlite:///var/webhooks.sqlite3"
    synchronous: str = "full"  # SQLite: "full" survives power loss, "normal" only a crash
    pool_size: int = 10  # PostgreSQL: connections per process


@dataclass(frozen=True, kw_only=True)
class BackendConfig:
    url: str = "http://127.0.0.1:9000/score-requests"
    token: str
    signing_secret: str


@dataclass(frozen=True, kw_only=True)
class AdminConfig:
    token: str
    # The console answers a wrong admin token after this delay, which slows
    # guessing; tests shorten it.
    console_login_delay_s: float = 1.0
    console_session_lifetime_s: float = 8 * 3600.0  # a login lasts a work day


@dataclass(frozen=True, kw_only=True)
class SecurityConfig:
    master_key: str  # URL-safe base64 of 32 bytes; encrypts signing secrets at rest
    # How long a rotated-out client secret or service signing key keeps
    # signing beside its successor.
    rotation_overlap_s: float = 86400.0


@dataclass(frozen=True, kw_only=True)
class DeliveryConfig:
    # Delays before the second, third, ... attempt.
    retry_schedule_s: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
    jitter: float = 0.1  # each delay grows by a random fraction up to this
    connect_timeout_s: float = 5.0
    attempt_timeout_s: float = 15.0
    retry_after_max_s: float = 3600.0  # cap on a receiver's Retry-After
    max_in_flight: int = 64
    max_in_flight_per_host: int = 8
    circuit_failure_threshold: int = 10
    circuit_cooldown_s: float = 60.0
    shutdown_grace_s: float = 10.0
    # A lease lasts the attempt timeout plus this margin for recording the
    # outcome; after a crash, other processes wait this long at most.
    lease_margin_s: float = 30.0
    poll_interval_s: float = 1.0  # finds due retries and work written by other processes
    # A delivery whose schedule runs out while its receiver failed throughout
    # is held this long, and sent again once the receiver answers; 0 turns
    # holding off, so such deliveries fail at once.
    held_window_s: float = 3 * 86400.0
    held_release_per_second: float = 10.0  # pace of sending held deliveries again
    # Ask each new callback origin of a client, with the CloudEvents webhook
    # validation handshake (an OPTIONS request), whether it accepts webhooks.
    verify_callback_origin: bool = False
    handshake_recheck_s: float = 3600.0  # how soon a refused origin is asked again
    allow_http: bool = False
    allow_private_networks: bool = False


@dataclass(frozen=True, kw_only=True)
class ScoresConfig:
    min: int = 300
    max: int = 850
    default_validity_s: float = 86400.0
    poll_hint_s: int = 10  # Retry-After on pending requests
    idempotency_window_s: float = 86400.0
    # A delivered result not read within this time counts in the metrics
    # as delivered but not fetched.
    fetch_expected_within_s: float = 3600.0


@dataclass(frozen=True, kw_only=True)
class LimitsConfig:
    # Token bucket per client on POST /v1/score-requests: the sustained rate
    # and the number of requests a client may send at once.
    submissions_per_second: float = 50.0
    burst: int = 100


@dataclass(frozen=True, kw_only=True)
class RetentionConfig:
    # A score is deleted this long after its valid_until.
    scores_after_expiry_s: float = 30 * 86400.0
    # A completed request loses its metadata and timeline entries this long
    # after completion; the request row stays.
    requests_after_completion_s: float = 90 * 86400.0
    sweep_interval_s: float = 60.0
    sweep_batch: int = 1000  # rows of each kind per store transaction


@dataclass(frozen=True, kw_only=True)
class LoggingConfig:
    format: str = "text"  # "text" for people, "json" for one object per line
    level: str = "INFO"  # lowest level written: DEBUG, INFO, WARNING or ERROR


@dataclass(frozen=True, kw_only=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    backend: BackendConfig
    admin: AdminConfig
    security: SecurityConfig
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    scores: ScoresConfig = field(default_factory=ScoresConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    source: str = "embedded default"  # the file this came from, for the logs

    @property
    def master_key(self) -> bytes:
        return credentials.decode_master_key(self.security.master_key)


def _url(schemes: tuple[str, ...]) -> validate.URL:
    return validate.URL(schemes=set(schemes), require_tld=False)


_POSITIVE = validate.Range(min=0, min_inclusive=False)
# Durations beyond ten years are mistakes, and far larger ones overflow the
# datetime arithmetic of a running service.
MAX_DURATION_S = 10 * 365 * 86400
_DURATION = validate.Range(min=0, max=MAX_DURATION_S)
_POSITIVE_DURATION = validate.Range(min=0, max=MAX_DURATION_S, min_inclusive=False)


class _Section(Schema):
    class Meta:
        unknown = RAISE


class _ServerSchema(_Section):
    host = fields.String()
    port = fields.Integer(strict=True, validate=validate.Range(min=0, max=65535))
    public_url = fields.String(validate=_url(("http", "https")))
    max_body_bytes = fields.Integer(strict=True, validate=validate.Range(min=1024))


class _StoreSchema(_Section):
    url = fields.String(
        validate=validate.Regexp(
            r"^(sqlite|postgresql)://",
            error="must be sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB",
        )
    )
    synchronous = fields.String(validate=validate.OneOf(["full", "normal"]))
    pool_size = fields.Integer(strict=True, validate=validate.Range(min=1, max=1000))


class _BackendSchema(_Section):
    url = fields.String(validate=_url(("http", "https")))
    token = fields.String(validate=validate.Length(min=16))
    signing_secret = fields.String()

    @validates_schema
    def _check_secret(self, data: dict[str, Any], **kwargs: Any) -> None:
        if "signing_secret" in data:
            try:
                credentials.decode_signing_secret(data["signing_secret"])
            except ValueError as exc:
                raise ValidationError(str(exc), "signing_secret") from None


class _AdminSchema(_Section):
    token = fields.String(validate=validate.Length(min=16))
    console_login_delay = fields.Float(validate=validate.Range(min=0, max=60))
    console_session_lifetime = fields.Float(validate=_POSITIVE_DURATION)


class _SecuritySchema(_Section):
    master_key = fields.String()
    rotation_overlap = fields.Float(validate=_DURATION)

    @validates_schema
    def _check_key(self, data: dict[str, Any], **kwargs: Any) -> None:
        if "master_key" in data:
            try:
                credentials.decode_master_key(data["master_key"])
            except ValueError as exc:
                raise ValidationError(str(exc), "master_key") from None


class _DeliverySchema(_Section):
    retry_schedule = fields.List(fields.Float(validate=_DURATION))
    jitter = fields.Float(validate=validate.Range(min=0, max=1))
    connect_timeout = fields.Float(validate=_POSITIVE_DURATION)
    attempt_timeout = fields.Float(validate=_POSITIVE_DURATION)
    retry_after_max = fields.Float(validate=_DURATION)
    max_in_flight = fields.Integer(strict=True, validate=validate.Range(min=1))
    max_in_flight_per_host = fields.Integer(strict=True, validate=validate.Range(min=1))
    circuit_failure_threshold = fields.Integer(strict=True, validate=validate.Range(min=1))
    circuit_cooldown = fields.Float(validate=_DURATION)
    shutdown_grace = fields.Float(validate=_DURATION)
    lease_margin = fields.Float(validate=_POSITIVE_DURATION)
    poll_interval = fields.Float(validate=_POSITIVE_DURATION)
    held_window = fields.Float(validate=_DURATION)
    held_release_per_second = fields.Float(validate=_POSITIVE)
    verify_callback_origin = fields.Boolean(truthy={True}, falsy={False})
    handshake_recheck = fields.Float(validate=_DURATION)
    allow_http = fields.Boolean(truthy={True}, falsy={False})
    allow_private_networks = fields.Boolean(truthy={True}, falsy={False})


class _ScoresSchema(_Section):
    min = fields.Integer(strict=True)
    max = fields.Integer(strict=True)
    default_validity = fields.Float(validate=_POSITIVE_DURATION)
    poll_hint = fields.Integer(strict=True, validate=validate.Range(min=1))
    idempotency_window = fields.Float(
        validate=validate.Range(min=86400, max=MAX_DURATION_S)
    )
    fetch_expected_within = fields.Float(validate=_POSITIVE_DURATION)

    @validates_schema
    def _check_range(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("min", 300) >= data.get("max", 850):
            raise ValidationError("must be greater than scores.min", "max")


class _LimitsSchema(_Section):
    submissions_per_second = fields.Float(validate=_POSITIVE)
    burst = fields.Integer(strict=True, validate=validate.Range(min=1))


class _RetentionSchema(_Section):
    scores_after_expiry = fields.Float(validate=_DURATION)
    requests_after_completion = fields.Float(validate=_DURATION)
    sweep_interval = fields.Float(validate=_POSITIVE_DURATION)
    sweep_batch = fields.Integer(
        strict=True, validate=validate.Range(min=1, max=100_000)
    )


class _LoggingSchema(_Section):
    format = fields.String(validate=validate.OneOf(["text", "json"]))
    level = fields.String(validate=validate.OneOf(LOG_LEVELS))


class _ConfigSchema(_Section):
    server = fields.Nested(_ServerSchema)
    store = fields.Nested(_StoreSchema)
    backend = fields.Nested(_BackendSchema)
    admin = fields.Nested(_AdminSchema)
    security = fields.Nested(_SecuritySchema)
    delivery = fields.Nested(_DeliverySchema)
    scores = fields.Nested(_ScoresSchema)
    logging = fields.Nested(_LoggingSchema)
    limits = fields.Nested(_LimitsSchema)
    retention = fields.Nested(_RetentionSchema)


# TOML keys whose dataclass field adds the unit to the name.
_FIELD_NAMES = {
    key: f"{key}_s"
    for key in (
        "retry_schedule",
        "connect_timeout",
        "attempt_timeout",
        "retry_after_max",
        "circuit_cooldown",
        "shutdown_grace",
        "lease_margin",
        "poll_interval",
        "default_validity",
        "poll_hint",
        "idempotency_window",
        "rotation_overlap",
        "console_login_delay",
        "console_session_lifetime",
        "held_window",
        "handshake_recheck",
        "fetch_expected_within",
        "scores_after_expiry",
        "requests_after_completion",
        "sweep_interval",
    )
}


def _flatten(messages: Any, prefix: str = "") -> list[str]:
    if isinstance(messages, Mapping):
        lines = []
        for key, value in messages.items():
            lines.extend(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return lines
    if isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        text = " ".join(m.replace("Unknown field.", "unknown key.") for m in messages)
        return [f"{prefix}: {text}"]
    if isinstance(messages, list):
        return [line for m in messages for line in _flatten(m, prefix)]
    return [f"{prefix}: {messages}"]


def _dataclass_fields(section: dict[str, Any]) -> dict[str, Any]:
    return {
        _FIELD_NAMES.get(key, key): tuple(value) if isinstance(value, list) else value
        for key, value in section.items()
    }


def _apply_environment(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    for (section, key), variable in ENVIRONMENT_SECRETS.items():
        if environ.get(variable):
            raw.setdefault(section, {})
            if isinstance(raw[section], dict):
                raw[section][key] = environ[variable]


def _build(raw: dict[str, Any], source: str) -> Config:
    try:
        data = _ConfigSchema().load(raw)
    except ValidationError as exc:
        raise ConfigError("\n".join(_flatten(exc.messages))) from None

    missing = [
        f"{section}.{key}: missing; set it in [{section}] or in ${variable}"
        for (section, key), variable in ENVIRONMENT_SECRETS.items()
        if key not in data.get(section, {})
    ]
    if missing:
        raise ConfigError("\n".join(missing))

    return Config(
        server=ServerConfig(**_dataclass_fields(data.get("server", {}))),
        store=StoreConfig(**_dataclass_fields(data.get("store", {}))),
        backend=BackendConfig(**_dataclass_fields(data["backend"])),
        admin=AdminConfig(**_dataclass_fields(data["admin"])),
        security=SecurityConfig(**_dataclass_fields(data["security"])),
        delivery=DeliveryConfig(**_dataclass_fields(data.get("delivery", {}))),
        scores=ScoresConfig(**_dataclass_fields(data.get("scores", {}))),
        limits=LimitsConfig(**_dataclass_fields(data.get("limits", {}))),
        logging=LoggingConfig(**_dataclass_fields(data.get("logging", {}))),
        retention=RetentionConfig(**_dataclass_fields(data.get("retention", {}))),
        source=source,
    )


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] = os.environ) -> Config:
    """Load and validate a TOML file; raise ConfigError naming each bad key."""
    try:
        with open(path, "rb") as file:
            raw = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid TOML: the file is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the file: {exc.strerror}") from None
    _apply_environment(raw, environ)
    return _build(raw, source=str(path))


def _load_or_create_embedded_secrets(path: Path, write: bool = True) -> dict[str, Any]:
    if path.exists():
        with open(path, "rb") as file:
            return tomllib.load(file)

    secrets = {
        "backend": {
            "token": credentials.new_token(),
            "signing_secret": credentials.new_signing_secret(),
        },
        "admin": {"token": credentials.new_token()},
        "security": {"master_key": credentials.new_master_key()},
    }
    if not write:
        return secrets
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# Generated once by `webhooks serve`; keep this file private."]
    for section, values in secrets.items():
        lines.append(f"[{section}]")
        lines.extend(f'{key} = "{value}"' for key, value in values.items())
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write("\n".join(lines) + "\n")
    log.info("generated tokens and keys in %s (mode 0600)", path, extra={"event": "secrets_generated"})
    return secrets


def embedded_config(
    data_dir: Path = EMBEDDED_DATA_DIR,
    environ: Mapping[str, str] = os.environ,
    *,
    write_secrets: bool = True,
) -> Config:
    """Return the no-file default: SQLite under ``data_dir``, loopback, plain http.

    Tokens and keys not given in the environment are generated once and kept
    in ``data_dir/secrets.toml``, readable only by its owner. With
    ``write_secrets`` false, missing ones are generated but not kept.
    """
    raw = _load_or_create_embedded_secrets(data_dir / "secrets.toml", write_secrets)
    raw["store"] = {"url": f"sqlite:///{data_dir / 'webhooks.sqlite3'}"}
    raw["delivery"] = {"allow_http": True, "allow_private_networks": True}
    _apply_environment(raw, environ)
    return _build(raw, source=f"embedded default ({data_dir}/)")


def toml_sections(config: Config) -> dict[str, dict[str, Any]]:
    """Return the settings by TOML section and key, as a file would spell them."""
    toml_keys = {field_name: key for key, field_name in _FIELD_NAMES.items()}
    sections: dict[str, dict[str, Any]] = {}
    for section in dataclasses.fields(config):
        value = getattr(config, section.name)
        if not dataclasses.is_dataclass(value):
            continue
        sections[section.name] = {
            toml_keys.get(item.name, item.name): getattr(value, item.name)
            for item in dataclasses.fields(value)
        }
    return sections
