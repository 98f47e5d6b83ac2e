"""Resumable S3 listings through moto over HTTP: one stream vs prefix fan-out, cursors, inventory reports on S3."""

from __future__ import annotations

import csv
import gzip
import io
import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote_plus

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from labelq.config import Settings
from labelq.errors import UsageError
from labelq.objects import ObjectRef, Stores, s3_uri
from labelq.sources import iter_listing, parse_source

SUFFIXES = tuple(Settings().suffixes)

# Keys around every edge of the fan-out: directly under the root, sorting just before and after "b/"
# ("b-1", "b.jpg" < "b/" < "b0"), a leading "/", a doubled "//", nested levels, folder markers, a
# non-image, one prefix over a page (1 050 keys) and one with more sub-prefixes than workers.
EDGE_KEYS = ["a.jpg", "b-1.jpg", "b.jpg", "b/x.jpg", "b/y.jpg", "b/deep/z.jpg", "b0.jpg", "/lead.jpg", "c//odd.jpg",
             "c/d/e.jpg", "c/d/", "c/f.jpg", "notes.txt", "ü/é.jpg", "z.jpg"]
MANY = [f"many/img_{i:04d}.jpg" for i in range(1_050)]
SHARDS = [f"shards/s{s:02d}/{k}.jpg" for s in range(20) for k in range(3)]


def put_all(client: Any, bucket: str, keys: list[str]) -> dict[str, str]:
    """Upload concurrently (moto is slow one at a time); returns {key: etag}."""

    def put(key: str) -> tuple[str, str]:
        return key, client.put_object(Bucket=bucket, Key=key, Body=key.encode())["ETag"].strip('"')

    with ThreadPoolExecutor(10) as pool:  # botocore keeps 10 connections
        return dict(pool.map(put, keys))


def make_bucket(client: Any) -> str:
    name = f"labelq-list-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return name


def drop_bucket(client: Any, name: str) -> None:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=name, Delete={"Objects": keys})
    client.delete_bucket(Bucket=name)


@pytest.fixture(scope="module")
def big_bucket(client: Any) -> Iterator[tuple[str, dict[str, str]]]:
    """One bucket for the module: EDGE_KEYS + MANY + SHARDS, with their etags."""
    name = make_bucket(client)
    try:
        yield name, put_all(client, name, EDGE_KEYS + MANY + SHARDS)
    finally:
        drop_bucket(client, name)


