"""Operational faults of a shared worker pool, done for real (issue 10): nothing lost, nothing hangs.

Each fault ends in one of two states: the work is done, or it is parked where ``labelq
status`` shows it and ``labelq retry`` resumes it. Real worker processes, real Redis
servers (one with ``maxmemory``), real broken model folders, real missing credentials.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import (
    broken_copy,
    export_job,
    file_uris,
    job_hash,
    job_status,
    once_each,
    put_objects,
    write_photos,
)
from tests.support.procs import wait_until
from tests.support.redis import queue_length
from tests.support.workers import Procs, cli, labelq_env

pytestmark = pytest.mark.slow

CHUNK = 8
BATCH = 8


@pytest.fixture
def env_for(tmp_path: Path, tiny_vit: Path) -> Any:
    def make(redis_url: str, **settings: Any) -> dict[str, str]:
        base = {"batch_size": BATCH, "chunk_size": CHUNK, "local_root": str(tmp_path), "chunk_attempts": 2,
                "chunk_retry_delay": 0.2, "stall_timeout": 60}
        base.update(settings)
        models = base.pop("models", [tiny_vit])
        return labelq_env(broker=redis_url, models=models, **base)

    return make


# ---------------------------------------------------------------- models that do not load


@pytest.mark.parametrize("fault", ["missing folder", "corrupt safetensors"])
def test_a_worker_whose_model_does_not_load_exits_and_takes_no_chunk(
        fault: str, tmp_path: Path, redis_url: str, redis_client: Any, procs: Procs, tiny_vit: Path,
        photo_bytes: list[bytes], env_for: Any) -> None:
    paths = write_photos(tmp_path / "in", photo_bytes[:16])
    env = env_for(redis_url)
    cli(["enqueue", str(tmp_path / "in"), "--job", "J"], env, cwd=tmp_path).check()
    assert queue_length(redis_client) == 2
    bad_model = tmp_path / "no-such-model" if fault == "missing folder" else broken_copy(tiny_vit, tmp_path / "bad")
    bad = procs.worker(env_for(redis_url, models=[bad_model], worker_restarts=0), ready=False)
    assert bad.wait(120) != 0
    lines = [line for line in bad.text().splitlines() if "cannot start, not consuming" in line]
    assert lines and str(bad_model.name) in lines[0]
    assert "Traceback" not in bad.text()
    assert queue_length(redis_client) == 2  # it took nothing
    procs.worker(env)  # a good worker labels everything
    wait_until(lambda: job_hash(redis_client, "J").get("state") == "done", timeout=120, what="job done")
    once_each(export_job(env, "J", tmp_path), file_uris(paths), str(tiny_vit))


def test_enqueue_refuses_a_model_it_cannot_resolve_before_publishing(tmp_path: Path, redis_url: str,
                                                                       redis_client: Any, photo_bytes: list[bytes],
                                                                       env_for: Any) -> None:
    write_photos(tmp_path / "in", photo_bytes[:4])
    env = env_for(redis_url)
    result = cli(["enqueue", str(tmp_path / "in"), "--job", "J", "-m", str(tmp_path / "models" / "vit")], env,
                 cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "models/vit" in result.stderr
    assert "Traceback" not in result.stderr
    assert queue_length(redis_client) == 0 and not job_hash(redis_client, "J")


def test_a_chunk_whose_model_fails_to_load_is_retried_then_dead_lettered_and_retry_resumes_it(
        tmp_path: Path, redis_url: str, procs: Procs, tiny_vit: Path, photo_bytes: list[bytes],
        env_for: Any) -> None:
    """The worker is fine, the job's model is not (its weights are corrupt): the chunk is tried
    LABELQ_CHUNK_ATTEMPTS times, then parked; `--wait` ends (exit 1) instead of waiting forever;
    once the model is fixed, `retry` labels everything."""
    paths = write_photos(tmp_path / "in", photo_bytes[:12])
    bad_model = broken_copy(tiny_vit, tmp_path / "vit-v2")
    env = env_for(redis_url)
    w = procs.worker(env)
    start = time.monotonic()
    result = cli(["enqueue", str(tmp_path / "in"), "--job", "J", "-m", str(bad_model), "--wait"], env, cwd=tmp_path,
                 timeout=180)
    assert result.returncode == 1, result.stderr
    assert "dead-lettered" in result.stderr and time.monotonic() - start < 120
    st = job_status(env, "J", tmp_path)
    assert (st["state"], st["ok"], st["error"], st["dead"], st["dead_chunks"]) == ("failed", 0, 0, 12, 2)
    assert [d["attempts"] for d in st["dead_letters"]] == [2, 2] and all(d["error"] for d in st["dead_letters"])
    assert len([line for line in w.text().splitlines() if "is dead-lettered" in line]) == 2
    errors = cli(["status", "J", "--errors"], env, cwd=tmp_path).check().stdout
    assert "dead letters (2 chunks that failed every attempt)" in errors
    shutil.copy(tiny_vit / "model.safetensors", bad_model / "model.safetensors")  # the operator fixes the model
    cli(["retry", "J", "--wait"], env, cwd=tmp_path, timeout=180).check()
    st = job_status(env, "J", tmp_path)
    assert (st["state"], st["ok"], st["dead"], st["dead_chunks"]) == ("done", 12, 0, 0)
    once_each(export_job(env, "J", tmp_path), file_uris(paths), str(bad_model))


# ---------------------------------------------------------------- Redis faults


def test_redis_out_of_memory_loses_nothing(tmp_path: Path, redis_factory: Any, procs: Procs, tiny_vit: Path,
                                           photo_bytes: list[bytes], env_for: Any) -> None:
    """noeviction Redis fills up mid-job: record writes fail, chunks go back (never acknowledged), the
    producer says it could not publish; once memory is raised, every object is labelled exactly once."""
    server = redis_factory()
    client = server.client()
    client.config_set("maxmemory-policy", "noeviction")
    paths = write_photos(tmp_path / "in", photo_bytes[:48])
    env = env_for(server.url, visibility_timeout=10)
    procs.worker(env)
    client.config_set("maxmemory", 1)  # full: nothing that grows memory is accepted
    refused = cli(["enqueue", str(tmp_path / "in"), "--job", "J"], env, cwd=tmp_path)
    assert refused.returncode == 1 and "maxmemory" in refused.stderr and "Traceback" not in refused.stderr
    client.config_set("maxmemory", 0)
    cli(["enqueue", str(tmp_path / "in"), "--job", "J"], env, cwd=tmp_path).check()
    wait_until(lambda: int(job_hash(client, "J").get("ok", 0)) > 0, timeout=60, what="first records", every=0.05)
    client.config_set("maxmemory", 1)  # full again, mid-job
    time.sleep(4)
    client.config_set("maxmemory", 0)
    wait_until(lambda: job_hash(client, "J").get("state") == "done", timeout=180, what="job done",
               describe=lambda: str(job_hash(client, "J")) + "\n" + procs.logs()[-3000:])
    h = job_hash(client, "J")
    assert (int(h["ok"]), int(h["error"]), h.get("dead", "0")) == (48, 0, "0")
    once_each(export_job(env, "J", tmp_path), file_uris(paths), str(tiny_vit))


def test_a_job_resumed_after_redis_lost_its_data_labels_every_object(tmp_path: Path, redis_url: str,
                                                                     redis_client: Any, procs: Procs, tiny_vit: Path,
                                                                     photo_bytes: list[bytes], env_for: Any) -> None:
    """Records in a SQL table survive; Redis (no AOF) forgets every job, chunk and done-set. The resumed
    listing skips what the table holds and labels the rest, new objects between old ones included."""
    first = write_photos(tmp_path / "in", photo_bytes[:32], prefix="b")
    env = env_for(redis_url, results_url=f"sqlite:///{tmp_path / 'records.db'}")
    procs.worker(env)
    cli(["enqueue", str(tmp_path / "in"), "--job", "J", "--wait"], env, cwd=tmp_path, timeout=180).check()
    redis_client.flushall()
    later = write_photos(tmp_path / "in", photo_bytes[32:44], prefix="a") + write_photos(tmp_path / "in", photo_bytes[44:50],
                                                                               prefix="c")
    cli(["enqueue", str(tmp_path / "in"), "--job", "J", "--wait"], env, cwd=tmp_path, timeout=180).check()
    st = job_status(env, "J", tmp_path)
    assert (st["total"], st["skipped"], st["ok"]) == (50, 32, 50)
    once_each(export_job(env, "J", tmp_path), file_uris(first + later), str(tiny_vit))


# ---------------------------------------------------------------- sources and configuration


def test_a_manifest_with_repeats_finishes_and_counts_each_object_once(tmp_path: Path, redis_url: str,
                                                                       procs: Procs, tiny_vit: Path,
                                                                       photo_bytes: list[bytes], env_for: Any) -> None:
    paths = write_photos(tmp_path / "in", photo_bytes[:10])
    lines = [str(p) for p in paths] + [p.as_uri() for p in paths[:5]] + [str(p) for p in paths[3:7]]
    (tmp_path / "manifest.txt").write_text("\n".join(lines) + "\n")
    env = env_for(redis_url)
    procs.worker(env)
    cli(["enqueue", str(tmp_path / "manifest.txt"), "--job", "J", "--chunk-size", "4", "--wait"], env, cwd=tmp_path,
        timeout=180).check()
    st = job_status(env, "J", tmp_path)
    assert (st["state"], st["total"], st["listed"], st["ok"]) == ("done", 10, 10, 10)
    once_each(export_job(env, "J", tmp_path), file_uris(paths), str(tiny_vit))


def test_a_worker_without_credentials_parks_chunks_instead_of_writing_access_denied(
        tmp_path: Path, redis_url: str, procs: Procs, tiny_vit: Path, s3_server: Any, s3_client: Any,
        s3_bucket: str, photo_bytes: list[bytes], env_for: Any) -> None:
    """A refusal caused by the worker's own configuration is not a property of the object: no final
    access_denied records, the chunks are dead-lettered, and `retry` on a fixed worker labels them."""
    uris = set(put_objects(s3_client, s3_bucket, {f"creds/p_{i}.jpg": d for i, d in enumerate(photo_bytes[:8])}))
    env = env_for(redis_url, s3_endpoint_url=s3_server.endpoint_url)
    no_creds = {k: v for k, v in env.items() if not k.startswith("AWS_")}
    no_creds.update(AWS_CONFIG_FILE=str(tmp_path / "absent"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "absent"),
                    AWS_EC2_METADATA_DISABLED="true", AWS_DEFAULT_REGION="us-east-1")
    bad = procs.worker(no_creds)
    result = cli(["enqueue", f"s3://{s3_bucket}/creds/", "--job", "J", "--wait"], env, cwd=tmp_path, timeout=180)
    assert result.returncode == 1, cli(["status", "J", "--errors"], env, cwd=tmp_path).stdout
    st = job_status(env, "J", tmp_path)
    assert (st["state"], st["ok"], st["error"], st["dead"]) == ("failed", 0, 0, 8)
    assert "credentials" in st["dead_letters"][0]["error"]
    bad.stop()
    procs.worker(env)
    cli(["retry", "J", "--wait"], env, cwd=tmp_path, timeout=180).check()
    records = export_job(env, "J", tmp_path)
    once_each(records, uris, str(tiny_vit))
    assert Counter(r["status"] for r in records) == {"ok": 8}


def test_a_job_export_stays_that_jobs_result_after_another_job_relabels(tmp_path: Path, redis_url: str,
                                                                          procs: Procs, tiny_vit: Path,
                                                                          photo_bytes: list[bytes],
                                                                          env_for: Any) -> None:
    paths = write_photos(tmp_path / "in", photo_bytes[:8])
    env = env_for(redis_url)
    procs.worker(env)
    cli(["enqueue", str(tmp_path / "in"), "--job", "A", "--wait"], env, cwd=tmp_path, timeout=180).check()
    before = export_job(env, "A", tmp_path)
    cli(["enqueue", str(tmp_path / "in"), "--job", "B", "--force", "--wait"], env, cwd=tmp_path, timeout=180).check()
    after = export_job(env, "A", tmp_path)
    assert sorted(map(json.dumps, before)) == sorted(map(json.dumps, after))
    assert {r["job"] for r in after} == {"A"}
    assert {r["job"] for r in export_job(env, "B", tmp_path)} == {"B"}
    once_each(after, file_uris(paths), str(tiny_vit))


def test_two_producers_of_one_job_count_it_once(tmp_path: Path, redis_url: str, redis_client: Any, procs: Procs,
                                                  tiny_vit: Path, photo_bytes: list[bytes], env_for: Any) -> None:
    paths = write_photos(tmp_path / "in", photo_bytes[:40])
    env = env_for(redis_url)
    producers = [procs.spawn(["enqueue", str(tmp_path / "in"), "--job", "J"], env, name=f"producer{i}")
                 for i in range(2)]
    for p in producers:
        assert p.wait(120) == 0
    h = job_hash(redis_client, "J")
    assert (int(h["enqueued"]), int(h["chunks"]), int(h["listed"])) == (40, 5, 40)
    procs.worker(env)
    wait_until(lambda: job_hash(redis_client, "J").get("state") == "done", timeout=180, what="job done")
    h = job_hash(redis_client, "J")
    assert (int(h["ok"]), int(h["chunks_done"])) == (40, 5)
    once_each(export_job(env, "J", tmp_path), file_uris(paths), str(tiny_vit))


def test_wait_gives_up_when_no_worker_takes_the_job(tmp_path: Path, redis_url: str, photo_bytes: list[bytes],
                                                     env_for: Any) -> None:
    write_photos(tmp_path / "in", photo_bytes[:4])
    env = env_for(redis_url, stall_timeout=3)
    start = time.monotonic()
    result = cli(["enqueue", str(tmp_path / "in"), "--job", "J", "--wait"], env, cwd=tmp_path, timeout=60)
    assert result.returncode == 1 and time.monotonic() - start < 30
    assert "nothing moved for 3s" in result.stderr and "labelq ping" in result.stderr
