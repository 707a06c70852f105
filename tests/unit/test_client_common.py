from __future__ import annotations

import pytest

from app.client.common import Backoff, Endpoint
from app.client.errors import server_message


def test_backoff_grows_by_the_factor_up_to_the_max() -> None:
    backoff = Backoff()
    assert [backoff.delay(n) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert Backoff(min_delay=0.1, factor=3, max_delay=1).delay(1) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        Backoff(retries=-1)


def test_endpoint_keeps_a_path_prefix_and_quotes_ids() -> None:
    endpoint = Endpoint("https://example.com/weft/", "s3cr3t")
    assert endpoint.tls and endpoint.port == 443 and endpoint.origin == "https://example.com"
    assert endpoint.path() == "/weft/stream"
    assert endpoint.path("a:b@c") == "/weft/stream/a%3Ab%40c"
    assert endpoint.headers()["Authorization"] == "Bearer s3cr3t"
    assert "s3cr3t" not in repr(endpoint)
    with pytest.raises(ValueError):
        Endpoint("ftp://example.com")


def test_server_message_prefers_the_json_error() -> None:
    assert server_message(409, b'{"error": "taken"}') == "taken"
    assert server_message(502, b"Bad gateway") == "Bad gateway"
    assert server_message(500, b"", "Internal Server Error") == "Internal Server Error"
