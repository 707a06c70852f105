"""``python -m app`` and its configuration, as a subprocess (SPEC §8)."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml

from tests.server import ServerProcess, raw_request

RUNNING = re.compile(r"Uvicorn running on http://([^:\s]+):(\d+)")
REPO = Path(__file__).resolve().parents[2]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEFT_")}
    env.update(extra)
    return env


def run_app(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m app`` expecting it to stop by itself (a refused configuration)."""
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=tmp_path,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=30,
    )


def write_config(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"colour": "red"}, "colour"),
        ({"limits": {"stream_bytes": "big"}}, "limits.stream_bytes"),
    ],
)
def test_bad_config_file_stops_the_server_naming_the_key(
    tmp_path: Path, data: object, key: str
) -> None:
    config = write_config(tmp_path, {"data_dir": str(tmp_path / "data"), **data})  # type: ignore[dict-item]
    result = run_app(tmp_path, "--config", str(config), "--port", "0")
    assert result.returncode != 0
    assert key in result.stderr
    assert "Traceback" not in result.stderr
    assert "Uvicorn running" not in result.stderr + result.stdout


def test_bad_environment_variable_stops_the_server_naming_the_key(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"data_dir": str(tmp_path / "data")})
    result = run_app(
        tmp_path, "--config", str(config), "--port", "0", WEFT_LIMITS__STREAM_BYTES="lots"
    )
    assert result.returncode != 0
    assert "limits.stream_bytes" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreachable_database_stops_the_start_with_one_line_naming_database_url(
    tmp_path: Path,
) -> None:
    # Port 1: nothing listens, the connection is refused at once.
    url = "postgresql+asyncpg://weft:hunter2@127.0.0.1:1/x"
    config = write_config(tmp_path, {"data_dir": str(tmp_path / "data"), "database_url": url})
    result = run_app(tmp_path, "--config", str(config), "--port", "0")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("weft: cannot start: the database (database_url ")
    assert "127.0.0.1:1" in lines[0] and "cannot be reached" in lines[0]
    assert "hunter2" not in result.stderr + result.stdout
    assert "Uvicorn running" not in result.stderr + result.stdout


class Launched:
    """``python -m app ARGS`` running until stop(); reports where it listens."""

    def __init__(self, cwd: Path, args: list[str], env: dict[str, str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put("")  # exited

    def listening(self, timeout: float = 20) -> tuple[str, int]:
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if not line:
                break
            seen.append(line)
            match = RUNNING.search(line)
            if match:
                return match.group(1), int(match.group(2))
        raise AssertionError("server did not start:\n" + "".join(seen))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def test_host_and_port_options_override_the_config_file(tmp_path: Path) -> None:
    # 192.0.2.1 (TEST-NET-1) and port 1 cannot be bound: the server can only start
    # if both options win over the file.
    config = write_config(
        tmp_path, {"host": "192.0.2.1", "port": 1, "data_dir": str(tmp_path / "data")}
    )
    server = Launched(
        tmp_path, ["--config", str(config), "--host", "127.0.0.1", "--port", "0"], clean_env()
    )
    try:
        host, port = server.listening()
        assert host == "127.0.0.1"
        assert port not in (0, 1)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
    finally:
        server.stop()


def test_environment_variable_overrides_a_nested_config_value(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, {"limits": {"stream_bytes": 1000}})
    try:
        server.start(env={"WEFT_LIMITS__STREAM_BYTES": "10"})
        with httpx.Client(base_url=server.url, timeout=10) as http:
            assert http.post("/stream/small", content=b"x" * 10).status_code == 201
            refused = http.post("/stream/large", content=b"x" * 11)
    finally:
        server.stop()
    assert refused.status_code == 413


@pytest.mark.sqlite_only
def test_data_dir_from_config_holds_the_database_and_segments(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.post("/stream/on-disk", content=b"bytes").status_code == 201
    data_dir = Path(server.config["data_dir"])
    assert (data_dir / "weft.db").exists()
    assert any(path.is_file() for path in data_dir.rglob("*") if path.name != "weft.db")


def test_repository_config_yaml_is_what_the_server_runs_on_by_default() -> None:
    from app.config import Settings, load_settings

    assert load_settings(REPO / "config.yaml", environ={}) == Settings()


def test_header_bytes_limit_refuses_a_larger_request_head(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(limits={"header_bytes": 16 * 1024})
    head = (
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: "
        + b"p" * 100_000
        + b"\r\nConnection: close\r\n\r\n"
    )
    try:
        answer = raw_request(server.port, head)
    except ConnectionError:
        return  # dropped: refused
    status = int(answer.split(b" ", 2)[1]) if answer else 0
    assert status in (0, 400, 431), answer[:200]
