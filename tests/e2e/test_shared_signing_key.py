"""Share links work on every node of a cluster (SPEC §6, §12.2): without
``signing_key`` configured, the key is made once in the database by the first
node to start and read by the others, never generated per node."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx

from tests.pg import PG_URL, new_namespace, require_pg, run_query
from tests.server import ServerProcess

TOKENS = ["admin-secret"]
ADMIN = {"Authorization": "Bearer admin-secret"}


def share(server: ServerProcess, stream_id: str) -> str:
    response = httpx.post(
        f"{server.url}/streams/{stream_id}/share", json={"ttl": 600}, headers=ADMIN, timeout=10
    )
    assert response.status_code == 200, response.text
    url: str = response.json()["url"]
    return url


def test_a_share_link_made_on_one_node_reads_through_another(
    server_factory: Callable[..., ServerProcess],
) -> None:
    require_pg()
    namespace = new_namespace()
    shared = {"database_url": PG_URL, "namespace": namespace, "tokens": TOKENS}
    a, b = (server_factory(node_id=name, **shared) for name in ("node-a", "node-b"))
    assert httpx.post(f"{a.url}/stream/s", content=b"hello", headers=ADMIN).status_code == 201
    link = share(a, "s")
    # B has none of the bytes (its own data_dir): what it serves from the
    # database alone is the row, through the link's signature.
    info = httpx.get(b.url + link.replace("/stream/", "/streams/", 1), timeout=10)
    assert info.status_code == 200, info.text
    assert (info.json()["id"], info.json()["size"]) == ("s", 5)
    head = httpx.head(b.url + link, timeout=10)
    assert (head.status_code, head.headers["upload-offset"]) == (200, "5")
    # And B's links open on A: one key, whichever node signs.
    assert httpx.get(a.url + share(b, "s"), timeout=10).content == b"hello"
    tampered = link.replace("expires=", "expires=1", 1)
    assert httpx.head(b.url + tampered, timeout=10).status_code == 403
    [(key,)] = run_query(f"SELECT value FROM \"{namespace}\".secrets WHERE name = 'signing_key'")
    assert len(key) == 64  # secrets.token_hex(32)
    for node in (a, b):
        assert node.log and not any(key in line for line in node.log)


def test_a_key_generated_into_data_dir_by_an_earlier_version_is_the_one_kept(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """A node upgraded from a version that kept its key in data_dir/signing.key
    stores that key in the database, so its links keep working."""
    server = server_factory()
    server.stop()
    data = Path(server.config["data_dir"])
    data.mkdir(parents=True, exist_ok=True)
    old_key = "0123456789abcdef-earlier-key"
    # A fresh database: the one server_factory made knows a key already.
    server.config["database_url"] = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    if "namespace" in server.config:  # --database postgresql: a fresh schema instead
        server.config.update(database_url=PG_URL, namespace=new_namespace())
    (data / "signing.key").write_text(old_key)
    server.start()
    assert httpx.post(f"{server.url}/stream/s", content=b"x").status_code == 201
    query = parse_qs(urlsplit(share(server, "s")).query)
    expires, signature = query["expires"][0], query["signature"][0]
    # Signed with the old key: the same link, configured with it, still reads.
    server.config["signing_key"] = old_key
    (data / "signing.key").unlink()
    server.restart()
    got = httpx.get(f"{server.url}/stream/s", params={"expires": expires, "signature": signature})
    assert got.status_code == 200
    assert got.content == b"x"
