"""One contract, every backend: the memory store and DynamoDB on a moto server (over HTTP)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator

import pytest

from sessionflow.state.base import Item, Record, StateStore
from sessionflow.state.memory import MemoryStore
from tests.helpers import FakeClock

pytestmark = pytest.mark.aws


StoreFactory = Callable[..., StateStore]


@pytest.fixture(params=["memory", "dynamodb"])
def make_store(request: pytest.FixtureRequest) -> Iterator[StoreFactory]:
    if request.param == "memory":
        yield lambda ttl_s=None, now=None: MemoryStore(ttl_s=ttl_s, now=now or FakeClock())
        return
    import boto3

    from sessionflow.state.dynamodb import DynamoDBStore, create_table

    endpoint = request.getfixturevalue("endpoint")
    client = boto3.session.Session().client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    table = f"contract-{uuid.uuid4().hex[:8]}"
    create_table(client, table)
    yield lambda ttl_s=None, now=None: DynamoDBStore(client, table, ttl_s=ttl_s, now=now or FakeClock())
    client.delete_table(TableName=table)


def test_put_then_get_round_trips_values(make_store: StoreFactory) -> None:
    store = make_store()
    value = {
        "state": {"seen": {"e1": 1_700_000_000_123}, "pending": [], "name": "été ✓"},
        "seq": "4959" * 14,
        "n": None,
    }
    assert store.put("m#a", value, None) == 1
    item = store.get("m#a")
    assert item is not None
    assert item.value == value
    assert item.version == 1
    assert store.get("m#missing") is None


def test_conditional_put_refuses_a_stale_version(make_store: StoreFactory) -> None:
    store = make_store()
    assert store.put("k", {"x": 1}, None) == 1
    assert store.put("k", {"x": 2}, None) is None  # it exists: "create" must not overwrite
    assert store.put("k", {"x": 2}, 1) == 2
    assert store.put("k", {"x": 3}, 1) is None  # someone else wrote version 2
    assert store.get("k").value == {"x": 2}  # type: ignore[union-attr]
    assert store.put("other", {"x": 1}, 5) is None  # an absent key has no version 5
    assert store.stats.conflicts == 3


def test_get_many_reads_more_than_one_batch(make_store: StoreFactory) -> None:
    store = make_store()
    for i in range(130):  # BatchGetItem takes 100 keys at most
        store.put(f"k{i}", {"i": i}, None)
    items = store.get_many([f"k{i}" for i in range(135)] + ["k3"])
    assert sorted(item.value["i"] for item in items.values()) == list(range(130))


def test_expired_items_are_absent_and_can_be_recreated(make_store: StoreFactory) -> None:
    clock = FakeClock()
    store = make_store(ttl_s=60, now=clock)
    store.put("k", {"x": 1}, None)
    clock.now += 59
    assert store.get("k") is not None
    clock.now += 2
    assert store.get("k") is None  # DynamoDB has not swept it yet, but it is past its TTL
    assert store.put("k", {"x": 2}, None) == 1
    assert store.get("k").value == {"x": 2}  # type: ignore[union-attr]


def test_conditional_delete(make_store: StoreFactory) -> None:
    store = make_store()
    store.put("k", {"x": 1}, None)
    assert not store.delete("k", 7)
    assert store.get("k") is not None
    assert store.delete("k", 1)
    assert store.get("k") is None
    assert store.delete("k", None)  # unconditional delete of nothing is fine


def test_members_are_an_idempotent_union(make_store: StoreFactory) -> None:
    store = make_store()
    store.add_members("t#1", ["a", "b"])
    store.add_members("t#1", ["b", "c"])
    store.add_members("t#1", ["a"])
    store.add_members("t#2", [])
    assert store.members_many(["t#1", "t#2", "t#3"]) == {"t#1": frozenset({"a", "b", "c"})}


def test_racing_writers_one_wins(make_store: StoreFactory) -> None:
    store = make_store()
    store.put("k", {"writer": None}, None)
    results: list[int | None] = []
    barrier = threading.Barrier(6)

    def write(writer: int) -> None:
        barrier.wait()
        results.append(store.put("k", {"writer": writer}, 1))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results, key=lambda r: r or 0) == [None] * 5 + [2]
    winner = store.get("k")
    assert winner is not None and winner.version == 2 and winner.value["writer"] is not None


# -- values larger than one item -------------------------------------------------------------------------


def _big_value(tag: str, ids: int = 30_000) -> dict[str, object]:
    """Like a bot's machine state: tens of thousands of event ids, which compress poorly."""
    return {"tag": tag, "seen": {str(uuid.uuid4()): 1_700_000_000_000 + i for i in range(ids)}}


