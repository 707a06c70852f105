"""The only place that picks storage implementations, each by the scheme of its URL."""

from __future__ import annotations

import re

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from app.config import Settings
from app.errors import ConfigError
from app.hooks import routes as hook_routes
from app.storage.base import HookOutbox, Hub, LeaseStore, MetadataRepo, SegmentStore
from app.storage.memory_hub import MemoryHub
from app.storage.memory_leases import MemoryLeases
from app.storage.metadata import SqlMetadataRepo
from app.storage.node_claim import NodeClaim
from app.storage.segments import LocalSegmentStore
from app.storage.space import DiskSpace
from app.storage.sql_leases import SqlLeases
from app.storage.sql_outbox import SqlHookOutbox

DATABASE_DRIVERS = ("sqlite+aiosqlite", "postgresql+asyncpg")
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
MIN_SEGMENT_BYTES_S3 = 5 * 1024 * 1024  # S3's smallest multipart part


def database_driver(settings: Settings) -> str:
    """The SQLAlchemy driver of database_url; the URL itself (it may hold a
    password) is never part of the message."""
    try:
        driver = make_url(settings.resolved_database_url).drivername
    except ArgumentError:
        raise ConfigError("config key 'database_url': not a database URL") from None
    if driver not in DATABASE_DRIVERS:
        raise ConfigError(
            f"config key 'database_url': unsupported scheme {driver!r}; "
            f"use {' or '.join(d + '://' for d in DATABASE_DRIVERS)}"
        )
    return driver


def store_scheme(settings: Settings) -> str:
    scheme = settings.store_url.partition(":")[0].lower()
    if scheme == "s3":
        s3_location(settings)
        if settings.segment_bytes < MIN_SEGMENT_BYTES_S3:
            raise ConfigError(
                f"config key 'segment_bytes': must be at least {MIN_SEGMENT_BYTES_S3} "
                "with store_url s3:// (S3's smallest multipart part)"
            )
    elif settings.store_url != "file:":
        raise ConfigError(
            f"config key 'store_url': unsupported value (scheme {scheme!r}); "
            "use file: (segment files under data_dir) or s3://BUCKET/PREFIX"
        )
    return scheme


def nats_servers(settings: Settings) -> list[str]:
    """The servers of a ``nats://`` tail_url (several comma-separated); [] without one."""
    if settings.tail_url is None:
        return []
    servers = [part.strip() for part in settings.tail_url.split(",")]
    for server in servers:
        scheme = server.partition(":")[0].lower()
        if scheme != "nats" or not server[len("nats:") :].startswith("//") or server == "nats://":
            raise ConfigError(
                f"config key 'tail_url': unsupported value (scheme {scheme!r}); use "
                "nats://HOST:PORT (several comma-separated), or leave it empty for the "
                "in-process hub"
            )
    return servers


def tail_scheme(settings: Settings) -> str:
    # nats: the hub, and with store_url s3:// the JetStream tail of live streams too.
    return "nats" if nats_servers(settings) else "memory"


def check_urls(settings: Settings) -> None:
    """Raise ConfigError naming the key of any backend URL this build cannot serve."""
    database_driver(settings)
    store_scheme(settings)
    tail_scheme(settings)


def build_repo(settings: Settings) -> SqlMetadataRepo:
    database_driver(settings)
    return SqlMetadataRepo(
        settings.resolved_database_url,
        namespace=settings.namespace,
        hook_routes=hook_routes(settings.hooks),
    )


def build_outbox(repo: MetadataRepo) -> HookOutbox | None:
    """The webhook outbox, in the metadata database (None on a repository without one)."""
    return SqlHookOutbox(repo) if isinstance(repo, SqlMetadataRepo) else None


