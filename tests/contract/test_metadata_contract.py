"""MetadataRepo's contract (app/storage/base.py), the same on every
implementation: the unit tests' fake, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.errors import StreamExists
from app.storage.base import ListQuery, MetadataRepo
from app.streams.models import StreamInfo, StreamState

T0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def info(stream_id: str, *, at: int = 0, key: str = "k1", **changes: Any) -> StreamInfo:
    created = T0 + timedelta(microseconds=at)
    base = StreamInfo(
        id=stream_id,
        key=key,
        metadata={},
        state=StreamState.LIVE,
        size=0,
        sha256=None,
        created_at=created,
        updated_at=created,
    )
    return base.with_changes(**changes)


def ids(rows: list[StreamInfo]) -> list[str]:
    return [row.id for row in rows]


async def test_insert_then_get_gives_back_every_field(repo: MetadataRepo) -> None:
    finished = T0 + timedelta(seconds=3, microseconds=7)
    row = info(
        "a.b~c:d@e-f_1",
        metadata={"buildId": "b1", "n": 1.5, "ok": True, "none": None, "deep": {"x": ["é", 2]}},
        state=StreamState.COMPLETE,
        size=2**40 + 3,
        sha256="ab" * 32,
        updated_at=finished,
        finished_at=finished,
        expected_size=2**40 + 3,
        tus=True,
    )
    assert await repo.insert(row, replace=False) is None
    assert await repo.get(row.id) == row
    assert await repo.get("missing") is None


async def test_insert_existing_raises_without_replace_and_swaps_with_it(
    repo: MetadataRepo,
) -> None:
    old = info("s", metadata={"v": 1})
    await repo.insert(old, replace=False)
    with pytest.raises(StreamExists):
        await repo.insert(info("s", key="k2"), replace=False)
    assert await repo.get("s") == old
    new = info("s", key="k2", at=5, metadata={"v": 2})
    assert await repo.insert(new, replace=True) == old
    assert await repo.get("s") == new
    assert await repo.insert(info("fresh"), replace=True) is None


async def test_update_changes_only_the_same_incarnation(repo: MetadataRepo) -> None:
    row = info("s", metadata={"m": "x"})
    await repo.insert(row, replace=False)
    done = row.with_changes(
        state=StreamState.COMPLETE,
        size=10,
        sha256="cd" * 32,
        updated_at=T0 + timedelta(seconds=1),
        finished_at=T0 + timedelta(seconds=1),
    )
    await repo.update(done.with_changes(key="other", size=99))
    assert await repo.get("s") == row
    await repo.update(done)
    assert await repo.get("s") == done
    await repo.update(info("missing"))
    assert await repo.get("missing") is None


async def test_update_writes_only_a_live_row_and_says_whether_it_did(repo: MetadataRepo) -> None:
    # Two nodes finishing one stream: the second write must change nothing.
    row = info("s")
    await repo.insert(row, replace=False)
    at = T0 + timedelta(seconds=1)
    abandoned = row.with_changes(state=StreamState.ABANDONED, size=3, updated_at=at, finished_at=at)
    assert await repo.update(abandoned) is True
    late = abandoned.with_changes(state=StreamState.COMPLETE, size=9)
    assert await repo.update(late) is False
    assert await repo.get("s") == abandoned
    assert await repo.update(row.with_changes(key="other")) is False
    assert await repo.update(info("missing")) is False


async def test_checkpoint_records_sizes_of_live_rows_of_that_incarnation(
    repo: MetadataRepo,
) -> None:
    await repo.insert(info("live"), replace=False)
    await repo.insert(info("done", state=StreamState.COMPLETE, size=4), replace=False)
    await repo.insert(info("other", key="k9"), replace=False)
    await repo.checkpoint([("live", "k1", 7), ("done", "k1", 8), ("other", "k1", 9), ("x", "k", 1)])
    sizes = {sid: (await repo.get(sid)).size for sid in ("live", "done", "other")}  # type: ignore[union-attr]
    assert sizes == {"live": 7, "done": 4, "other": 0}
    live = await repo.get("live")
    assert live is not None and live.updated_at > T0
    await repo.checkpoint([])


async def test_delete_removes_and_returns_the_row_once(repo: MetadataRepo) -> None:
    row = info("s")
    await repo.insert(row, replace=False)
    assert await repo.delete("s", key="not-this-one") is None
    assert await repo.get("s") == row
    assert await repo.delete("s", key="k1") == row
    assert await repo.delete("s") is None
    await repo.insert(row, replace=False)
    assert await repo.delete("s") == row
    assert await repo.get("s") is None


async def test_page_is_newest_first_with_ties_by_id_and_a_cursor(repo: MetadataRepo) -> None:
    # Ids chosen so that a collation other than byte order would sort them differently.
    names = ["b", "B", "a-c", "ab", "a.b", "Z", "_x", "~y", "1"]
    for n, name in enumerate(names):
        await repo.insert(info(name, at=n // 3), replace=False)
    everything = ids(await repo.page(ListQuery(limit=100)))
    expected = sorted(names, key=lambda s: (names.index(s) // 3, s.encode()), reverse=True)
    assert everything == expected
    seen: list[str] = []
    before: tuple[datetime, str] | None = None
    while True:
        page = await repo.page(ListQuery(limit=2, before=before))
        if not page:
            break
        seen += ids(page)
        before = (page[-1].created_at, page[-1].id)
    assert seen == expected


async def test_page_filters_by_state_and_literal_case_sensitive_prefix(
    repo: MetadataRepo,
) -> None:
    for n, (name, state) in enumerate(
        [
            ("build-1-a", StreamState.LIVE),
            ("build-1-b", StreamState.COMPLETE),
            ("Build-1-c", StreamState.LIVE),
            ("build_1x", StreamState.LIVE),
            ("build-10", StreamState.ABANDONED),
        ]
    ):
        await repo.insert(info(name, at=n, state=state), replace=False)
    assert ids(await repo.page(ListQuery(prefix="build-1-"))) == ["build-1-b", "build-1-a"]
    assert ids(await repo.page(ListQuery(prefix="build_"))) == ["build_1x"]
    assert ids(await repo.page(ListQuery(prefix="build-1", state=StreamState.LIVE))) == [
        "build-1-a"
    ]
    assert ids(await repo.page(ListQuery(state=StreamState.ABANDONED))) == ["build-10"]
    assert ids(await repo.page(ListQuery(prefix="%"))) == []


METADATA = {
    "text": {"v": "1", "s": "x y"},
    "int": {"v": 1, "s": "x"},
    "float": {"v": 1.5},
    "true": {"v": True},
    "false": {"v": False},
    "null": {"v": None},
    "object": {"v": {"a": 1}},
    "array": {"v": [1]},
    "absent": {"s": "x"},
    "unicode": {"v": "é☃"},
}


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"v": ["1"]}, {"text", "int"}),
        ({"v": ["1.5"]}, {"float"}),
        ({"v": ["true"]}, {"true"}),
        ({"v": ["false"]}, {"false"}),
        ({"v": ["null"]}, {"null"}),
        ({"v": ["é☃"]}, {"unicode"}),
        ({"v": ['{"a": 1}']}, set()),
        ({"v": ['{"a":1}']}, set()),
        ({"v": ["[1]"]}, set()),
        ({"v": ["None"]}, set()),
        ({"v": [""]}, set()),
        ({"v": ["1"], "s": ["x"]}, {"int"}),
        ({"v": ["1", "true"]}, set()),
        ({"s": ["x y"]}, {"text"}),
        ({"missing": ["null"]}, set()),
    ],
)
async def test_page_metadata_filters_compare_json_values_as_text(
    repo: MetadataRepo, filters: dict[str, list[str]], expected: set[str]
) -> None:
    for n, (name, metadata) in enumerate(METADATA.items()):
        await repo.insert(info(name, at=n, metadata=metadata), replace=False)
    assert set(ids(await repo.page(ListQuery(meta=filters)))) == expected


async def test_live_for_build_finished_before_and_counts(repo: MetadataRepo) -> None:
    def done(at: int) -> dict[str, Any]:
        return {"state": StreamState.COMPLETE, "finished_at": T0 + timedelta(seconds=at)}

    await repo.insert(info("l1", at=1, metadata={"buildId": "7"}), replace=False)
    await repo.insert(info("build-7-x", at=2, **done(30)), replace=False)
    await repo.insert(info("c1", at=3, metadata={"buildId": 7}, **done(10)), replace=False)
    await repo.insert(info("c2", at=4, metadata={"buildId": "70"}, **done(20)), replace=False)
    await repo.insert(
        info("a1", at=5, state=StreamState.ABANDONED, finished_at=T0 + timedelta(seconds=5)),
        replace=False,
    )
    assert ids(await repo.live()) == ["l1"]
    assert sorted(ids(await repo.for_build("7"))) == ["build-7-x", "c1", "l1"]
    assert await repo.for_build("8") == []
    cutoff = T0 + timedelta(seconds=25)
    assert ids(await repo.finished_before(cutoff, limit=10)) == ["a1", "c1", "c2"]
    assert ids(await repo.finished_before(cutoff, limit=2)) == ["a1", "c1"]
    assert await repo.count_by_state() == {
        StreamState.LIVE: 1,
        StreamState.COMPLETE: 3,
        StreamState.ABANDONED: 1,
    }
    await repo.check()


async def test_count_by_state_names_every_state_when_empty(repo: MetadataRepo) -> None:
    assert await repo.count_by_state() == {state: 0 for state in StreamState}


async def test_concurrent_creates_and_deletes_lose_no_row(repo: MetadataRepo) -> None:
    """Many tasks at once (on PostgreSQL, many connections): every create lands,
    a contested id has exactly one winner, a contested delete exactly one."""
    await asyncio.gather(*(repo.insert(info(f"s{n:03}", at=n), replace=False) for n in range(60)))
    assert len(await repo.page(ListQuery(limit=1000))) == 60

    async def claim(n: int) -> bool:
        try:
            await repo.insert(info("contested", key=f"k{n}"), replace=False)
            return True
        except StreamExists:
            return False

    assert sum(await asyncio.gather(*(claim(n) for n in range(10)))) == 1
    removed = await asyncio.gather(*(repo.delete("contested") for _ in range(10)))
    assert sum(r is not None for r in removed) == 1
    results = await asyncio.gather(
        *(repo.delete(f"s{n:03}") for n in range(0, 60, 2)),
        *(repo.insert(info(f"t{n:03}", at=100 + n), replace=False) for n in range(30)),
    )
    assert all(r is not None for r in results[:30])
    rows = ids(await repo.page(ListQuery(limit=1000)))
    assert sorted(rows) == sorted(
        [f"s{n:03}" for n in range(1, 60, 2)] + [f"t{n:03}" for n in range(30)]
    )


async def test_concurrent_replaces_of_one_id_all_succeed_one_after_another(
    repo: MetadataRepo,
) -> None:
    """Each replace removes exactly the row before it: one saw no row, every
    other saw a different predecessor, and the last one's row remains."""
    replaced = await asyncio.gather(
        *(repo.insert(info("hot", key=f"k{n}"), replace=True) for n in range(10))
    )
    keys = {f"k{n}" for n in range(10)}
    previous = [row.key for row in replaced if row is not None]
    assert sum(row is None for row in replaced) == 1
    assert len(set(previous)) == 9 and set(previous) < keys
    final = await repo.get("hot")
    assert final is not None and keys - set(previous) == {final.key}


