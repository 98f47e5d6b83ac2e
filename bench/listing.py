"""``python -m bench listing``: how fast a source is listed, in keys per second.

One bucket in moto's S3 over HTTP: ``--keys`` JPEG keys spread over ``--prefixes`` prefixes (plus a few
directly under the root), and an S3 Inventory report of the same bucket (gzipped CSV and Parquet
parts). Measured, each the best of ``--repeat`` full listings through ``labelq.sources.iter_listing``:

* one ListObjectsV2 stream (``LABELQ_LIST_WORKERS=1``);
* the prefix fan-out (``LABELQ_LIST_WORKERS`` = 4, 8, 16), checked to yield the same keys in the same order;
* the inventory report (no ListObjects at all), CSV and Parquet.

The same bucket listings also run against ``ModelS3``, an in-memory ListObjectsV2 that sleeps
``--model-latency-ms`` a call: 200 000 keys over 200 prefixes, and 50 000 keys over 10 000 tiny prefixes
(the case where a call per prefix would cost the fan-out dearly).

moto renders a ListObjectsV2 page in Python at 1-2 ms a key, on the same cores as the client, so its
pages cost far more CPU than S3's and gain little from concurrency; the model keeps only the round trip,
the part of a real S3 listing that the fan-out overlaps. The moto server is filled in its own process
through moto's backend (filling 20 000 keys over HTTP would take minutes) and then serves HTTP.
Writes ``bench/out/listing.json``; bench/NOTES.md ("Listing rate") has the figures.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import functools
import gzip
import io
import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from .common import OUT, log, machine, write_json

BUCKET = "labelq-bench-listing"
INVENTORY = "labelq-bench-inventory"
READY = "_ready"


def keys_for(n_keys: int, n_prefixes: int) -> list[str]:
    """``n_keys`` keys: 20 directly under the root, the rest spread evenly over ``n_prefixes`` prefixes."""
    root = [f"root-{i:03d}.jpg" for i in range(min(20, n_keys))]
    rest = n_keys - len(root)
    return root + [f"shard-{i % n_prefixes:03d}/img-{i:07d}.jpg" for i in range(rest)]


# ----------------------------------------------------------------------------- the server process


def serve(port: int, n_keys: int, n_prefixes: int) -> None:
    """moto's server on ``port``, filled through its backend, then ``_ready`` put last; runs until killed."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    backend.create_bucket(BUCKET, "us-east-1")
    backend.create_bucket(INVENTORY, "us-east-1")
    keys = keys_for(n_keys, n_prefixes)
    rows = []
    for key in keys:
        obj = backend.put_object(BUCKET, key, key.encode())
        rows.append((BUCKET, key, obj.size, obj.etag.strip('"')))
    for fmt, parts in inventory_parts(rows).items():
        files = []
        for name, body in parts:
            backend.put_object(INVENTORY, name, body)
            files.append({"key": name, "size": len(body), "MD5checksum": "0" * 32})
        backend.put_object(INVENTORY, f"inv/{fmt}/manifest.json", json.dumps(manifest(fmt, files)).encode())
    backend.put_object(INVENTORY, READY, b"1")
    while True:
        time.sleep(3600)


def inventory_parts(rows: list[tuple[str, str, int, str]], per_part: int = 10_000) -> dict[str, list[tuple[str, bytes]]]:
    """The rows as an AWS inventory writes them: gzipped CSV (URL-encoded keys) and Parquet parts."""
    from urllib.parse import quote_plus

    import pyarrow as pa
    import pyarrow.parquet as pq

    out: dict[str, list[tuple[str, bytes]]] = {"csv": [], "parquet": []}
    for n, start in enumerate(range(0, len(rows), per_part)):
        chunk = rows[start : start + per_part]
        text = io.StringIO()
        writer = csv.writer(text, quoting=csv.QUOTE_ALL, lineterminator="\n")
        for bucket, key, size, etag in chunk:
            writer.writerow([bucket, quote_plus(key, safe="/"), size, "2026-12-01T00:00:00.000Z", etag, "STANDARD"])
        out["csv"].append((f"inv/csv/data/part-{n}.csv.gz", gzip.compress(text.getvalue().encode())))
        table = pa.table({"bucket": [r[0] for r in chunk], "key": [r[1] for r in chunk],
                          "size": pa.array([r[2] for r in chunk], pa.int64()), "e_tag": [r[3] for r in chunk]})
        buf = io.BytesIO()
        pq.write_table(table, buf)
        out["parquet"].append((f"inv/parquet/data/part-{n}.parquet", buf.getvalue()))
    return out


