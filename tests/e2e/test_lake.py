"""A distributed job into the Delta table (LABELQ_RESULTS_URL=delta:///…) through a real worker: export reads
the table (committing what the worker has not yet), DuckDB queries it, `labelq compact` compacts it, a rerun
skips what it holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.e2e.conftest import put_objects
from tests.support.workers import Procs, cli, labelq_env, read_jsonl


def test_a_job_lands_in_the_delta_table_and_compacts(redis_url: str, s3_server: Any, s3_client: Any,
                                                     s3_bucket: str, tiny_vit: Path, photo_bytes: list[bytes],
                                                     procs: Procs, tmp_path: Path) -> None:
    import duckdb

    from labelq.results.lake import DeltaStore

    etags = put_objects(s3_client, s3_bucket, {f"dl/p_{i:03d}.jpg": d for i, d in enumerate(photo_bytes[200:220])})
    table = tmp_path / "labels"
    env = labelq_env(broker=redis_url, results=f"delta://{table}", models=[tiny_vit], s3=s3_server.endpoint_url)
    procs.worker(env, name="lake")
    cli(["enqueue", f"s3://{s3_bucket}/dl", "--job", "dl-job", "--chunk-size", "8", "--wait"], env, cwd=tmp_path,
        timeout=120).check()
    store = DeltaStore.from_url(f"delta://{table}")
    # the batch (500 files) is not due, but the job is done only once its records are read back: verifying it
    # committed its 3 chunk files
    assert len(store.table().file_uris()) == 3

    out = tmp_path / "dl.jsonl"
    cli(["export", "dl-job", "-o", str(out)], env, cwd=tmp_path).check()
    exported = read_jsonl(out)
    assert {r["uri"]: r["etag"] for r in exported} == etags and len(exported) == 20
    assert len(store.table().file_uris()) == 3  # and the export added none

    con = duckdb.connect()
    con.register("labels", store.table().to_pyarrow_dataset())
    assert con.sql("SELECT count(*), count(DISTINCT uri) FROM labels WHERE job = 'dl-job'").fetchall() == [(20, 20)]

    done = cli(["compact", "--target-mb", "1"], env, cwd=tmp_path).check()
    assert "compacted 3 files into 1" in done.stderr, done.stderr
    assert len(store.table().file_uris()) == 1

    again = cli(["enqueue", f"s3://{s3_bucket}/dl", "--job", "dl-again", "--wait"], env, cwd=tmp_path,
                timeout=60).check()
    assert "skipped 20" in again.stderr, again.stderr
