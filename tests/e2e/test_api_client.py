"""labelq.Client: distributed jobs from Python against a real worker, Redis and moto's S3."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

import labelq
from labelq import JobStalled, UsageError
from labelq.testing import CORPUS_MAX_PIXELS
from tests.e2e.conftest import RedisDB, put_objects
from tests.support.workers import Procs, labelq_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def worker_env(redis_db: RedisDB, s3_server: Any, tiny_vit: Path, module_procs: Procs) -> dict[str, str]:
    env = labelq_env(broker=redis_db.url, models=[tiny_vit], s3=s3_server.endpoint_url, batch_size=8,
                     max_pixels=CORPUS_MAX_PIXELS)
    module_procs.workers(env, [None])
    return env


def _client(env: dict[str, str], **extra: Any) -> labelq.Client:
    return labelq.Client(env["LABELQ_BROKER_URL"], s3_endpoint_url=env["LABELQ_S3_ENDPOINT_URL"],
                         models=[env["LABELQ_MODELS"]], **extra)


def test_enqueue_wait_export_jobs_as_the_cli_does(worker_env: dict[str, str], s3_client: Any, module_bucket: str,
                                                  photo_bytes: list[bytes], corpus_bytes: dict[str, bytes]) -> None:
    objects = {f"api/p_{i:02d}.jpg": data for i, data in enumerate(photo_bytes[:20])}
    objects["api/broken.jpg"] = corpus_bytes["truncated.jpg"]
    put_objects(s3_client, module_bucket, objects)
    seen: list[int] = []
    with _client(worker_env, chunk_size=8) as client:
        job = client.enqueue(f"s3://{module_bucket}/api", job="api-1")
        assert job == "api-1"
        info = client.wait(job, timeout=180, progress=lambda i: seen.append(i.processed))
        assert info.state == "done" and info.total == 21
        assert seen and seen == sorted(seen) and seen[-1] == 21  # progress moved forward, ending at the total
        assert client.status(job).ok + client.status(job).error == 21
        assert job in [j.id for j in client.jobs()]
        records = client.export(job).to_list()
        assert len({(r.uri, r.model) for r in records}) == len(records) == 21
        assert sum(not r.ok for r in records) == 1
        table = client.export(job).to_arrow()
        assert table.num_rows == 21
        # enqueue of the same job resumes it: nothing new, still done, still one record per object
        assert client.enqueue(f"s3://{module_bucket}/api", job="api-1") == "api-1"
        assert client.wait(job, timeout=60).total == 21
        assert client.retry(job) == 0  # a corrupt image is final: nothing to retry


def test_errors_are_exceptions(worker_env: dict[str, str], module_bucket: str, redis_url: str,
                               tmp_path: Path) -> None:
    with _client(worker_env) as client:
        with pytest.raises(UsageError, match="no such job"):
            client.status("never-enqueued")
        with pytest.raises(UsageError, match="nowhere"):
            client.enqueue(tmp_path / "nowhere", job="bad-source")
        with pytest.raises(UsageError):
            client.enqueue(f"s3://{module_bucket}/api", job="bad-model", models=[str(tmp_path / "no-model")])
    with pytest.raises(UsageError, match="LABELQ_"):
        labelq.Client("ftp://nowhere")
    # a queue no worker serves: wait gives up when nothing moves, with the job's info on the exception
    with labelq.Client(redis_url, s3_endpoint_url=worker_env["LABELQ_S3_ENDPOINT_URL"],
                       models=[worker_env["LABELQ_MODELS"]], queue="nobody-serves-this") as client:
        job = client.enqueue(f"s3://{module_bucket}/api", job="stalls")
        with pytest.raises(JobStalled) as caught:
            client.wait(job, stall_timeout=2, timeout=60)
        assert caught.value.info.id == "stalls" and caught.value.info.total == 21


def test_wait_returns_on_the_workers_events_not_its_poll(worker_env: dict[str, str], s3_client: Any,
                                                         module_bucket: str, photo_bytes: list[bytes],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A real worker's last chunk and verification wake ``wait``: with a 30 s poll it returns within seconds,
    after a handful of reads of the job (one per event), not one per poll."""
    put_objects(s3_client, module_bucket, {f"events/p_{i}.jpg": data for i, data in enumerate(photo_bytes[:6])})
    with _client(worker_env, chunk_size=4) as client:
        book = client.services.book
        real_info, reads = book.info, []

        def counted(job_id: str) -> Any:  # each still a real read of Redis
            reads.append(time.monotonic())
            return real_info(job_id)

        monkeypatch.setattr(book, "info", counted)
        job = client.enqueue(f"s3://{module_bucket}/events", job="events-1")
        start = time.monotonic()
        info = client.wait(job, poll=30, timeout=120)
        took = time.monotonic() - start
    assert info.state == "done" and info.ok == 6
    # two chunks (3 + 3: one per slot), the listing's end, the verification: a few events, each one read
    assert len(reads) <= 8, len(reads)
    assert took < 25, took  # the first fallback poll would only come at 30 s