def manifest(fmt: str, files: list[dict[str, Any]]) -> dict[str, Any]:
    schema = ("Bucket, Key, Size, LastModifiedDate, ETag, StorageClass" if fmt == "csv" else
              "message s3.inventory { required binary bucket (STRING); required binary key (STRING); "
              "optional int64 size; optional binary e_tag (STRING); }")
    return {"sourceBucket": BUCKET, "destinationBucket": f"arn:aws:s3:::{INVENTORY}", "version": "2016-11-30",
            "creationTimestamp": "1764547200000", "fileFormat": "CSV" if fmt == "csv" else "Parquet",
            "fileSchema": schema, "files": files}


# ----------------------------------------------------------------------------- measuring


def client(endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing", config=Config(max_pool_connections=40))


class ModelS3:
    """A stand-in for S3's ListObjectsV2 alone: keys sorted in memory, ``latency_s`` per call, 1 000 items a page.

    Honours Prefix, Delimiter, StartAfter and continuation as S3 does; it measures what labelq's side of
    a listing sustains when each page costs a round trip and no server CPU.
    """

    PAGE = 1000

    def __init__(self, keys: list[str], latency_s: float) -> None:
        self.keys = sorted(keys)
        self.latency_s = latency_s
        self.calls = 0
        self.lock = threading.Lock()

    def get_paginator(self, name: str) -> ModelS3:
        assert name == "list_objects_v2"
        return self

    def paginate(self, *, Bucket: str, Prefix: str = "", Delimiter: str | None = None,
                 StartAfter: str | None = None) -> Any:
        i = max(bisect.bisect_right(self.keys, StartAfter or ""), bisect.bisect_left(self.keys, Prefix))
        while True:  # i carries over pages, as S3's continuation token does
            page, i = self._page(Bucket, Prefix, Delimiter, i)
            yield page
            if not page["IsTruncated"]:
                return

    def _page(self, bucket: str, prefix: str, delimiter: str | None, i: int) -> tuple[dict[str, Any], int]:
        with self.lock:
            self.calls += 1
        time.sleep(self.latency_s)
        keys = self.keys
        contents: list[dict[str, Any]] = []
        prefixes: list[dict[str, str]] = []
        while i < len(keys) and keys[i].startswith(prefix) and len(contents) + len(prefixes) < self.PAGE:
            key = keys[i]
            rest = key[len(prefix):]
            if delimiter and delimiter in rest:
                common = prefix + rest.split(delimiter, 1)[0] + delimiter
                prefixes.append({"Prefix": common})
                i = bisect.bisect_left(keys, common + "\U0010ffff")
            else:
                contents.append({"Key": key, "Size": len(key), "ETag": '"0123456789abcdef0123456789abcdef"'})
                i += 1
        truncated = i < len(keys) and keys[i].startswith(prefix)
        return {"Contents": contents, "CommonPrefixes": prefixes, "IsTruncated": truncated, "Name": bucket}, i


class _Counter:
    """A botocore event handler counting the calls it sees."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, **_: Any) -> None:
        self.n += 1


def measure(make_client: Callable[[], Any], source: str, *, workers: int, repeat: int) -> dict[str, Any]:
    """Best of ``repeat`` full listings: keys, seconds, keys/s, ListObjectsV2 calls, and a hash of the cursors."""
    from labelq.config import Settings
    from labelq.objects import Stores
    from labelq.sources import iter_listing, parse_source

    best: dict[str, Any] | None = None
    for _ in range(repeat):
        c = make_client()
        calls = _Counter()
        if not isinstance(c, ModelS3):
            c.meta.events.register("before-send.s3.ListObjectsV2", calls)
        stores = Stores(Settings(list_workers=workers), s3_client=c)
        start = time.perf_counter()
        cursors = [cursor for _, cursor in iter_listing(parse_source(source), stores)]
        seconds = time.perf_counter() - start
        run = {"keys": len(cursors), "seconds": round(seconds, 3), "keys_per_s": round(len(cursors) / seconds),
               "list_calls": c.calls if isinstance(c, ModelS3) else calls.n, "order": hash(tuple(cursors))}
        if best is None or run["seconds"] < best["seconds"]:
            best = run
    assert best is not None
    return best


def _bucket_rows(label: str, make_client: Callable[[], Any], source: str, workers: list[int], expect: int,
                 repeat: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    one: dict[str, Any] | None = None
    for w in [1, *[w for w in workers if w > 1]]:
        m = measure(make_client, source, workers=w, repeat=repeat)
        one = one or m
        same = m["order"] == one["order"] and m["keys"] == expect
        rows.append({"source": label, "workers": w, **m, "same_as_one_stream": same})
        log(f"  {label}, {w:2d} stream{'s' if w > 1 else ' '}: {m['keys']} keys in {m['seconds']:.2f}s = "
            f"{m['keys_per_s']:>7} keys/s, {m['list_calls']} ListObjectsV2{'' if same else '  ORDER DIFFERS'}")
    return rows


def run(args: argparse.Namespace) -> int:
    import pyarrow.parquet  # noqa: F401 - imported once here, not inside the first inventory measurement

    from .servers import HOST, Proc, free_port, wait_until

    started = time.perf_counter()
    workers = [int(w) for w in args.workers.split(",")]
    rows: list[dict[str, Any]] = []
    latency = args.model_latency_ms / 1000
    for n_keys, n_prefixes in ((args.model_keys, args.model_prefixes), (args.tiny_keys, args.tiny_prefixes)):
        if n_keys:
            keys = keys_for(n_keys, n_prefixes)
            label = f"model S3, {args.model_latency_ms:g} ms a call, {n_prefixes} prefixes"
            log(f"listing: {label}, {n_keys} keys")
            rows += _bucket_rows(label, functools.partial(ModelS3, keys, latency), "s3://model", workers, len(keys), 1)
    port = free_port()
    endpoint = f"http://{HOST}:{port}"
    log(f"listing: filling moto with {args.keys} keys over {args.prefixes} prefixes (in its own process)")
    filling = time.perf_counter()
    proc = Proc([sys.executable, "-m", "bench.listing", "--serve", str(port), str(args.keys), str(args.prefixes)],
                "moto-listing")
    try:
        probe = client(endpoint)
        wait_until(lambda: probe.head_object(Bucket=INVENTORY, Key=READY), timeout=300, what="filled moto",
                   alive=proc.alive)
        log(f"  filled in {time.perf_counter() - filling:.1f}s")
        rows += _bucket_rows("moto over HTTP", lambda: client(endpoint), f"s3://{BUCKET}",
                             [w for w in workers if w in args.moto_workers], args.keys, args.repeat)
        for fmt in ("csv", "parquet"):
            m = measure(lambda: client(endpoint), f"s3://{INVENTORY}/inv/{fmt}/manifest.json", workers=1,
                        repeat=args.repeat)
            rows.append({"source": f"inventory ({fmt}) on moto", "workers": 1, **m})
            log(f"  inventory ({fmt}): {m['keys']} keys in {m['seconds']:.2f}s = {m['keys_per_s']:>7} keys/s")
    finally:
        proc.stop()
    for row in rows:
        row.pop("order")
    res = {"command": "python -m bench " + " ".join(sys.argv[1:]), "machine": machine(), "keys": args.keys,
           "prefixes": args.prefixes, "rows": rows, "seconds": round(time.perf_counter() - started, 1)}
    write_json(OUT / "listing.json", res)
    print(table(res))
    print(f"wrote {OUT / 'listing.json'} in {res['seconds']:.0f}s")
    return 0 if all(r.get("same_as_one_stream", True) for r in rows) else 1


def table(res: dict[str, Any]) -> str:
    lines = ["| source | streams | keys | seconds | keys/s | ListObjectsV2 calls |", "|---|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['source']} | {r['workers']} | {r['keys']} | {r['seconds']:.2f} | {r['keys_per_s']} | "
                     f"{r['list_calls']} |")
    return "\n".join(lines)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("listing", help="listing rate: one ListObjectsV2 stream vs prefix fan-out vs S3 Inventory")
    p.add_argument("--keys", type=int, default=20_000, help="keys in the moto bucket")
    p.add_argument("--prefixes", type=int, default=50)
    p.add_argument("--workers", default="4,8,16", help="fan-out stream counts (one stream is always measured)")
    p.add_argument("--moto-workers", default="8", type=lambda v: [int(w) for w in v.split(",")],
                   help="the fan-out stream counts also run against moto (each full moto listing takes ~40 s)")
    p.add_argument("--model-keys", type=int, default=200_000, help="keys in the S3 model (0 skips it)")
    p.add_argument("--model-prefixes", type=int, default=200)
    p.add_argument("--model-latency-ms", type=float, default=100.0, help="the model's time per ListObjectsV2 call")
    p.add_argument("--tiny-keys", type=int, default=50_000, help="keys of the model's many-tiny-prefixes case (0 skips)")
    p.add_argument("--tiny-prefixes", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=1)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
