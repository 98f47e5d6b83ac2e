"""Records into a Parquet dataset on S3 (moto) from a real worker: one file per chunk, export, skip on rerun."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from labelq import keys
from tests.e2e.conftest import put_objects
from tests.support.workers import Procs, cli, labelq_env, read_jsonl


def test_records_land_in_parquet_on_s3_one_file_per_chunk(redis_url: str, redis_client: Any, s3_server: Any,
                                                         s3_client: Any, s3_bucket: str, tiny_vit: Path,
                                                         photo_bytes: list[bytes], procs: Procs,
                                                         tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    etags = put_objects(s3_client, s3_bucket, {f"pq/p_{i:03d}.jpg": d for i, d in enumerate(photo_bytes[240:260])})
    env = labelq_env(broker=redis_url, results=f"parquet+s3://{s3_bucket}/labels", models=[tiny_vit],
                     s3=s3_server.endpoint_url)
    procs.worker(env, name="pq")
    cli(["enqueue", f"s3://{s3_bucket}/pq", "--job", "pq-job", "--chunk-size", "8", "--wait"], env, cwd=tmp_path,
        timeout=120).check()

    listed = s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="labels/")["Contents"]
    parts = sorted(o["Key"] for o in listed)
    assert len(parts) == 3  # 20 objects in chunks of 8: one file per chunk (one model)
    assert all(k.startswith("labels/job=pq-job/model=") and k.endswith(".parquet") for k in parts)
    rows = [row for k in parts
            for row in pq.read_table(io.BytesIO(s3_client.get_object(Bucket=s3_bucket, Key=k)["Body"].read()))
            .to_pylist()]
    assert {r["uri"]: r["etag"] for r in rows} == etags
    assert all(r["status"] == "ok" and r["model_revision"] for r in rows)
    assert not redis_client.keys(keys.records("*"))  # records went to Parquet only; Redis holds job state

    out = tmp_path / "pq.csv"
    cli(["export", "pq-job", "-o", str(out)], env, cwd=tmp_path).check()
    jsonl = tmp_path / "pq.jsonl"
    cli(["export", "pq-job", "-o", str(jsonl)], env, cwd=tmp_path).check()
    exported = read_jsonl(jsonl)
    assert sorted((r["uri"], r["label"]) for r in exported) == sorted((r["uri"], r["label"]) for r in rows)
    assert out.read_text().splitlines()[0].startswith("uri,etag,model,model_revision,label")

    # A second job over the same source skips what the first job's dataset holds with the same etag.
    again = cli(["enqueue", f"s3://{s3_bucket}/pq", "--job", "pq-again", "--wait"], env, cwd=tmp_path,
                timeout=60).check()
    assert "skipped 20" in again.stderr, again.stderr