@pytest.fixture(scope="module")
def client(s3_server: Any) -> Any:
    """One client for the module's listings (a client per listing costs more than moto's answer)."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name="us-east-1",
                        config=Config(max_pool_connections=70))


def listing(client: Any, source: str, *, workers: int, after: str | None = None) -> list[tuple[ObjectRef, str]]:
    stores = Stores(Settings(list_workers=workers), s3_client=client)
    return list(iter_listing(parse_source(source), stores, after=after))


def kept(keys: list[str], prefix: str = "") -> list[str]:
    return sorted(k for k in keys if k.startswith(prefix) and not k.endswith("/") and k.endswith(SUFFIXES))


# ---------------------------------------------------------------- fan-out = one stream


def test_fan_out_lists_what_one_stream_lists_in_the_same_order(client: Any, big_bucket: Any) -> None:
    bucket, etags = big_bucket
    one = listing(client, f"s3://{bucket}", workers=1)
    keys = kept(list(etags))
    assert [cursor for _, cursor in one] == keys  # key order; cursor = key
    assert [r for r, _ in one] == [ObjectRef(s3_uri(bucket, k), len(k.encode()), etags[k]) for k in keys]
    for workers in (3, 8, 64):  # 3: the root's sub-prefixes are listed whole; 8, 64: it descends a level first
        assert listing(client, f"s3://{bucket}", workers=workers) == one, workers


def test_fan_out_of_a_prefix_matches_one_stream(client: Any, big_bucket: Any) -> None:
    bucket, etags = big_bucket
    for prefix in ["b", "c/", "shards/", "shards/s07/", "many/img_10", "nothing-here/"]:
        one = listing(client, f"s3://{bucket}/{prefix}", workers=1)
        assert [cursor for _, cursor in one] == kept(list(etags), prefix), prefix
        assert listing(client, f"s3://{bucket}/{prefix}", workers=8) == one, prefix


# ---------------------------------------------------------------- resume


@pytest.mark.parametrize("workers", [1, 3])
def test_resume_after_every_cursor_lists_exactly_the_rest(client: Any, s3_bucket: str, workers: int) -> None:
    put_all(client, s3_bucket, [*EDGE_KEYS, "p0/q0/k.jpg", "p0/q1/k.jpg", "p1/q0/k.jpg"])
    whole = listing(client, f"s3://{s3_bucket}", workers=workers)
    assert [c for _, c in whole] == kept([*EDGE_KEYS, "p0/q0/k.jpg", "p0/q1/k.jpg", "p1/q0/k.jpg"])
    for i, (_, cursor) in enumerate(whole):
        assert listing(client, f"s3://{s3_bucket}", workers=workers, after=cursor) == whole[i + 1 :], cursor


def test_resume_in_a_large_bucket(client: Any, big_bucket: Any) -> None:
    bucket, _ = big_bucket
    whole = listing(client, f"s3://{bucket}", workers=1)
    at = {c: i for i, (_, c) in enumerate(whole)}
    # across a page boundary of one stream, inside a descended level, between sub-prefixes, the end
    for cursor in ["many/img_0999.jpg", "many/img_1000.jpg", "b/deep/z.jpg", "shards/s09/2.jpg", "shards/s10/0.jpg",
                   whole[-1][1]]:
        assert listing(client, f"s3://{bucket}", workers=8, after=cursor) == whole[at[cursor] + 1 :], cursor


def test_a_cursor_of_a_deleted_key_or_outside_the_prefix_still_resumes(client: Any, s3_bucket: str) -> None:
    put_all(client, s3_bucket, ["p/a/1.jpg", "p/b/1.jpg", "p/b/3.jpg", "p/c/1.jpg", "p/d.jpg"])
    for workers in (1, 3):
        rest = [c for _, c in listing(client, f"s3://{s3_bucket}/p/", workers=workers, after="p/b/2.jpg")]
        assert rest == ["p/b/3.jpg", "p/c/1.jpg", "p/d.jpg"]
        assert [c for _, c in listing(client, f"s3://{s3_bucket}/p/", workers=workers, after="p/bz")] == [
            "p/c/1.jpg", "p/d.jpg"]
        assert listing(client, f"s3://{s3_bucket}/p/", workers=workers, after="q") == []
        assert len(listing(client, f"s3://{s3_bucket}/p/", workers=workers, after="a")) == 5


# ---------------------------------------------------------------- bounded and well-behaved


def test_fan_out_reads_ahead_a_bounded_amount_and_stops_its_threads(s3_server: Any, client: Any,
                                                                    s3_bucket: str) -> None:
    from labelq.objects.listing import fan_out
    from labelq.objects.s3 import S3Pager

    put_all(client, s3_bucket, [f"p{p:02d}/k{k}.jpg" for p in range(30) for k in range(2)])
    calls: list[dict[str, Any]] = []
    lock = threading.Lock()

    def seen(params: dict[str, Any], **_: Any) -> None:
        with lock:
            calls.append(dict(params))

    import boto3

    counted = boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name="us-east-1")
    counted.meta.events.register("provide-client-params.s3.ListObjectsV2", seen)
    stream = fan_out(S3Pager(counted), s3_bucket, "", SUFFIXES, workers=2)
    assert calls == []  # lazy: nothing is asked before the first item is wanted
    _, cursor = next(stream)
    assert cursor == "p00/k0.jpg"
    time.sleep(0.5)
    with lock:
        assert sum("Delimiter" in c for c in calls) == 1
        assert len(calls) <= 1 + 2  # the level, then at most `workers` prefixes ahead of the consumer, not 30
    stream.close()
    deadline = time.monotonic() + 5
    while any(t.name.startswith("labelq-list") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name.startswith("labelq-list") for t in threading.enumerate())


@pytest.mark.parametrize("workers", [1, 8])
def test_listing_a_missing_bucket_is_a_usage_error(client: Any, workers: int) -> None:
    with pytest.raises(UsageError, match=r"cannot list s3://labelq-no-such-bucket/.*NoSuchBucket"):
        listing(client, "s3://labelq-no-such-bucket/p/", workers=workers)


# ---------------------------------------------------------------- inventory reports on S3


def inventory_csv(rows: list[tuple[str, str, int, str]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n")
    for bucket, key, size, etag in rows:
        writer.writerow([bucket, quote_plus(key, safe="/"), size, "2026-12-01T00:00:00.000Z", etag, "STANDARD"])
    return gzip.compress(out.getvalue().encode())


def inventory_parquet(rows: list[tuple[str, str, int, str]]) -> bytes:
    names = ("bucket", "key", "size", "e_tag")
    table = pa.table({n: [row[i] for row in rows] for i, n in enumerate(names)})
    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()


def publish_inventory(client: Any, dest: str, fmt: str, source_bucket: str, parts: list[list[Any]]) -> str:
    """Write an inventory report into ``dest`` the way AWS lays it out; returns the manifest's URI."""
    base = f"inventory/{source_bucket}/daily"
    suffix, encode, schema = (
        (".csv.gz", inventory_csv, "Bucket, Key, Size, LastModifiedDate, ETag, StorageClass") if fmt == "CSV" else
        (".parquet", inventory_parquet, "message s3.inventory { required binary bucket (STRING); required binary "
                                        "key (STRING); optional int64 size; optional binary e_tag (STRING); }"))
    files = []
    for rows in parts:
        key = f"{base}/data/{uuid.uuid4()}{suffix}"
        body = encode(rows)
        client.put_object(Bucket=dest, Key=key, Body=body)
        files.append({"key": key, "size": len(body), "MD5checksum": "0" * 32})
    manifest = {"sourceBucket": source_bucket, "destinationBucket": f"arn:aws:s3:::{dest}", "version": "2016-11-30",
                "creationTimestamp": "1764547200000", "fileFormat": fmt, "fileSchema": schema, "files": files}
    key = f"{base}/2026-12-01T01-00Z/manifest.json"
    client.put_object(Bucket=dest, Key=key, Body=json.dumps(manifest).encode())
    return f"s3://{dest}/{key}"


