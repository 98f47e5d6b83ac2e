"""The producer's chunk plan and ``Client.wait``'s events against a real Redis (broker, job state, records).

A producer killed mid-listing and resumed, even with other chunk settings, publishes exactly the chunks of
one uninterrupted listing (content ids, so nothing is labelled twice). ``wait`` wakes on the job's event, long
before its poll; and an event lost (the state written without one) costs no more than the poll interval."""

from __future__ import annotations

import base64
import json
import threading
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

import labelq
from labelq import keys
from labelq.config import Settings
from labelq.jobs import JobBook, chunk_id
from labelq.objects import ObjectRef
from labelq.producer import ChunkPlan, enqueue
from labelq.results.redis import RedisStore
from labelq.tasks import make_app

MODEL = "m"
N = 400


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    root.mkdir()
    for i in range(N):
        (root / f"p{i:04d}.jpg").write_bytes(b"x")
    return root


def queued(client: Any) -> dict[str, list[str]]:
    """chunk id → its URIs, of every message in the broker's queue (a chunk published twice appears once)."""
    out = {}
    for raw in client.lrange("labelq", 0, -1):
        msg = json.loads(raw)
        body = json.loads(base64.b64decode(msg["body"]))
        out[msg["headers"]["id"]] = [r[0] for r in body[0][1]]
    return out


def expected_chunks(job: str, folder: Path, plan: ChunkPlan) -> dict[str, list[str]]:
    uris = sorted(p.resolve().as_uri() for p in folder.iterdir())
    bounds = [0, *plan.cuts(len(uris))]
    parts = [uris[a:b] for a, b in pairwise(bounds)]
    return {chunk_id(job, [MODEL], part): part for part in parts}


def test_a_resumed_listing_publishes_the_chunks_of_one_uninterrupted_listing(
        redis_url: str, redis_client: Any, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(broker_url=redis_url, chunk_size=64, chunk_slots=2, local_root=folder.parent,
                        max_queued_chunks=0, models=[MODEL])
    app, book, store = make_app(settings), JobBook(redis_client), RedisStore(redis_client)
    plan = ChunkPlan(64, 2)
    want = expected_chunks("J", folder, plan)
    assert [len(u) for u in want.values()] == [32, 32, 32, 32, 64, 64, 64, 40, 40]  # ramp, full, balanced tail
    import labelq.producer as producer

    real, sent = producer.publish, []

    def dies_on_the_fourth(*args: Any, **kw: Any) -> None:  # the producer killed while publishing chunk 4
        if len(sent) == 3:
            raise SystemExit("killed")
        sent.append(args[5])
        real(*args, **kw)

    monkeypatch.setattr(producer, "publish", dies_on_the_fourth)
    with pytest.raises(SystemExit):
        enqueue(str(folder), settings, app=app, book=book, store=store, job="J")
    monkeypatch.setattr(producer, "publish", real)
    info = book.info("J")
    assert info is not None and (info.state, info.listed, info.chunks) == ("listing", 96, 3)
    # resumed with other chunk settings: the job keeps the plan it was listed with
    other = settings.model_copy(update={"chunk_size": 100, "chunk_slots": 0})
    result = enqueue(str(folder), other, app=app, book=book, store=store, job="J")
    assert (result.listed, result.enqueued, result.chunks, result.resumed_from) == (N, N - 96, 6, 96)
    assert queued(redis_client) == want  # the same cuts, the same ids: every object in exactly one chunk
    assert book.chunk_plan("J", "1/1") == plan.encode()
    app.close()


def test_a_new_job_without_slots_is_cut_in_fixed_chunks(redis_url: str, redis_client: Any, folder: Path) -> None:
    settings = Settings(broker_url=redis_url, chunk_size=64, chunk_slots=0, local_root=folder.parent,
                        max_queued_chunks=0, models=[MODEL])
    app = make_app(settings)
    enqueue(str(folder), settings, app=app, book=JobBook(redis_client), store=RedisStore(redis_client), job="F")
    got = queued(redis_client)
    assert got == expected_chunks("F", folder, ChunkPlan(64))
    assert sorted(len(u) for u in got.values()) == [16] + [64] * 6
    app.close()


# ---------------------------------------------------------------- Client.wait: events, and the poll behind them


def running_job(book: JobBook, job: str) -> None:
    """A job listed whole, with one chunk of two objects in flight (so it stays running)."""
    book.open(job, source="s3://b/p", models=[MODEL])
    refs = [ObjectRef("s3://b/p/a.jpg").to_json(), ObjectRef("s3://b/p/b.jpg").to_json()]
    book.register(job, "c1", refs, [MODEL], 300)
    assert book.finish_listing(job, 2, 1) == "running"


class CountedInfo:
    """Counts the waiter's reads of the job (``JobBook.info``), each still a real read of Redis."""

    def __init__(self, book: JobBook) -> None:
        self.reads = 0
        self._info = book.info

    def __call__(self, job_id: str) -> Any:
        self.reads += 1
        return self._info(job_id)


def later(seconds: float, step: Any) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(seconds), step()), daemon=True)
    thread.start()
    return thread


