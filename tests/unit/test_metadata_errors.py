"""SqlMetadataRepo turns its database's errors into 507 (full) or 503 (did not
answer or commit), never a 500 (SPEC §7)."""

from __future__ import annotations

import errno
import sqlite3

import pytest
from sqlalchemy.exc import OperationalError

from app.errors import InsufficientStorage, StorageUnavailable, WeftError
from app.storage.metadata import translated


class FakePgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__("pg")
        self.sqlstate = sqlstate


def sqlite_error(message: str, code: int | None = None) -> OperationalError:
    orig = sqlite3.OperationalError(message)
    if code is not None:
        orig.sqlite_errorcode = code  # type: ignore[attr-defined]
    return OperationalError("DELETE FROM streams", {}, orig)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (sqlite_error("database or disk is full", 13), InsufficientStorage),
        (sqlite_error("database or disk is full"), InsufficientStorage),
        (sqlite_error("disk I/O error", 10), StorageUnavailable),
        (sqlite_error("database is locked", 5), StorageUnavailable),
        (OperationalError("UPDATE", {}, FakePgError("53100")), InsufficientStorage),
        (OperationalError("UPDATE", {}, FakePgError("08006")), StorageUnavailable),
        (
            OSError(errno.ENOSPC, "No space left on device", "/srv/weft/weft.db"),
            InsufficientStorage,
        ),
        (OSError(errno.EACCES, "Permission denied", "/srv/weft/weft.db"), StorageUnavailable),
    ],
)
async def test_database_errors_become_507_or_503_without_details(
    error: Exception, expected: type[WeftError]
) -> None:
    @translated
    async def write() -> None:
        raise error

    with pytest.raises(expected) as caught:
        await write()
    assert "/srv" not in caught.value.message and "DELETE" not in caught.value.message


async def test_weft_errors_pass_through_unchanged() -> None:
    @translated
    async def insert() -> None:
        raise InsufficientStorage("kept")

    with pytest.raises(InsufficientStorage, match="kept"):
        await insert()
