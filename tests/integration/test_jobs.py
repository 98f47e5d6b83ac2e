"""JobBook against a real Redis: each (uri, model) counted once, state, TTLs, paging, round trips."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from labelq import keys
from labelq.errors import UsageError
from labelq.jobs import JobBook, parse_body
from labelq.records import Record

MODELS = ("org/vit", "timm/mobilenet")


def ok(uri: str, model: str = MODELS[0], label: str = "normal") -> Record:
    return Record(uri, "etag-" + uri[-4:], model, label, 0.75, [{"label": label, "score": 0.75}], worker="w@test")


def err(uri: str, model: str = MODELS[0], kind: str = "corrupt") -> Record:
    return Record(uri, "etag-" + uri[-4:], model, status="error", error_kind=kind, error=f"{kind}: {uri}",
                  worker="w@test")


def uris(n: int, prefix: str = "s3://bkt/img") -> list[str]:
    return [f"{prefix}{i:05d}.jpg" for i in range(n)]


@pytest.fixture
def book(redis_client: Any) -> JobBook:
    return JobBook(redis_client)


def opened(book: JobBook, job: str = "J", models: tuple[str, ...] = MODELS[:1]) -> str:
    book.open(job, source="s3://bkt/prefix", models=list(models))
    return job


# ---------------------------------------------------------------- counting once


def test_the_same_records_written_twice_count_once(book: JobBook, redis_client: Any) -> None:
    job = opened(book, models=MODELS)
    batch = [ok(u, m) for u in uris(8) for m in MODELS] + [err(u, m, "not_found") for u in uris(3, "s3://bkt/gone") for m in MODELS]
    first = book.record(job, batch, bodies=True)
    again = book.record(job, list(reversed(batch)), bodies=True)  # a redelivered chunk, in another order
    assert first == again == (16, 6)
    info = book.info(job)
    assert info is not None
    assert (info.ok, info.error, info.errors) == (16, 6, {"not_found": 6})
    assert redis_client.hlen(keys.job_items(job)) == 22
    for model in MODELS:  # bodies: one per uri per model, rewritten, not added
        assert redis_client.hlen(keys.records(model)) == 11
        stored = parse_body(redis_client.hget(keys.records(model), uris(1)[0]))
        assert (stored.uri, stored.model, stored.status, stored.label) == (uris(1)[0], model, "ok", "normal")


def test_two_concurrent_writers_count_each_item_once(redis_server: Any, redis_url: str) -> None:
    items = [(u, m) for u in uris(600) for m in MODELS]
    records = [ok(u, m) if i % 7 else err(u, m, "corrupt") for i, (u, m) in enumerate(items)]
    JobBook(redis_server.client()).open("J", source="s3://bkt/prefix", models=list(MODELS))
    start = threading.Barrier(2)
    failures: list[Exception] = []

    def writer(seed: int) -> None:
        mine = list(records)
        random.Random(seed).shuffle(mine)  # both write every record, in different orders, interleaved
        try:
            with redis_server.client() as client:
                own = JobBook(client)
                start.wait()
                for i in range(0, len(mine), 25):
                    own.record("J", mine[i : i + 25], bodies=True)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures
    n_err = sum(1 for r in records if not r.ok)
    with redis_server.client() as client:
        info = JobBook(client).info("J")
        assert info is not None
        assert (info.ok, info.error) == (len(records) - n_err, n_err)
        assert info.errors == {"corrupt": n_err}
        assert client.hlen(keys.job_items("J")) == len(records)


def test_a_status_change_moves_counters_and_error_kinds(book: JobBook) -> None:
    job = opened(book)
    a, b, c = uris(3)
    book.record(job, [err(a, kind="storage_error"), err(b, kind="corrupt"), ok(c)])
    assert _counts(book, job) == (1, 2, {"storage_error": 1, "corrupt": 1})

    book.record(job, [ok(a)])  # a retried storage error now labelled
    assert _counts(book, job) == (2, 1, {"corrupt": 1})

    book.record(job, [err(b, kind="not_found")])  # still an error, of another kind
    assert _counts(book, job) == (2, 1, {"not_found": 1})

    book.record(job, [err(c, kind="model_error")])  # ok → error
    assert _counts(book, job) == (1, 2, {"not_found": 1, "model_error": 1})


def _counts(book: JobBook, job: str) -> tuple[int, int, dict[str, int]]:
    info = book.info(job)
    assert info is not None
    return info.ok, info.error, info.errors


# ---------------------------------------------------------------- state


def test_finish_listing_after_the_last_record_makes_the_job_done(book: JobBook) -> None:
    job = opened(book, models=MODELS)
    names = uris(5)
    book.record(job, [ok(u, m) for u in names for m in MODELS])
    info = book.info(job)
    assert info is not None and info.state == "listing" and not info.done  # no total yet: never done early
    assert book.finish_listing(job, total=5, n_models=2) == "done"
    info = book.info(job)
    assert info is not None
    assert (info.state, info.total, info.expected, info.processed) == ("done", 5, 10, 10)
    assert info.finished_at


def test_the_last_record_after_finish_listing_makes_the_job_done(book: JobBook) -> None:
    job = opened(book, models=MODELS)
    names = uris(4)
    book.record(job, [ok(u, m) for u in names[:3] for m in MODELS])
    assert book.finish_listing(job, total=4, n_models=2) == "running"
    book.record(job, [ok(names[3], MODELS[0])])
    info = book.info(job)
    assert info is not None and info.state == "running" and info.finished_at is None  # 7 of 8
    book.record(job, [ok(names[3], MODELS[0])])  # a duplicate does not finish it either
    assert book.info(job).state == "running"  # type: ignore[union-attr]
    book.record(job, [err(names[3], MODELS[1], "corrupt")])
    info = book.info(job)
    assert info is not None
    assert (info.state, info.ok, info.error) == ("done", 7, 1)
    assert info.finished_at


def test_open_resumes_the_same_job_and_refuses_another_source(book: JobBook) -> None:
    first = book.open("J", source="s3://bkt/a", models=["m"])
    book.enqueued("J", listed=64, refs=64, chunk_id="J:0")
    again = book.open("J", source="s3://bkt/a", models=["m"])
    assert first.created_at == again.created_at
    assert (again.listed, again.enqueued, again.chunks) == (64, 64, 1)
    with pytest.raises(UsageError, match="exists with source"):
        book.open("J", source="s3://bkt/b", models=["m"])
    with pytest.raises(UsageError):
        book.open("J", source="s3://bkt/a", models=["m", "other"])


# ---------------------------------------------------------------- TTL


def test_ttl_is_applied_to_every_key_a_job_writes(redis_client: Any) -> None:
    book = JobBook(redis_client, ttl=120)
    job = opened(book)
    book.record(job, [ok(u) for u in uris(3)] + [err(uris(4)[3], kind="corrupt")], bodies=True)
    book.finish_listing(job, total=4, n_models=1)
    for key in (keys.job(job), keys.job_items(job), keys.job_errors(job), keys.records(MODELS[0])):
        ttl = redis_client.ttl(key)
        assert 0 < ttl <= 120, (key, ttl)


def test_no_ttl_keeps_keys(redis_client: Any) -> None:
    book = JobBook(redis_client, ttl=0)
    job = opened(book)
    book.record(job, [ok(u) for u in uris(2)], bodies=True)
    for key in (keys.job(job), keys.job_items(job), keys.records(MODELS[0])):
        assert redis_client.ttl(key) == -1, key


# ---------------------------------------------------------------- paging


def test_items_pages_through_a_big_job_with_hscan(book: JobBook, redis_client: Any) -> None:
    job = opened(book, models=MODELS)
    names = uris(2500)
    recs = [ok(u, MODELS[0]) for u in names] + [err(u, MODELS[1], "corrupt") for u in names]
    for i in range(0, len(recs), 500):
        book.record(job, recs[i : i + 500])
    pages = book.items(job, count=200)
    first = next(pages)
    assert 0 < len(first) < len(recs)  # a page at a time, not the whole hash
    rest = list(pages)
    seen = [item for page in [first, *rest] for item in page]
    assert len(rest) >= 5
    assert max(len(p) for p in [first, *rest]) <= 1000
    assert len(seen) == len(set(seen)) == 5000
    assert set(seen) == {(MODELS[0], u, "o") for u in names} | {(MODELS[1], u, "e:corrupt") for u in names}


# ---------------------------------------------------------------- round trips


@pytest.fixture
def monitor(redis_server: Any, redis_url: str) -> Iterator[list[dict[str, Any]]]:
    """Every command the server runs while the test body runs (MONITOR, in a thread)."""
    seen: list[dict[str, Any]] = []
    client = redis_server.client()
    ready = threading.Event()

    def watch() -> None:
        with client.monitor() as m:
            ready.set()
            for cmd in m.listen():
                seen.append(cmd)
                if cmd["command"] == "ECHO monitor-stop":
                    return

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    ready.wait(5)
    time.sleep(0.2)
    try:
        yield seen
    finally:
        with redis_server.client() as stopper:
            stopper.echo("monitor-stop")
        thread.join(10)
        client.close()


def _between(seen: list[dict[str, Any]], begin: str, end: str) -> list[dict[str, Any]]:
    text = [c["command"] for c in seen]
    return seen[text.index(f"ECHO {begin}") + 1 : text.index(f"ECHO {end}")]


@pytest.mark.parametrize("bodies", [True, False])
def test_one_batch_write_is_one_evalsha(bodies: bool, redis_server: Any, redis_url: str,
                                        monitor: list[dict[str, Any]]) -> None:
    with redis_server.client() as client:
        book = JobBook(client)
        job = opened(book, models=MODELS)
        book.record(job, [ok("s3://bkt/warm.jpg")], bodies=bodies)  # loads the script once (NOSCRIPT → load)
        batch = [ok(u, m) for u in uris(32) for m in MODELS] + [err("s3://bkt/bad.jpg", m) for m in MODELS]
        client.echo("batch-begin")
        book.record(job, batch, bodies=bodies)
        client.echo("batch-end")
        wait_for_monitor(monitor, "ECHO batch-end")
    during = _between(monitor, "batch-begin", "batch-end")
    from_clients = [c["command"].split()[0].upper() for c in during if c.get("client_type") != "lua"]
    assert from_clients == ["EVALSHA"], from_clients
    in_script = [c["command"].split()[0].upper() for c in during if c.get("client_type") == "lua"]
    # the script itself did the work: one HSET per item (+ one per body)
    assert in_script.count("HSET") >= len(batch) * (2 if bodies else 1)


def wait_for_monitor(seen: list[dict[str, Any]], command: str, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not any(c["command"] == command for c in seen):
        assert time.monotonic() < deadline, f"MONITOR never saw {command}"
        time.sleep(0.02)


def test_a_flushed_script_cache_is_survived(book: JobBook, redis_client: Any) -> None:
    """A restarted Redis forgets loaded scripts (they are not in the AOF): the next write reloads."""
    job = opened(book)
    book.record(job, [ok(uris(1)[0])])
    redis_client.script_flush()
    assert book.record(job, [ok(u) for u in uris(3)]) == (3, 0)


def test_a_chunk_published_twice_is_labelled_once(book: JobBook, redis_client: Any) -> None:
    """A producer killed between publish and bookkeeping republishes one chunk on resume: the worker that
    finished the first copy is told to skip the second; the chunk leaves the waiting set either way."""
    job = opened(book)
    book.waiting(f"{job}:7")
    assert redis_client.zscore(keys.CHUNKS, f"{job}:7") is not None
    assert book.started(job, f"{job}:7") is False  # first copy: label it
    assert redis_client.zscore(keys.CHUNKS, f"{job}:7") is None
    assert book.started(job, f"{job}:7") is False  # a redelivery before it finished: label it again
    book.chunk_done(job, f"{job}:7")
    assert book.started(job, f"{job}:7") is True  # a duplicate after it finished: skip
    assert book.started(job, f"{job}:8") is False
