"""Backends by URL at the process level (SPEC §12)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.test_config import run_app, write_config


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("database_url", "mysql+aiomysql://weft:hunter2@127.0.0.1/weft"),
        ("store_url", "gs://bucket/prefix"),
        ("namespace", "Not-A-Schema"),
    ],
)
def test_unsupported_backend_url_stops_the_server_naming_the_key(
    tmp_path: Path, key: str, value: str
) -> None:
    config = write_config(tmp_path, {"data_dir": str(tmp_path / "data"), key: value})
    result = run_app(tmp_path, "--config", str(config), "--port", "0")
    assert result.returncode == 2
    assert f"'{key}'" in result.stderr
    assert "hunter2" not in result.stderr
    assert "Traceback" not in result.stderr
    assert "Uvicorn running" not in result.stderr + result.stdout