@pytest.mark.parametrize("fmt", ["CSV", "Parquet"])
def test_inventory_on_s3_lists_the_refs_a_listing_would(client: Any, big_bucket: Any, s3_bucket: str,
                                                         fmt: str) -> None:
    bucket, etags = big_bucket
    keys = EDGE_KEYS + SHARDS  # inventories are not in key order; neither is this
    rows = [(bucket, k, len(k.encode()), etags[k]) for k in keys]  # as PUT answered: size and etag
    uri = publish_inventory(client, s3_bucket, fmt, bucket, [rows[:7], rows[7:20], rows[20:]])
    inventory = listing(client, uri, workers=8)
    assert [r.uri for r, _ in inventory] == [s3_uri(bucket, k) for k in keys if k in kept(keys)]
    listed = {r.uri: r for r, _ in listing(client, f"s3://{bucket}", workers=1)}
    for ref, _ in inventory:  # the same uri, size and etag as listed: objects labelled either way settle on rerun
        assert listed[ref.uri] == ref
    for i, (_, cursor) in enumerate(inventory):
        if i % 5 == 0 or cursor.endswith(":0") or i == len(inventory) - 1:
            assert listing(client, uri, workers=8, after=cursor) == inventory[i + 1 :], cursor


def test_inventory_part_missing_on_s3_is_a_usage_error(client: Any, s3_bucket: str) -> None:
    uri = publish_inventory(client, s3_bucket, "CSV", "src", [[("src", "a.jpg", 1, "e")], [("src", "b.jpg", 1, "e")]])
    manifest = json.loads(client.get_object(Bucket=s3_bucket, Key=uri.split("/", 3)[3])["Body"].read())
    client.delete_object(Bucket=s3_bucket, Key=manifest["files"][1]["key"])
    with pytest.raises(UsageError, match="inventory part missing: s3://") as caught:
        listing(client, uri, workers=1)
    assert "\n" not in str(caught.value)
    with pytest.raises(UsageError, match="inventory manifest missing"):
        listing(client, f"s3://{s3_bucket}/nope/manifest.json", workers=1)
    client.put_object(Bucket=s3_bucket, Key="bad/manifest.json", Body=b"{not json")
    with pytest.raises(UsageError, match="bad JSON"):
        listing(client, f"s3://{s3_bucket}/bad/manifest.json", workers=1)
