"""``python -m bench s3``: object clients against moto's S3 over HTTP, GETs/s and CPU per GET.

The distributed path spends about a third of its worker CPU in boto3 (issue 14).
Every client GETs the same 1080p JPEGs (~0.65 MB) from a private moto server on a
free port, with 16 concurrent requests (labelq's ``fetch_threads``), best of
``repeat`` runs. CPU per GET is this process's CPU (the client's share, what a
worker pays); moto's own CPU per GET is reported beside it (on these shared cores
the server is the bottleneck, so GETs/s says less than CPU per GET).

* ``boto3, labelq's client``: ``labelq.objects.S3Store.fetch`` with
  ``make_s3_client`` (standard retries, pool = fetch threads), 16 threads;
* ``boto3, checksums when_required``: the same client with botocore's response and
  request checksum validation set to ``when_required`` (default since botocore
  1.36: ``when_supported``, a CRC over every body in Python-driven code);
* ``obstore`` (optional, Rust ``object_store``): sync ``obstore.get`` in 16 threads,
  and ``get_async`` with 16 in flight on one event loop.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .common import FAKE_AWS, log, settle

BUCKET = "bench"


def _boto3(moto: Any, *, when_required: bool) -> Any:
    from labelq.config import load_settings
    from labelq.objects import S3Store, make_s3_client

    s = load_settings(models=["x"], s3_endpoint_url=moto.endpoint_url, s3_region="us-east-1")
    client = make_s3_client(s)
    if when_required:
        from botocore.config import Config

        cfg = client.meta.config.merge(Config(response_checksum_validation="when_required",
                                              request_checksum_calculation="when_required"))
        import boto3

        client = boto3.session.Session().client("s3", endpoint_url=moto.endpoint_url, region_name="us-east-1",
                                                config=cfg)
    store = S3Store(s, client=client)
    from labelq.objects import ObjectRef

    def get(key: str) -> int:
        return len(store.fetch(ObjectRef(f"s3://{BUCKET}/{key}", None, None)))

    return get


def _obstore(moto: Any) -> Any:
    from obstore.store import S3Store

    return S3Store(BUCKET, endpoint=moto.endpoint_url, region="us-east-1", access_key_id=FAKE_AWS["AWS_ACCESS_KEY_ID"],
                   secret_access_key=FAKE_AWS["AWS_SECRET_ACCESS_KEY"], client_options={"allow_http": True},
                   virtual_hosted_style_request=False)


def run(paths: list[Path], *, repeat: int = 3, threads: int = 16, rounds: int = 2) -> dict[str, Any]:
    from .servers import Moto

    rows: list[dict[str, Any]] = []
    moto = Moto()
    try:
        s3 = moto.client()
        s3.create_bucket(Bucket=BUCKET)
        keys = []
        for p in paths:
            s3.put_object(Bucket=BUCKET, Key=p.name, Body=p.read_bytes())
            keys.append(p.name)
        total_bytes = sum(p.stat().st_size for p in paths)
        work = keys * rounds
        clients: dict[str, tuple[str, Any]] = {
            "boto3, labelq's client (S3Store.fetch)": ("threads", _boto3(moto, when_required=False)),
            "boto3, checksums when_required": ("threads", _boto3(moto, when_required=True)),
        }
        try:
            import obstore

            store = _obstore(moto)
            clients["obstore get (threads)"] = ("threads", lambda k: len(obstore.get(store, k).bytes()))
            clients["obstore get_async (one event loop)"] = ("async", (obstore, store))
        except ImportError:
            log("  obstore not installed: skipped (pip install obstore)")
        for name, (kind, get) in clients.items():
            runs = []
            for _ in range(repeat + 1):  # the first run warms connections and is not kept
                settle()
                cpu0, moto0, t0 = time.process_time(), moto.proc.cpu_seconds(), time.perf_counter()
                if kind == "threads":
                    with ThreadPoolExecutor(threads) as pool:
                        got = sum(pool.map(get, work))
                else:
                    module, store_ = get
                    got = asyncio.run(_async_all(module, store_, work, threads))
                runs.append({"wall_s": time.perf_counter() - t0, "client_cpu_s": time.process_time() - cpu0,
                             "moto_cpu_s": moto.proc.cpu_seconds() - moto0})
                assert got == total_bytes * rounds, (name, got)
            best = min(runs[1:], key=lambda r: r["wall_s"])
            row = {"client": name, "gets": len(work), "gets_per_s": round(len(work) / best["wall_s"], 1),
                   "client_cpu_ms_per_get": round(1000 * best["client_cpu_s"] / len(work), 3),
                   "moto_cpu_ms_per_get": round(1000 * best["moto_cpu_s"] / len(work), 3),
                   "client_cpu_ms_per_get_min": round(1000 * min(r["client_cpu_s"] for r in runs[1:]) / len(work), 3),
                   "runs": runs[1:]}
            rows.append(row)
            log(f"  {name:<42} {row['gets_per_s']:7.1f} GET/s  client CPU {row['client_cpu_ms_per_get']:.2f} ms/GET "
                f"(min {row['client_cpu_ms_per_get_min']:.2f}), moto {row['moto_cpu_ms_per_get']:.2f} ms/GET")
    finally:
        moto.stop()
    return {"objects": len(paths), "mean_bytes": round(total_bytes / len(paths)), "threads": threads, "rows": rows}


async def _async_all(obstore: Any, store: Any, keys: list[str], limit: int) -> int:
    sem = asyncio.Semaphore(limit)

    async def one(key: str) -> int:
        async with sem:
            result = await obstore.get_async(store, key)
            return len(await result.bytes_async())

    return sum(await asyncio.gather(*(one(k) for k in keys)))


def table(res: dict[str, Any]) -> str:
    lines = ["| client | GET/s | client CPU ms/GET | moto CPU ms/GET |", "|---|---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['client']} | {r['gets_per_s']:.1f} | {r['client_cpu_ms_per_get']:.2f} | "
                     f"{r['moto_cpu_ms_per_get']:.2f} |")
    return "\n".join(lines)
