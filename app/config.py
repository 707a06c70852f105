"""One typed settings object, loaded from YAML and ``WEFT_*`` variables (SPEC §8)."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from app.errors import ConfigError

Scope = Literal["read", "write", "admin"]
ALL_SCOPES: tuple[Scope, ...] = ("read", "write", "admin")
# A PostgreSQL schema name (and later a JetStream and S3 prefix): lower case, unquoted.
NAMESPACE_PATTERN = r"^[a-z_][a-z0-9_]{0,47}$"

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config.yaml"
ENV_PREFIX = "WEFT_"
# Variables with the prefix that belong to the client, not the server.
CLIENT_ENV = {"WEFT_TOKEN", "WEFT_URL"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Durability(_Strict):
    fsync: Literal["always", "interval", "never"] = "interval"
    interval: float = Field(1.0, gt=0)


class Limits(_Strict):
    metadata_bytes: int = Field(16 * 1024, gt=0)
    stream_bytes: int | None = Field(None, gt=0)
    header_bytes: int = Field(64 * 1024, ge=16 * 1024)
    min_free_bytes: int = Field(64 * 1024 * 1024, ge=0)  # 0: no free-space check
    # Quota on the sum of every stream's size (app/streams/quota.py); None: no quota.
    total_bytes: int | None = Field(None, gt=0)


class Http(_Strict):
    # Seconds a connection may take to send a complete request head.
    header_timeout: float = Field(30, gt=0)
    # Seconds a response may wait on a client that takes none of its bytes.
    send_timeout: float = Field(300, gt=0)


class Retention(_Strict):
    complete_after: float | None = Field(None, gt=0)


MiB = 1024 * 1024


class S3(_Strict):
    """SPEC §12.1. Unset endpoint, region and credentials fall back to the
    standard AWS_* variables."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = Field(None, repr=False)
    part_bytes: int = Field(8 * MiB, ge=5 * MiB, le=5 * 1024 * MiB)
    max_concurrency: int = Field(4, ge=1)
    retries: int = Field(8, ge=0)
    # Bytes of full segments waiting for their upload before producers get 503.
    max_pending_bytes: int = Field(1024 * MiB, gt=0)
    # Seconds one request may take to connect, and to answer.
    timeout: float = Field(30, gt=0)
    # Longest pause between two attempts (exponential backoff with jitter up to it).
    max_backoff: float = Field(10, gt=0)


class Nats(_Strict):
    """SPEC §12.2: the JetStream tail of live streams (tail_url nats://)."""

    # Copies JetStream keeps of every tail (3 on a three-server cluster survives one's loss).
    replicas: int = Field(1, ge=1, le=5)
    # JetStream streams the tails are spread over (by a hash of the storage key);
    # the same on every node, and not changed while tails are live.
    tail_shards: int = Field(4, ge=1, le=64)


HookEvent = Literal["pre-create", "post-create", "post-complete", "post-abandon", "post-delete"]


class Hook(_Strict):
    """A webhook receiver (README "Webhooks"). The secret signs every call and
    is never logged or shown (repr=False)."""

    url: str
    events: tuple[HookEvent, ...] = Field(min_length=1)
    secret: str = Field(min_length=1, repr=False)
    # Seconds one call may take (connect and answer).
    timeout: float = Field(5, gt=0, le=300)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        scheme, _, rest = url.partition("://")
        host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
        if scheme.lower() not in ("http", "https") or not host or any(c.isspace() for c in url):
            raise ValueError("must be an http:// or https:// URL with a host")
        return url


class HookDelivery(_Strict):
    """Retries of post-* deliveries: exponential backoff from min_backoff, with
    jitter, up to max_backoff; a delivery still failing give_up_after seconds
    after its event is dropped (logged)."""

    min_backoff: float = Field(1.0, gt=0)
    max_backoff: float = Field(300, gt=0)
    # Seconds between looks at the outbox for deliveries other nodes wrote.
    poll_interval: float = Field(1.0, gt=0)
    give_up_after: float = Field(3 * 86400, gt=0)


class TokenSpec(_Strict):
    token: str = Field(min_length=1)
    scopes: tuple[Scope, ...] = ALL_SCOPES


class Settings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(3060, ge=0, le=65535)
    data_dir: Path = Path("./data")
    database_url: str | None = None
    store_url: str = "file:"
    tail_url: str | None = None
    namespace: str = Field("weft", pattern=NAMESPACE_PATTERN)
    node_id: str | None = Field(None, min_length=1)
    tokens: tuple[str | TokenSpec, ...] = ()
    signing_key: str | None = None
    tail_timeout: float = Field(0, ge=0)
    abandon_after: float = Field(600, gt=0)
    # Seconds a producer lease lasts unless renewed (every lease_ttl/3): how long
    # a dead node's live streams wait before another node may take them over.
    lease_ttl: float = Field(10, gt=0)
    # Seconds without a byte after which a producer's request is ended when
    # another request resumes its stream, on any node (a half-open connection);
    # a producer that sent a byte more recently keeps the stream (409).
    handoff_idle: float = Field(2.0, ge=0)
    segment_bytes: int = Field(64 * 1024 * 1024, ge=4096)
    checkpoint_interval: float = Field(1.0, gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    durability: Durability = Durability()
    limits: Limits = Limits()
    http: Http = Http()
    retention: Retention = Retention()
    s3: S3 = S3()
    nats: Nats = Nats()
    # Local read cache of segments already in the bucket (store_url s3://).
    cache_bytes: int = Field(1024 * MiB, ge=0)
    # Sealed segments and finished streams stored as zstd frames (issue 12); reads
    # take either form, so data written with one setting stays readable with the other.
    compression: Literal["none", "zstd"] = "none"
    hooks: tuple[Hook, ...] = ()
    hook_delivery: HookDelivery = HookDelivery()

    @field_validator("hooks")
    @classmethod
    def _distinct_hook_urls(cls, hooks: tuple[Hook, ...]) -> tuple[Hook, ...]:
        # A delivery waiting in the outbox names its hook by its URL.
        urls = [hook.url for hook in hooks]
        if len(urls) != len(set(urls)):
            raise ValueError("two hooks have the same url")
        return hooks

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'weft.db'}"

    @property
    def resolved_node_id(self) -> str:
        return self.node_id or f"{socket.gethostname()}:{self.port}"

    def token_specs(self) -> list[TokenSpec]:
        return [t if isinstance(t, TokenSpec) else TokenSpec(token=t) for t in self.tokens]


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """``WEFT_LIMITS__STREAM_BYTES=5`` becomes ``{"limits": {"stream_bytes": 5}}``."""
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in CLIENT_ENV:
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{name}: conflicts with another WEFT_ variable")
        # YAML parsing gives numbers, booleans and lists their types; plain text stays text.
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node[path[-1]] = value
    return tree


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"])
        lines.append(f"config key '{key}': {item['msg']}")
    return "; ".join(lines)


def load_settings(
    path: Path | str | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Read ``path`` (default: the repository's config.yaml), overlay ``WEFT_*``
    variables and keyword overrides, and validate. Raises ConfigError naming the key."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    file = Path(path) if path is not None else DEFAULT_CONFIG
    if path is not None or file.exists():
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {file} does not exist") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {file} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {file} must hold a mapping of keys")
        data = loaded or {}
    data = _merge(data, _env_overrides(environ))
    data = _merge(data, {k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
