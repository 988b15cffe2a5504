"""DynamoDB backend: one table, partition key ``pk`` (string); the client is injected.

Attributes: ``v`` version (N), ``b`` the compressed JSON value (B), ``m`` a string set (SS),
``ttl`` epoch seconds (N, the table's TTL attribute; a reserved word, hence ``#ttl`` in expressions).
Reads are strongly consistent BatchGetItem calls (100 keys each); writes are conditional
PutItem/DeleteItem on ``v``; timer sets are UpdateItem ADD; values that never change once written
(the event-id index) go 25 at a time in BatchWriteItem. Throttled calls are retried
(:mod:`.throttling`), and so are keys and items DynamoDB leaves unprocessed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sessionflow.state.base import Record, StateStore
from sessionflow.state.throttling import backoff, retrying

TTL_ATTRIBUTE = "ttl"
_BATCH_GET_LIMIT = 100
_BATCH_WRITE_LIMIT = 25
_MAX_UNPROCESSED_ROUNDS = 8


class DynamoDBStore(StateStore):
    def __init__(self, client: Any, table: str, ttl_s: int | None = None, now: Callable[[], float] = time.time) -> None:
        super().__init__(ttl_s, now)
        self.client = client
        self.table = table

    def _read(self, keys: list[str]) -> dict[str, Record]:
        records: dict[str, Record] = {}
        for start in range(0, len(keys), _BATCH_GET_LIMIT):
            request: dict[str, Any] = {
                self.table: {
                    "Keys": [{"pk": {"S": key}} for key in keys[start : start + _BATCH_GET_LIMIT]],
                    "ConsistentRead": True,
                }
            }
            for attempt in range(_MAX_UNPROCESSED_ROUNDS):
                self.stats.reads += 1
                response = retrying(self.client.batch_get_item, RequestItems=request)
                for raw in response.get("Responses", {}).get(self.table, []):
                    records[raw["pk"]["S"]] = _record(raw)
                request = response.get("UnprocessedKeys") or {}
                if not request:
                    break
                time.sleep(backoff(attempt))  # throttled: back off as the SDK advises
            else:
                raise RuntimeError(f"DynamoDB left keys unprocessed after {_MAX_UNPROCESSED_ROUNDS} rounds")
        return records

    def _write(
        self, key: str, blob: bytes, version: int, expires_at: int | None, expected_version: int | None, now: int
    ) -> bool:
        item: dict[str, Any] = {"pk": {"S": key}, "v": {"N": str(version)}, "b": {"B": blob}}
        if expires_at is not None:
            item[TTL_ATTRIBUTE] = {"N": str(expires_at)}
        if expected_version is None:
            # Absent, or present but past its TTL (DynamoDB has not swept it yet).
            return self._conditional(
                self.client.put_item,
                TableName=self.table,
                Item=item,
                ConditionExpression="attribute_not_exists(pk) OR (attribute_exists(#ttl) AND #ttl <= :now)",
                ExpressionAttributeNames={"#ttl": TTL_ATTRIBUTE},
                ExpressionAttributeValues={":now": {"N": str(now)}},
            )
        return self._conditional(
            self.client.put_item,
            TableName=self.table,
            Item=item,
            ConditionExpression="v = :expected",
            ExpressionAttributeValues={":expected": {"N": str(expected_version)}},
        )

    def _write_many(self, blobs: list[tuple[str, bytes]], expires_at: int | None) -> None:
        for start in range(0, len(blobs), _BATCH_WRITE_LIMIT):
            requests = []
            for key, blob in blobs[start : start + _BATCH_WRITE_LIMIT]:
                item: dict[str, Any] = {"pk": {"S": key}, "v": {"N": "1"}, "b": {"B": blob}}
                if expires_at is not None:
                    item[TTL_ATTRIBUTE] = {"N": str(expires_at)}
                requests.append({"PutRequest": {"Item": item}})
            pending: dict[str, Any] = {self.table: requests}
            for attempt in range(_MAX_UNPROCESSED_ROUNDS):
                response = retrying(self.client.batch_write_item, RequestItems=pending)
                pending = response.get("UnprocessedItems") or {}
                if not pending:
                    break
                time.sleep(backoff(attempt))
            else:
                raise RuntimeError(f"DynamoDB left items unprocessed after {_MAX_UNPROCESSED_ROUNDS} rounds")

    def _remove(self, key: str, expected_version: int | None) -> bool:
        kwargs: dict[str, Any] = {"TableName": self.table, "Key": {"pk": {"S": key}}}
        if expected_version is not None:
            kwargs["ConditionExpression"] = "v = :expected"
            kwargs["ExpressionAttributeValues"] = {":expected": {"N": str(expected_version)}}
        return self._conditional(self.client.delete_item, **kwargs)

    def _add(self, key: str, members: frozenset[str], expires_at: int | None) -> None:
        kwargs: dict[str, Any] = {"ExpressionAttributeValues": {":m": {"SS": sorted(members)}}}
        expression = "ADD m :m"
        if expires_at is not None:
            expression += " SET #ttl = :e"
            kwargs["ExpressionAttributeValues"][":e"] = {"N": str(expires_at)}
            kwargs["ExpressionAttributeNames"] = {"#ttl": TTL_ATTRIBUTE}
        retrying(
            self.client.update_item, TableName=self.table, Key={"pk": {"S": key}}, UpdateExpression=expression, **kwargs
        )

    def _conditional(self, call: Callable[..., Any], **kwargs: Any) -> bool:
        try:
            retrying(call, **kwargs)
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        return True


def _record(raw: dict[str, Any]) -> Record:
    expires = raw.get(TTL_ATTRIBUTE)
    blob = raw.get("b")
    return Record(
        blob=bytes(blob["B"]) if blob else None,
        version=int(raw["v"]["N"]) if "v" in raw else 0,
        expires_at=int(expires["N"]) if expires else None,
        members=frozenset(raw.get("m", {}).get("SS", ())),
    )


def create_table(client: Any, table: str) -> None:
    """The table the runtime needs (local AWS and tests; production declares it in serverless.yml)."""
    client.create_table(
        TableName=table,
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    client.get_waiter("table_exists").wait(TableName=table)
    client.update_time_to_live(
        TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE}
    )