async def test_by_keys_finds_the_streams_of_those_keys(repo: MetadataRepo) -> None:
    await repo.insert(info("a", key="ka"), replace=False)
    await repo.insert(info("b", key="kb", state=StreamState.COMPLETE), replace=False)
    await repo.insert(info("c", key="kc"), replace=False)
    found = await repo.by_keys(["kb", "ka", "gone"])
    assert sorted((row.id, row.key, row.state) for row in found) == [
        ("a", "ka", StreamState.LIVE),
        ("b", "kb", StreamState.COMPLETE),
    ]
    assert await repo.by_keys([]) == []


async def test_total_size_sums_every_row(repo: MetadataRepo) -> None:
    assert await repo.total_size() == 0
    await repo.insert(info("a", size=2**40), replace=False)
    await repo.insert(info("b", key="kb", size=7, state=StreamState.COMPLETE), replace=False)
    assert await repo.total_size() == 2**40 + 7
    await repo.checkpoint([("a", "k1", 5)])
    assert await repo.total_size() == 12
    await repo.delete("b")
    assert await repo.total_size() == 5


async def test_put_link_creates_then_repoints_keeping_created_at(repo: MetadataRepo) -> None:
    later = T0 + timedelta(seconds=2, microseconds=9)
    link, created = await repo.put_link("latest", "s1", T0)
    assert created and (link.name, link.stream_id, link.created_at, link.updated_at) == (
        "latest",
        "s1",
        T0,
        T0,
    )
    moved, created = await repo.put_link("latest", "s2", later)
    assert not created and (moved.stream_id, moved.created_at, moved.updated_at) == (
        "s2",
        T0,
        later,
    )
    assert await repo.get_link("latest") == moved
    assert await repo.get_link("other") is None


