"""Schema migrations at the process level (SPEC §12): a database made before
migrations is adopted and served; ``python -m app migrate`` migrates without
serving."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml

import app.storage.migrations
from app.storage.metadata import Base
from tests.e2e.test_config import clean_env
from tests.pg import PG_URL, new_namespace, require_pg, run_query
from tests.server import ServerProcess

# The newest migration: the revision a database is left at.
HEAD = max(
    p.name[:4] for p in (Path(app.storage.migrations.__file__).parent / "versions").glob("0*.py")
)


def query_text(query: str) -> str:
    return "\n".join(str(value) for row in run_query(query) for value in row)


def as_made_before_migrations(db_path: Path) -> None:
    """Turn a database into what the code before migrations left: no
    alembic_version and (oldest) no streams.tus column."""
    with sqlite3.connect(db_path) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            if table != "streams":  # alembic_version, and the tables of later migrations
                db.execute(f"DROP TABLE {table}")
        db.execute("ALTER TABLE streams DROP COLUMN tus")
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")] == [
            "streams"
        ]


@pytest.mark.sqlite_only
def test_a_database_from_before_migrations_is_upgraded_and_its_streams_still_served(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert (
            http.post(
                "/stream/old-one", content=b"kept bytes\n", headers={"X-Stream-Metadata": '{"a":1}'}
            ).status_code
            == 201
        )
        before = http.get("/streams/old-one").json()
    server.stop()
    db_path = Path(server.config["data_dir"]) / "weft.db"
    as_made_before_migrations(db_path)

    server.start()
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.get("/stream/old-one").content == b"kept bytes\n"
        assert http.get("/streams/old-one").json() == before
        assert [
            s["id"] for s in http.get("/streams", params={"meta.a": "1"}).json()["streams"]
        ] == ["old-one"]
        assert http.post("/stream/new-one", content=b"new").status_code == 201
    assert any("adopted a database made before migrations" in line for line in server.log)
    with sqlite3.connect(db_path) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(HEAD,)]
        columns = [row[1] for row in db.execute("PRAGMA table_info(streams)")]
    assert "tus" in columns


def run_migrate(workdir: Path, config: dict[str, object]) -> subprocess.CompletedProcess[str]:
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [sys.executable, "-m", "app", "migrate", "--config", str(path)],
        cwd=workdir,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.sqlite_only
def test_migrate_command_creates_the_schema_without_serving(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    result = run_migrate(tmp_path, {"data_dir": str(data_dir)})
    assert result.returncode == 0, result.stderr
    assert f"migrating the database schema from empty to {HEAD}" in result.stderr
    assert "Uvicorn running" not in result.stdout + result.stderr
    with sqlite3.connect(data_dir / "weft.db") as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(HEAD,)]
    again = run_migrate(tmp_path, {"data_dir": str(data_dir)})
    assert again.returncode == 0 and "migrating" not in again.stderr


def test_migrate_command_refuses_an_unsupported_database_url(tmp_path: Path) -> None:
    result = run_migrate(tmp_path, {"database_url": "oracle://u:pw@h/db"})
    assert result.returncode == 2
    assert "'database_url'" in result.stderr and "pw" not in result.stderr


def test_migrate_command_on_postgresql_creates_the_namespace_schema(tmp_path: Path) -> None:
    require_pg()
    namespace = new_namespace()
    result = run_migrate(tmp_path, {"database_url": PG_URL, "namespace": namespace})
    assert result.returncode == 0, result.stderr
    assert f"migrating the database schema from empty to {HEAD}" in result.stderr
    tables = query_text(f"SELECT tablename FROM pg_tables WHERE schemaname = '{namespace}'")
    assert sorted(tables.split()) == sorted(["alembic_version", *Base.metadata.tables])
    assert query_text(f'SELECT version_num FROM "{namespace}".alembic_version') == HEAD


def test_migrate_command_on_an_unreachable_database_fails_without_the_password(
    tmp_path: Path,
) -> None:
    url = "postgresql+asyncpg://weft:sekrit@127.0.0.1:9/weft"
    result = run_migrate(tmp_path, {"database_url": url})
    assert result.returncode == 1
    assert "migration failed" in result.stderr
    assert "sekrit" not in result.stderr and "Traceback" not in result.stderr
