from __future__ import annotations

import json
import re
import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest

from app.errors import InvalidInput
from app.streams.models import (
    StreamInfo,
    StreamState,
    json_depth,
    metadata_matches,
    new_stream_id,
    parse_count,
    parse_metadata,
    rfc3339,
    validate_stream_id,
)

# -- ids -------------------------------------------------------------------------------


def test_new_stream_ids_are_unique_under_concurrent_creation() -> None:
    made: list[list[str]] = [[] for _ in range(8)]

    def work(bucket: list[str]) -> None:
        for _ in range(2000):
            bucket.append(new_stream_id())

    threads = [threading.Thread(target=work, args=(bucket,)) for bucket in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [stream_id for bucket in made for stream_id in bucket]
    assert len(set(every)) == len(every) == 16000
    # Each thread saw its own ids increase, whatever the interleaving.
    for bucket in made:
        assert bucket == sorted(bucket)


def test_new_stream_ids_sort_by_creation_time() -> None:
    ids = [new_stream_id() for _ in range(5000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_new_stream_id_is_url_safe_and_a_valid_id() -> None:
    stream_id = new_stream_id()
    assert re.fullmatch(r"[0-9A-Z]+", stream_id)
    assert validate_stream_id(stream_id) == stream_id


@pytest.mark.parametrize(
    "stream_id",
    ["a", "A" * 200, "build-42-job:step@host~v1.2_x", "0", "a.", "a..b", "-", "~", "@:"],
)
def test_validate_stream_id_accepts_allowed_ids(stream_id: str) -> None:
    assert validate_stream_id(stream_id) == stream_id


@pytest.mark.parametrize(
    "stream_id",
    [
        "",
        "A" * 201,
        ".hidden",
        ".",
        "..",
        "a/b",
        "a b",
        "a%2Fb",
        "caf\u00e9",
        "tab\t",
        "new\nline",
        "a?b",
        "a#b",
        "a+b",
        "\u0661",  # an Arabic-Indic digit: \d would take it, the spec does not
    ],
)
def test_validate_stream_id_refuses_anything_else_with_400(stream_id: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_stream_id(stream_id)
    assert caught.value.status == 400
    assert caught.value.message


# -- metadata ----------------------------------------------------------------------------


def test_parse_metadata_absent_header_is_empty_object() -> None:
    assert parse_metadata(None, limit=100) == {}


def test_parse_metadata_decodes_utf8_json_object() -> None:
    raw = json.dumps({"buildId": 7, "name": "caf\u00e9"}, ensure_ascii=False).encode()
    assert parse_metadata(raw, limit=1000) == {"buildId": 7, "name": "caf\u00e9"}


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"[1, 2]",
        b'"text"',
        b"42",
        b"null",
        b"true",
        b'{"a": 1',
        b"\xff\xfe{}",
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"a": -Infinity}',
    ],
)
def test_parse_metadata_refuses_invalid_json_non_objects_and_non_utf8(raw: bytes) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_metadata(raw, limit=1000)
    assert caught.value.status == 400


def test_parse_metadata_limit_counts_encoded_bytes() -> None:
    value = "\u00e9" * 10  # 20 bytes in UTF-8
    raw = json.dumps({"v": value}, ensure_ascii=False).encode()
    assert parse_metadata(raw, limit=len(raw)) == {"v": value}
    with pytest.raises(InvalidInput):
        parse_metadata(raw, limit=len(raw) - 1)


def test_metadata_number_matches_its_json_text_and_string() -> None:
    assert metadata_matches({"build": 7}, {"build": ["7"]})
    assert metadata_matches({"build": "7"}, {"build": ["7"]})
    assert metadata_matches({"ok": True}, {"ok": ["true"]})
    assert metadata_matches({"ratio": 1.5}, {"ratio": ["1.5"]})
    assert not metadata_matches({"build": 7}, {"build": ["07"]})
    assert not metadata_matches({"build": 70}, {"build": ["7"]})


def test_metadata_missing_key_or_nested_value_does_not_match() -> None:
    assert not metadata_matches({}, {"build": ["7"]})
    assert not metadata_matches({"build": {"id": 7}}, {"build": ['{"id": 7}']})
    assert not metadata_matches({"build": [7]}, {"build": ["[7]"]})


def test_metadata_every_filter_must_match() -> None:
    metadata = {"build": 7, "job": "lint"}
    assert metadata_matches(metadata, {"build": ["7"], "job": ["lint"]})
    assert not metadata_matches(metadata, {"build": ["7"], "job": ["test"]})
    assert not metadata_matches(metadata, {"build": ["7", "8"]})
    assert metadata_matches(metadata, {})


# -- info -------------------------------------------------------------------------------


def test_rfc3339_is_utc_with_z_suffix() -> None:
    moment = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert rfc3339(moment) == "2024-05-06T05:08:09.123Z"
    assert rfc3339(None) is None


def test_stream_info_json_has_the_documented_keys_and_null_digest_while_live() -> None:
    now = datetime(2024, 1, 1, tzinfo=UTC)
    info = StreamInfo("s", "k", {"a": 1}, StreamState.LIVE, 3, None, now, now)
    assert info.to_json() == {
        "id": "s",
        "metadata": {"a": 1},
        "state": "live",
        "size": 3,
        "sha256": None,
        "created_at": "2024-01-01T00:00:00.000Z",
        "updated_at": "2024-01-01T00:00:00.000Z",
        "finished_at": None,
    }


@pytest.mark.parametrize(
    ("raw", "value"),
    [("0", 0), ("42", 42), (" 7 ", 7), ("0" * 40 + "5", 5), (str(2**63 - 1), 2**63 - 1)],
)
def test_parse_count_reads_bounded_decimal_integers(raw: str, value: int) -> None:
    assert parse_count(raw, "n") == value
    assert parse_count(None, "n") is None


@pytest.mark.parametrize(
    "raw", ["", "-1", "+1", "1.0", "1e3", "0x1", "\u00b2", "\u0663", str(2**63), "9" * 5000]
)
def test_parse_count_refuses_anything_else_with_400(raw: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_count(raw, "offset")
    assert caught.value.status == 400
    assert "offset" in caught.value.message


def test_json_depth_counts_containers_without_recursion() -> None:
    assert json_depth(1) == 0
    assert json_depth({}) == 1
    assert json_depth({"a": [1, {"b": []}]}) == 4
    deep: list[object] = []
    for _ in range(49_999):
        deep = [deep]
    assert json_depth(deep) == 50_000


def test_parse_metadata_refuses_deep_nesting_and_an_empty_value() -> None:
    at_limit = b'{"a":' + b"[" * 31 + b"]" * 31 + b"}"
    assert parse_metadata(at_limit, limit=10_000)
    for raw in (b'{"a":' + b"[" * 32 + b"]" * 32 + b"}", b"[" * 5000 + b"]" * 5000, b"", b"  "):
        with pytest.raises(InvalidInput):
            parse_metadata(raw, limit=100_000)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a": 1e400}',
        b'{"a": -1e400}',
        b'{"a": "\\ud800"}',
        b'{"\\udfff": 1}',
        b'{"a": 1' + b"0" * 5000 + b"}",
    ],
)
def test_parse_metadata_refuses_what_no_response_could_carry(raw: bytes) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_metadata(raw, limit=100_000)
    assert caught.value.status == 400
