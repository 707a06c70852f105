"""Backends are chosen by the scheme of their URL in one place (SPEC §12);
what this build cannot serve stops the start naming the key."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from app.config import Settings, load_settings
from app.errors import ConfigError
from app.storage.factory import build_hub, build_leases, build_repo, check_urls, tail_scheme
from app.storage.memory_hub import MemoryHub
from app.storage.memory_leases import MemoryLeases
from app.storage.nats_hub import NatsHub
from app.storage.sql_leases import SqlLeases


def settings(**values: Any) -> Settings:
    return Settings.model_validate(values)


def test_defaults_are_the_embedded_backends() -> None:
    s = Settings()
    assert s.store_url == "file:"
    assert s.tail_url is None
    assert s.namespace == "weft"
    assert s.resolved_node_id == f"{socket.gethostname()}:3060"
    assert settings(node_id="n1").resolved_node_id == "n1"
    check_urls(s)


@pytest.mark.parametrize(
    "url",
    ["sqlite+aiosqlite:////tmp/w.db", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"],
)
def test_supported_database_urls_pass(url: str) -> None:
    check_urls(settings(database_url=url))


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"database_url": "mysql+aiomysql://u:secret@h/db"}, "database_url"),
        ({"database_url": "postgresql://u:secret@h/db"}, "database_url"),
        ({"database_url": "sqlite:///x.db"}, "database_url"),
        ({"database_url": "::nonsense::"}, "database_url"),
        ({"store_url": "ftp://h/x"}, "store_url"),
        ({"tail_url": "redis://u:secret@127.0.0.1:6379"}, "tail_url"),
        ({"tail_url": "nats://127.0.0.1:4222,redis://h"}, "tail_url"),
        ({"tail_url": "nats:127.0.0.1"}, "tail_url"),
        ({"tail_url": "nats://"}, "tail_url"),
    ],
)
def test_unsupported_urls_are_a_config_error_naming_the_key(
    values: dict[str, str], key: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        check_urls(settings(**values))
    assert f"'{key}'" in str(caught.value)
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "servers"),
    [
        ("nats://127.0.0.1:4222", ["nats://127.0.0.1:4222"]),
        ("NATS://a:4222, nats://u:p@b:4223", ["NATS://a:4222", "nats://u:p@b:4223"]),
    ],
)
def test_nats_tail_urls_build_the_nats_hub(url: str, servers: list[str]) -> None:
    s = settings(tail_url=url, namespace="ns1", node_id="n1")
    check_urls(s)
    assert tail_scheme(s) == "nats"
    hub = build_hub(s)
    assert isinstance(hub, NatsHub)
    assert (hub.servers, hub.namespace, hub.node_id) == (servers, "ns1", "n1")
    assert isinstance(build_hub(Settings()), MemoryHub)


def test_the_repository_is_never_built_on_an_unsupported_url() -> None:
    with pytest.raises(ConfigError, match="database_url"):
        build_repo(settings(database_url="mysql+aiomysql://h/db"))


@pytest.mark.parametrize("name", ["", "Weft", "1abc", "a-b", "a" * 49, "weft;drop", "ns."])
def test_bad_namespace_is_a_config_error_naming_the_key(name: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, environ={}, namespace=name)
    assert "namespace" in str(caught.value)


@pytest.mark.parametrize("name", ["weft", "_x", "ci_run_42", "a" * 48])
def test_good_namespaces_pass(name: str) -> None:
    assert settings(namespace=name).namespace == name


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"store_url": "gs://bucket/prefix"}, "store_url"),
        ({"store_url": "s3://"}, "store_url"),
        ({"store_url": "s3://Bad_Bucket/x"}, "store_url"),
        ({"store_url": "s3://bucket/x", "segment_bytes": 4 * 1024 * 1024}, "segment_bytes"),
    ],
)
def test_bad_store_urls_are_a_config_error_naming_the_key(values: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_urls(settings(**values))
    assert f"'{key}'" in str(caught.value)


@pytest.mark.parametrize(
    ("url", "namespace", "location"),
    [
        ("s3://bucket/prefix", "weft", ("bucket", "prefix/weft")),
        ("s3://bucket/a/b/", "ns1", ("bucket", "a/b/ns1")),
        ("s3://bucket", "weft", ("bucket", "weft")),
        ("s3://my.bucket-1/", "weft", ("my.bucket-1", "weft")),
    ],
)
def test_s3_store_urls_put_keys_under_prefix_and_namespace(
    url: str, namespace: str, location: tuple[str, str]
) -> None:
    from app.storage.factory import s3_location

    values = settings(store_url=url, namespace=namespace, segment_bytes=5 * 1024 * 1024)
    check_urls(values)
    assert s3_location(values) == location


def test_s3_settings_have_the_spec_defaults() -> None:
    s3 = Settings().s3
    assert (s3.part_bytes, s3.retries, s3.max_pending_bytes) == (8 << 20, 8, 1 << 30)
    assert Settings().cache_bytes == 1 << 30
    assert "hunter2" not in repr(settings(s3={"secret_access_key": "hunter2"}))


async def test_leases_live_in_postgresql_and_in_process_on_sqlite(tmp_path: Any) -> None:
    for url, kind in [
        (f"sqlite+aiosqlite:///{tmp_path / 'w.db'}", MemoryLeases),
        ("postgresql+asyncpg://postgres@127.0.0.1:5432/test", SqlLeases),
    ]:
        s = settings(database_url=url)
        repo = build_repo(s)  # no connection is made until it is used
        try:
            assert isinstance(build_leases(s, repo), kind)
        finally:
            await repo.close()