async def test_links_list_by_name_with_a_stream_filter_and_a_cursor(repo: MetadataRepo) -> None:
    for name, stream_id in [("b", "s1"), ("a", "s2"), ("Z", "s1"), ("c", "s1")]:
        await repo.put_link(name, stream_id, T0)
    names = [link.name for link in await repo.links()]
    assert names == ["Z", "a", "b", "c"]  # byte order, as the cursor compares
    assert [link.name for link in await repo.links(stream_id="s1")] == ["Z", "b", "c"]
    assert [link.name for link in await repo.links(stream_id="s1", after="Z", limit=1)] == ["b"]
    assert [link.name for link in await repo.links(after="c")] == []


async def test_delete_link_says_whether_there_was_one(repo: MetadataRepo) -> None:
    await repo.put_link("x", "s", T0)
    assert await repo.delete_link("x") is True
    assert await repo.delete_link("x") is False
    assert await repo.get_link("x") is None


async def test_concurrent_first_puts_of_one_link_all_succeed(repo: MetadataRepo) -> None:
    results = await asyncio.gather(*(repo.put_link("hot", f"s{n}", T0) for n in range(8)))
    assert sum(created for _, created in results) == 1
    final = await repo.get_link("hot")
    assert final is not None and final.stream_id in {f"s{n}" for n in range(8)}
