from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import botocore.session
import pytest

from tests.s3.faultproxy import FaultProxy, ProxyThread
from tests.s3server import S3Server
from tests.server import ServerProcess

MiB = 1024 * 1024
SEG = 5 * MiB
PREFIX = "pre/e2e/"  # the keys of s3_weft's servers: s3://BUCKET/pre with namespace e2e


@pytest.fixture(autouse=True)
def isolated_aws_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """No AWS_* of the developer's, no ~/.aws files, and never the instance
    metadata service: tests give every credential explicitly."""
    import os

    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    empty = tmp_path_factory.mktemp("aws") / "none"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def proxy(s3_server: S3Server) -> Iterator[FaultProxy]:
    thread = ProxyThread(s3_server.port)
    yield thread.proxy
    thread.close()


@pytest.fixture
def raw(s3_server: S3Server) -> Iterator[Any]:
    client = botocore.session.get_session().create_client("s3", **s3_server.client_kwargs())
    yield client
    client.close()


@pytest.fixture
def s3_weft(
    server_factory: Callable[..., ServerProcess],
    s3_server: S3Server,
    s3_bucket: str,
    proxy: FaultProxy,
) -> Callable[..., ServerProcess]:
    def start(cache_bytes: int = 0, compression: str = "none", **s3: Any) -> ServerProcess:
        settings: dict[str, Any] = {
            "endpoint_url": proxy.endpoint_url,
            "region": s3_server.region,
            "access_key_id": s3_server.access_key_id,
            "secret_access_key": s3_server.secret_access_key,
            "part_bytes": SEG,
            "retries": 2,
            "timeout": 5,
            "max_backoff": 0.05,
        }
        settings.update(s3)
        return server_factory(
            store_url=f"s3://{s3_bucket}/pre",
            namespace="e2e",
            segment_bytes=SEG,
            cache_bytes=cache_bytes,
            compression=compression,
            s3=settings,
        )

    return start
