"""DiskSpace: the limits.min_free_bytes check stays off the per-chunk syscall
path, and the reserve file is freed and re-created as the disk fills and empties."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from app.errors import InsufficientStorage, StorageUnavailable
from app.storage import space as space_module
from app.storage.space import RESERVE_NAME, DiskSpace, disk_errors

MiB = 1024 * 1024


class FakeStatvfs:
    """os.statvfs with a free space set by the test, counting its calls."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.calls = 0

    def __call__(self, _path: Any) -> Any:
        self.calls += 1
        return os.statvfs_result((4096, 4096, 1 << 30, 0, self.free // 4096, 0, 0, 0, 0, 255))


@pytest.fixture
def statvfs(monkeypatch: pytest.MonkeyPatch) -> FakeStatvfs:
    fake = FakeStatvfs(free=100 * MiB)
    monkeypatch.setattr(space_module.os, "statvfs", fake)
    return fake


def test_require_measures_at_most_every_100_ms_or_few_mib(
    tmp_path: Path, statvfs: FakeStatvfs
) -> None:
    now = [0.0]
    disk = DiskSpace(tmp_path, min_free_bytes=64 * MiB, clock=lambda: now[0])
    for _ in range(1000):
        disk.require()
        disk.consumed(1024)  # 1000 KiB in all: under the 16 MiB re-read threshold
    assert statvfs.calls == 1
    now[0] += 0.1
    disk.require()
    assert statvfs.calls == 2
    disk.consumed(16 * MiB)
    statvfs.free = 10 * MiB
    with pytest.raises(InsufficientStorage):
        disk.require()
    assert statvfs.calls == 3


def test_min_free_bytes_zero_never_measures(tmp_path: Path, statvfs: FakeStatvfs) -> None:
    statvfs.free = 0
    disk = DiskSpace(tmp_path, min_free_bytes=0)
    disk.require()
    assert statvfs.calls == 0


def test_reserve_is_created_freed_once_and_re_created(tmp_path: Path) -> None:
    disk = DiskSpace(tmp_path, min_free_bytes=0, reserve_bytes=MiB)
    reserve = tmp_path / RESERVE_NAME
    assert not reserve.exists()
    disk.refresh()
    assert reserve.stat().st_blocks * 512 >= MiB  # allocated, not sparse
    assert disk.release_reserve() is True
    assert not reserve.exists()
    assert disk.release_reserve() is False
    disk.refresh()
    assert reserve.exists()
    # A new process finds the reserve already there.
    assert DiskSpace(tmp_path, min_free_bytes=0, reserve_bytes=MiB).release_reserve() is True


def test_reserve_is_not_re_created_while_the_disk_is_nearly_full(
    tmp_path: Path, statvfs: FakeStatvfs
) -> None:
    statvfs.free = 3 * MiB
    disk = DiskSpace(tmp_path, min_free_bytes=0, reserve_bytes=2 * MiB)
    disk.refresh()
    assert not (tmp_path / RESERVE_NAME).exists()
    statvfs.free = 4 * MiB
    disk.refresh()
    assert (tmp_path / RESERVE_NAME).exists()


def test_disk_errors_hide_the_path_and_map_no_space_to_507() -> None:
    with pytest.raises(InsufficientStorage) as full:
        with disk_errors():
            raise OSError(errno.ENOSPC, "No space left on device", "/srv/weft/segments/k/0")
    with pytest.raises(StorageUnavailable) as broken:
        with disk_errors():
            raise OSError(errno.EIO, "Input/output error", "/srv/weft/segments/k/0")
    assert "/srv" not in full.value.message and "/srv" not in broken.value.message
    assert (full.value.status, broken.value.status) == (507, 503)
