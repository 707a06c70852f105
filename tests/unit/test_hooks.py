"""The pure parts of app/hooks.py: signature, backoff, what logs and errors show."""

from __future__ import annotations

import hashlib
import hmac

import httpx

from app.config import Hook, HookDelivery
from app.hooks import _message, backoff, routes, shown, signature


def test_signature_is_hmac_sha256_of_timestamp_dot_body_like_stripe() -> None:
    body = b'{"id":"d1"}'
    expected = hmac.new(b"s3", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature("s3", body, 1700000000) == f"t=1700000000,v1={expected}"


def test_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    policy = HookDelivery(min_backoff=1, max_backoff=10)
    for attempts, ceiling in ((1, 1), (2, 2), (3, 4), (4, 8), (5, 10), (500, 10)):
        delays = [backoff(attempts, policy) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered


def test_logged_url_has_no_credentials_query_or_fragment() -> None:
    url = "https://user:pw@ci.example:8443/hooks/weft?token=abc#frag"
    assert shown(url) == "https://ci.example:8443/hooks/weft"


def test_refusal_message_comes_from_json_error_or_message_else_text() -> None:
    def answer(body: bytes, status: int = 400) -> str:
        return _message(httpx.Response(status), body)

    assert answer(b'{"error": "no"}') == "no"
    assert answer(b'{"message": "not\\nnow"}') == "not now"
    assert answer(b"plain\ttext\r\n") == "plain text"
    assert answer(b"", 418) == "A pre-create hook refused the stream (HTTP 418)."
    assert answer(b'{"detail": "x"}', 401) == "A pre-create hook refused the stream (HTTP 401)."
    assert len(answer(b"y" * 10_000)) == 500


def test_routes_give_each_post_event_its_hooks() -> None:
    hooks = (
        Hook(url="http://a/h", events=("pre-create", "post-create"), secret="s"),
        Hook(url="http://b/h", events=("post-create", "post-delete"), secret="s"),
    )
    assert routes(hooks) == {
        "post-create": ("http://a/h", "http://b/h"),
        "post-complete": (),
        "post-abandon": (),
        "post-delete": ("http://b/h",),
    }
    assert "secret" not in repr(hooks[0]) and "'s'" not in repr(hooks[0])