def test_wait_wakes_on_the_jobs_event_not_its_poll(redis_url: str, redis_client: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    with labelq.Client(redis_url, models=[MODEL]) as client:
        book = client.services.book
        running_job(book, "E")
        counted = CountedInfo(book)
        monkeypatch.setattr(book, "info", counted)
        # what a worker's verification does once the records are in: settle the job (it publishes the event)
        worker_book = JobBook(redis_client)
        thread = later(0.5, lambda: worker_book.settle("E", ok=2, error=0, expected=2, complete=True))
        start = time.monotonic()
        info = client.wait("E", poll=30, timeout=60)
        took = time.monotonic() - start
        thread.join()
    assert info.state == "done"
    assert took < 10, took  # the fallback poll would have taken 30 s
    assert counted.reads <= 3, counted.reads  # the status check, the first read, the read the event caused


def test_a_chunk_done_event_wakes_wait_for_progress(redis_url: str, redis_client: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    with labelq.Client(redis_url, models=[MODEL]) as client:
        book = client.services.book
        running_job(book, "P")
        worker_book = JobBook(redis_client)
        seen: list[str] = []

        def progress(info: Any) -> None:
            seen.append(info.state)
            if len(seen) == 1:
                later(0.3, lambda: worker_book.chunk_done("P", "c1"))  # the last chunk: verifying, an event
            elif info.state == "verifying":
                later(0.3, lambda: worker_book.settle("P", ok=2, error=0, expected=2, complete=True))

        monkeypatch.setattr(labelq.api, "VERIFY_AFTER_S", 60.0)  # the waiter must not verify it itself
        start = time.monotonic()
        info = client.wait("P", poll=30, timeout=60, progress=progress)
        assert time.monotonic() - start < 10
    assert info.state == "done" and seen == ["running", "verifying", "done"]


def test_a_lost_event_costs_one_poll_not_a_hang(redis_url: str, redis_client: Any) -> None:
    with labelq.Client(redis_url, models=[MODEL]) as client:
        running_job(client.services.book, "L")
        # the state written with no event (as by a Redis that lost the message, or an older worker)
        thread = later(0.3, lambda: redis_client.hset(keys.job("L"), mapping={"state": "done"}))
        start = time.monotonic()
        assert client.wait("L", poll=0.5, timeout=60).state == "done"
        assert time.monotonic() - start < 5
        thread.join()
        running_job(client.services.book, "L2")
        later(0.3, lambda: redis_client.hset(keys.job("L2"), mapping={"state": "done"}))
        start = time.monotonic()  # a long poll and no event: nothing wakes it before its deadline's last read
        assert client.wait("L2", poll=30, timeout=2).state == "done"
        assert time.monotonic() - start >= 1.9
