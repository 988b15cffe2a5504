"""One contract, every backend: the memory store and DynamoDB on a moto server (over HTTP)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator

import pytest

from sessionflow.state.base import StateStore
from sessionflow.state.memory import MemoryStore

pytestmark = pytest.mark.aws


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


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
