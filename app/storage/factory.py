"""The only place that picks storage implementations, each by the scheme of its URL."""

from __future__ import annotations

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from app.config import Settings
from app.errors import ConfigError
from app.storage.base import Hub, MetadataRepo, SegmentStore
from app.storage.memory_hub import MemoryHub
from app.storage.metadata import SqlMetadataRepo
from app.storage.nats_hub import NatsHub
from app.storage.segments import LocalSegmentStore
from app.storage.space import DiskSpace

DATABASE_DRIVERS = ("sqlite+aiosqlite", "postgresql+asyncpg")


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
    # s3:// (SPEC §12.1) goes here: a TieredSegmentStore once it exists.
    if settings.store_url != "file:":
        raise ConfigError(
            f"config key 'store_url': unsupported value (scheme {scheme!r}); "
            "only file: (segment files under data_dir) is available"
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
    # The JetStream tail of live streams (SPEC §12.2) will come with this scheme too.
    return "nats" if nats_servers(settings) else "memory"


def check_urls(settings: Settings) -> None:
    """Raise ConfigError naming the key of any backend URL this build cannot serve."""
    database_driver(settings)
    store_scheme(settings)
    tail_scheme(settings)


def build_repo(settings: Settings) -> SqlMetadataRepo:
    database_driver(settings)
    return SqlMetadataRepo(settings.resolved_database_url, namespace=settings.namespace)


def build_backends(settings: Settings) -> tuple[SegmentStore, MetadataRepo, Hub]:
    check_urls(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = LocalSegmentStore(settings.data_dir / "segments", segment_bytes=settings.segment_bytes)
    return store, build_repo(settings), build_hub(settings)


def build_hub(settings: Settings) -> Hub:
    servers = nats_servers(settings)
    if not servers:
        return MemoryHub()
    return NatsHub(servers, settings.namespace, settings.resolved_node_id)


def build_space(settings: Settings) -> DiskSpace:
    """The free-space guard of the disk under data_dir (segments and SQLite)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return DiskSpace(settings.data_dir, min_free_bytes=settings.limits.min_free_bytes)
