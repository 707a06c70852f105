"""The compose file cannot be run here (no Docker engine), so it is checked by
construction: every Weft service's environment is a valid configuration that
this build can serve, and every file it mounts exists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from app.config import load_settings
from app.storage.factory import check_urls

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
WEFT_SERVICES = {
    name: service
    for name, service in COMPOSE["services"].items()
    if service.get("image") == "weft:latest"
}


def test_every_profile_has_a_weft_service() -> None:
    profiles = {p for s in WEFT_SERVICES.values() for p in s.get("profiles", ["default"])}
    assert profiles == {"default", "scale", "cluster"}


@pytest.mark.parametrize("name", sorted(WEFT_SERVICES))
def test_weft_service_environment_is_a_valid_configuration(name: str) -> None:
    environ = {k: str(v) for k, v in WEFT_SERVICES[name].get("environment", {}).items()}
    settings = load_settings(environ=environ)
    check_urls(settings)
    assert str(settings.data_dir) == "/data"


def test_cluster_nodes_share_every_backend_and_differ_in_node_id() -> None:
    nodes = [s for s in WEFT_SERVICES.values() if "cluster" in s.get("profiles", [])]
    assert len(nodes) >= 2
    envs: list[dict[str, Any]] = [node["environment"] for node in nodes]
    for key in ("WEFT_DATABASE_URL", "WEFT_STORE_URL", "WEFT_TAIL_URL", "WEFT_NAMESPACE"):
        assert len({env[key] for env in envs}) == 1, key
    assert len({env["WEFT_NODE_ID"] for env in envs}) == len(nodes)
    assert len({str(node["volumes"]) for node in nodes}) == len(nodes)


def test_the_load_balancer_config_names_every_cluster_node_and_buffers_nothing() -> None:
    balancer = COMPOSE["services"]["loadbalancer"]
    mount = next(v for v in balancer["volumes"] if "nginx" in v)
    conf = (ROOT / mount.split(":")[0]).read_text()
    for name, service in WEFT_SERVICES.items():
        if "cluster" in service.get("profiles", []):
            assert f"server {name}:3060" in conf
    unbuffered = ("proxy_request_buffering off", "proxy_buffering off", "client_max_body_size 0")
    for directive in unbuffered:
        assert directive in conf