def build_backends(
    settings: Settings, *, read_only: bool = False
) -> tuple[SegmentStore, MetadataRepo, Hub]:
    """read_only: for tools beside a running server (weft verify), whose store
    must leave uploads and the read cache to the server."""
    check_urls(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return build_store(settings, read_only=read_only), build_repo(settings), build_hub(settings)


def build_hub(settings: Settings) -> Hub:
    servers = nats_servers(settings)
    if not servers:
        return MemoryHub()
    # Imported here: nats-py (with the aiohttp it imports) adds about 0.4 s
    # to every start, and only a cluster needs it.
    from app.storage.nats_hub import NatsHub

    return NatsHub(servers, settings.namespace, settings.resolved_node_id)


def build_leases(settings: Settings, repo: MetadataRepo) -> LeaseStore:
    """Producer leases: in the database (on repo's engine) on PostgreSQL, where
    nodes share one; in process on SQLite, a file only one node uses, where the
    database would add a write to every acquire and renewal for nothing."""
    if database_driver(settings) == "postgresql+asyncpg" and isinstance(repo, SqlMetadataRepo):
        return SqlLeases(repo)
    return MemoryLeases()


def build_node_claim(settings: Settings, repo: MetadataRepo) -> NodeClaim | None:
    """The claim on this node_id that keeps a second process from using it, on
    PostgreSQL, where nodes share the database (see app/storage/node_claim.py)."""
    if database_driver(settings) == "postgresql+asyncpg" and isinstance(repo, SqlMetadataRepo):
        return NodeClaim(repo.engine, settings.namespace, settings.resolved_node_id)
    return None


def build_space(settings: Settings) -> DiskSpace:
    """The free-space guard of the disk under data_dir (segments and SQLite)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return DiskSpace(settings.data_dir, min_free_bytes=settings.limits.min_free_bytes)


def s3_location(settings: Settings) -> tuple[str, str]:
    """(bucket, key prefix) of an s3:// store_url; this deployment's keys go
    under PREFIX/NAMESPACE/ so that deployments can share a bucket."""
    rest = settings.store_url[len("s3://") :] if settings.store_url.startswith("s3://") else ""
    bucket, _, prefix = rest.partition("/")
    if not BUCKET_NAME.match(bucket):
        raise ConfigError("config key 'store_url': not s3://BUCKET/PREFIX with a valid bucket name")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/{settings.namespace}" if prefix else settings.namespace


def build_store(settings: Settings, *, read_only: bool = False) -> SegmentStore:
    local = LocalSegmentStore(
        settings.data_dir / "segments",
        segment_bytes=settings.segment_bytes,
        compression=settings.compression,
        # On S3 the tier compresses each segment itself, before its upload.
        compress_sealed=store_scheme(settings) != "s3",
        read_only=read_only,
    )
    if store_scheme(settings) != "s3":
        return local
    # Imported here: botocore takes about half a second to import, which only
    # deployments on S3 should pay.
    from app.storage.jetstream_tail import JetStreamTail
    from app.storage.s3_objects import S3ObjectStore, S3Settings
    from app.storage.tiered import TieredSegmentStore

    bucket, prefix = s3_location(settings)
    s3 = settings.s3
    servers = nats_servers(settings)
    # With NATS, the unsealed tails live in JetStream (SPEC §12.2), else on this disk.
    tail = None
    if servers:
        tail = JetStreamTail(
            servers,
            settings.namespace,
            node_id=settings.resolved_node_id,
            shards=settings.nats.tail_shards,
            replicas=settings.nats.replicas,
        )
    objects = S3ObjectStore(
        bucket,
        S3Settings(
            endpoint_url=s3.endpoint_url,
            region=s3.region,
            access_key_id=s3.access_key_id,
            secret_access_key=s3.secret_access_key,
            part_bytes=s3.part_bytes,
            max_concurrency=s3.max_concurrency,
            retries=s3.retries,
            timeout_seconds=s3.timeout,
            backoff_max_seconds=s3.max_backoff,
            backoff_base_seconds=min(0.1, s3.max_backoff),
        ),
        prefix,
    )
    return TieredSegmentStore(
        local,
        objects,
        local_root=settings.data_dir / "segments",
        state_root=settings.data_dir / "s3",
        segment_bytes=settings.segment_bytes,
        cache_bytes=settings.cache_bytes,
        max_pending_bytes=s3.max_pending_bytes,
        read_only=read_only,
        tail=tail,
    )
