"""build_backends: the only place that picks storage implementations."""

from __future__ import annotations

from app.config import Settings
from app.storage.base import Hub, MetadataRepo, SegmentStore
from app.storage.memory_hub import MemoryHub
from app.storage.metadata import SqlMetadataRepo
from app.storage.segments import LocalSegmentStore
from app.storage.space import DiskSpace


def build_backends(settings: Settings) -> tuple[SegmentStore, MetadataRepo, Hub]:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = LocalSegmentStore(settings.data_dir / "segments", segment_bytes=settings.segment_bytes)
    repo = SqlMetadataRepo(settings.resolved_database_url)
    return store, repo, MemoryHub()


def build_space(settings: Settings) -> DiskSpace:
    """The free-space guard of the disk under data_dir (segments and SQLite)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return DiskSpace(settings.data_dir, min_free_bytes=settings.limits.min_free_bytes)