def test_the_backends_refuse_an_item_over_the_dynamodb_limit(make_store: StoreFactory) -> None:
    store = make_store()
    with pytest.raises(Exception, match=r"(?i)item size has exceeded"):
        store._write("k", b"x" * 410_000, 1, None, None, 0)


def test_a_value_bigger_than_an_item_round_trips_in_parts(make_store: StoreFactory) -> None:
    store = make_store()
    first = _big_value("first")
    assert store.put("m#bot", first, None) == 1
    assert store.stats.parts_written >= 2
    assert store.get("m#bot") == Item(first, 1)
    old_parts = store._parts["m#bot"][1]

    second = _big_value("second")
    assert store.put("m#bot", second, 1) == 2
    assert store.get("m#bot") == Item(second, 2)
    assert store._read(old_parts) == {}  # replaced parts are deleted, not left to the TTL

    assert store.put("m#bot", {"tag": "small"}, 2) == 3  # shrinking back to one item
    assert store.get("m#bot") == Item({"tag": "small"}, 3)
    assert store._read(store._parts.get("m#bot", (0, []))[1]) == {}


def test_a_stale_writer_of_a_big_value_leaves_no_parts_behind(make_store: StoreFactory) -> None:
    store = make_store()
    store.put("m#bot", {"tag": "small"}, None)
    written_before = store.stats.parts_written
    seen: list[str] = []
    original = store._write

    def spy(key: str, *args: object) -> bool:
        seen.append(key)
        return original(key, *args)  # type: ignore[arg-type]

    store._write = spy  # type: ignore[method-assign,assignment]
    assert store.put("m#bot", _big_value("stale"), 7) is None
    parts = [key for key in seen if "#part#" in key]
    assert len(parts) == store.stats.parts_written - written_before >= 2
    assert store._read(parts) == {}
    assert store.get("m#bot") == Item({"tag": "small"}, 1)


def test_deleting_a_big_value_deletes_its_parts(make_store: StoreFactory) -> None:
    store = make_store()
    store.put("m#bot", _big_value("x"), None)
    parts = store._parts["m#bot"][1]
    assert store.delete("m#bot", 1)
    assert store.get("m#bot") is None
    assert store._read(parts) == {}


def _second_client(store: StateStore, make_store: StoreFactory) -> StateStore:
    """Another client of the same table (a second Lambda invocation), with its own memory of parts."""
    if isinstance(store, MemoryStore):
        other = MemoryStore()
        other._records, other._lock = store._records, store._lock
        return other
    return make_store()  # the factory's DynamoDB stores share their table


def test_a_reader_racing_a_writer_reads_again(make_store: StoreFactory) -> None:
    """The pointer is read, then a writer replaces value and parts before the reader reads the parts."""
    writer = make_store()
    writer.put("m#bot", _big_value("v1"), None)
    assert writer.get("m#bot") is not None  # the writer knows v1's parts: it deletes them on replace
    reader = _second_client(writer, make_store)
    reader_read = reader._read
    calls = 0

    def interleaved(keys: list[str]) -> dict[str, Record]:
        nonlocal calls
        calls += 1
        records = reader_read(keys)
        if calls == 1:
            writer.put("m#bot", _big_value("v2"), 1)
        return records

    reader._read = interleaved  # type: ignore[method-assign]
    item = reader.get("m#bot")
    assert item is not None and item.version == 2 and item.value["tag"] == "v2"
    assert calls >= 3  # pointer, missing parts, then pointer and parts again
