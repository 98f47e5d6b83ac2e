"""JobBook against a real Redis: per-chunk counting (each (uri, model) once), failures, dead letters,
the queue bound, the listing cursor, TTLs, round trips, and memory that does not grow with successes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from labelq import keys
from labelq.errors import UsageError
from labelq.jobs import JobBook, chunk_id
from labelq.records import Record

MODELS = ("org/vit", "timm/mobilenet")


def ok(uri: str, model: str = MODELS[0], label: str = "normal") -> Record:
    return Record(uri, "etag-" + uri[-4:], model, label, 0.75, [{"label": label, "score": 0.75}], worker="w@test")


def err(uri: str, model: str = MODELS[0], kind: str = "corrupt") -> Record:
    return Record(uri, "etag-" + uri[-4:], model, status="error", error_kind=kind, error=f"{kind}: {uri}",
                  worker="w@test")


def uris(n: int, prefix: str = "s3://bkt/img") -> list[str]:
    return [f"{prefix}{i:05d}.jpg" for i in range(n)]


def items(chunk: str, records: list[Record], models: tuple[str, ...] = MODELS) -> list[tuple[str, int, Record]]:
    """(chunk, position, record) as a worker makes them: object index x models + model index."""
    order = list(dict.fromkeys(r.uri for r in records))
    return [(chunk, order.index(r.uri) * len(models) + models.index(r.model), r) for r in records]


@pytest.fixture
def book(redis_client: Any) -> JobBook:
    return JobBook(redis_client)


def opened(book: JobBook, job: str = "J", models: tuple[str, ...] = MODELS[:1], total: int | None = None) -> str:
    book.open(job, source="s3://bkt/prefix", models=list(models))
    if total is not None:
        book.finish_listing(job, total, len(models))
    return job


def counts(book: JobBook, job: str) -> tuple[int, int, dict[str, int], str]:
    info = book.info(job)
    assert info is not None
    return info.ok, info.error, info.errors, info.state


# ---------------------------------------------------------------- counting once


def test_the_same_chunk_written_twice_counts_once_and_lists_only_failures(book: JobBook, redis_client: Any) -> None:
    job = opened(book, models=MODELS)
    good, bad = uris(8), uris(3, "s3://bkt/gone")
    batch = items("c1", [ok(u, m) for u in good for m in MODELS] + [err(u, m, "not_found") for u in bad for m in MODELS])
    first = book.record(job, batch)
    again = book.record(job, list(reversed(batch)))  # a redelivered chunk, in another order
    assert first == again == (16, 6)
    assert counts(book, job)[:3] == (16, 6, {"not_found": 6})
    failures = sorted((f.model, f.uri, f.kind, f.chunk) for f in book.failures(job))
    assert failures == sorted((m, u, "not_found", "c1") for u in bad for m in MODELS)
    assert all(f.message == f"not_found: {f.uri}" for f in book.failures(job))
    # successes are not stored one by one: the chunk's bits are 2 bits per item, gone once it is done
    assert redis_client.strlen(keys.job_chunk_bits(job, "c1")) == (22 * 2 + 7) // 8
    book.chunk_done(job, "c1")
    assert not redis_client.exists(keys.job_chunk_bits(job, "c1"))
    assert book.record(job, batch) == (16, 6)  # a late duplicate of a done chunk moves nothing


def test_two_concurrent_writers_of_one_chunk_count_each_item_once(redis_server: Any, redis_url: str) -> None:
    names = uris(400)
    batch = items("c", [ok(u) for u in names[:300]] + [err(u) for u in names[300:]], MODELS[:1])
    with redis_server.client() as setup:
        opened(JobBook(setup), total=400)

    def writer(seed: int) -> None:
        with redis_server.client() as client:
            mine = JobBook(client)
            order = batch[seed::2] + batch[1 - seed :: 2]
            for i in range(0, len(order), 25):
                mine.record("J", order[i : i + 25])

    threads = [threading.Thread(target=writer, args=(s,)) for s in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    with redis_server.client() as client:
        assert counts(JobBook(client), "J") == (300, 100, {"corrupt": 100}, "verifying")


def test_a_status_change_moves_counters_and_error_kinds(book: JobBook) -> None:
    job = opened(book)
    u = uris(2)
    book.record(job, [("c", 0, err(u[0], kind="storage_error")), ("c", 1, ok(u[1]))])
    assert counts(book, job)[:3] == (1, 1, {"storage_error": 1})
    book.record(job, [("c", 0, err(u[0], kind="corrupt"))])  # failed again, for another reason
    assert counts(book, job)[:3] == (1, 1, {"corrupt": 1})
    book.record(job, [("c", 0, ok(u[0])), ("c", 1, err(u[1], kind="not_found"))])  # redelivery: swapped
    assert counts(book, job)[:3] == (1, 1, {"not_found": 1})
    assert [(f.uri, f.kind) for f in book.failures(job)] == [(u[1], "not_found")]


# ---------------------------------------------------------------- finishing


def test_finish_listing_after_the_last_record_makes_the_job_verified(book: JobBook) -> None:
    job = opened(book)
    book.record(job, items("c", [ok(u) for u in uris(3)], MODELS[:1]))
    assert counts(book, job)[3] == "listing"  # a job never finishes while it is listed
    assert book.finish_listing(job, 3, 1) == "verifying"  # the counters say complete: the records decide
    assert book.settle(job, ok=3, error=0, expected=3, complete=True) == "done"
    assert job not in book.active()


def test_the_last_record_after_finish_listing_makes_the_job_verified(book: JobBook) -> None:
    job = opened(book)
    book.register(job, "c", [[u, None, "e"] for u in uris(3)], list(MODELS[:1]), 60)
    book.finish_listing(job, 3, 1)
    assert counts(book, job)[3] == "running"
    book.record(job, items("c", [ok(u) for u in uris(2)], MODELS[:1]))
    assert counts(book, job)[3] == "running"
    book.record(job, [("c", 2, err(uris(3)[2]))])
    assert counts(book, job)[3] == "verifying"
    book.settle(job, ok=2, error=1, expected=3, complete=True)
    info = book.info(job)
    assert info is not None and info.state == "done" and info.finished_at
    assert book.in_flight(job) == 0


def test_a_dead_lettered_chunk_finishes_the_job_as_failed_and_retry_takes_it_back(book: JobBook) -> None:
    job = opened(book, total=6)
    book.record(job, items("c1", [ok(u) for u in uris(3)], MODELS[:1]))
    book.chunk_done(job, "c1")
    later = uris(6)[3:]
    book.record(job, [("c2", 0, ok(later[0]))])  # one record written before the chunk failed for good
    refs = [[u, None, "e"] for u in later]
    assert book.park(job, "c2", {"chunk": "c2", "refs": refs, "models": list(MODELS[:1])}, 3) == 2
    info = book.info(job)
    assert info is not None
    assert (info.state, info.ok, info.dead, info.dead_chunks) == ("verifying", 4, 2, 1)
    assert book.settle(job, ok=4, error=0, expected=6, complete=True) == "failed"
    assert book.park(job, "c2", {"chunk": "c2", "refs": refs, "models": []}, 3) == 0  # parked once
    (doc,) = book.unpark(job)
    assert doc["refs"] == refs and doc["missing"] == 2
    info = book.info(job)
    assert info is not None and (info.state, info.dead, info.dead_chunks) == ("running", 0, 0)
    book.record(job, [("c2", 0, ok(later[0])), ("c2", 1, ok(later[1])), ("c2", 2, ok(later[2]))])
    book.chunk_done(job, "c2")
    assert counts(book, job) == (6, 0, {}, "verifying")


def test_open_resumes_the_same_job_and_refuses_another_source(book: JobBook) -> None:
    opened(book)
    again = book.open("J", source="s3://bkt/prefix", models=list(MODELS[:1]))
    assert again.id == "J"
    with pytest.raises(UsageError, match="exists with source"):
        book.open("J", source="s3://other/prefix", models=list(MODELS[:1]))
    with pytest.raises(UsageError, match="exists with source"):
        book.open("J", source="s3://bkt/prefix", models=list(MODELS))


# ---------------------------------------------------------------- producer side


def test_the_queue_bound_holds_across_producers_and_jobs(book: JobBook, redis_client: Any) -> None:
    opened(book, "A")
    opened(book, "B")
    got = [book.reserve("A" if i % 2 else "B", f"{'A' if i % 2 else 'B'}:{i}", 5) for i in range(8)]
    assert got == ["ok"] * 5 + ["full"] * 3
    assert redis_client.zcard(keys.CHUNKS) == 5
    assert book.reserve("B", "B:0", 5) == "waiting"  # a relisted chunk that still waits is not sent again
    assert book.started("B", "B:0") is False  # a worker took it: room for one more
    assert book.reserve("A", "A:9", 5) == "ok"
    book.chunk_done("A", "A:1")
    assert book.reserve("A", "A:1", 5) == "done"
    assert book.reserve("A", "A:10", 0) == "ok"  # 0: no bound


def test_the_cursor_moves_once_per_group(book: JobBook) -> None:
    job = opened(book)
    assert book.advance(job, cursor_was="", cursor="k0100", listed=100, enqueued=100, chunks=1)
    assert not book.advance(job, cursor_was="", cursor="k0100", listed=100, enqueued=100, chunks=1)
    assert book.advance(job, cursor_was="k0100", cursor="k0200", listed=200, enqueued=60, chunks=1)
    info = book.info(job)
    assert info is not None and (info.cursor, info.listed, info.enqueued, info.chunks) == ("k0200", 200, 160, 2)


def test_one_producer_holds_the_listing_lease(book: JobBook) -> None:
    assert book.lease("J", "p1", 5)
    assert not book.lease("J", "p2", 5)
    assert not book.renew("J", "p2", 5)
    assert book.renew("J", "p1", 5)
    book.release("J", "p2")  # not its lease: nothing happens
    assert not book.lease("J", "p2", 5)
    book.release("J", "p1")
    assert book.lease("J", "p2", 5)


def test_already_labelled_objects_count_once_per_group(book: JobBook) -> None:
    job = opened(book, total=5)
    found = [ok(u) for u in uris(3)] + [err("s3://bkt/bad.jpg", kind="corrupt")]
    book.count_skipped(job, found, 4)
    book.count_skipped(job, list(reversed(found)), 4)  # the group relisted after a producer restart
    info = book.info(job)
    assert info is not None and (info.ok, info.error, info.skipped, info.errors) == (3, 1, 4, {"corrupt": 1})
    book.record(job, [("c", 0, ok(uris(5)[4]))])
    assert counts(book, job)[3] == "verifying"


def test_forget_takes_failures_out_once(book: JobBook) -> None:
    job = opened(book, total=3)
    u = uris(3)
    book.record(job, [("c", 0, err(u[0], kind="storage_error")), ("c", 1, err(u[1], kind="corrupt")),
                      ("c", 2, ok(u[2]))])
    book.chunk_done(job, "c")
    assert book.settle(job, ok=1, error=2, expected=3, complete=True) == "done"
    gone = book.forget(job, [(MODELS[0], u[0]), (MODELS[0], u[2]), (MODELS[0], "s3://nope")])
    assert gone == [(MODELS[0], u[0])]
    assert book.forget(job, [(MODELS[0], u[0])]) == []  # a second retry finds nothing to take
    assert counts(book, job) == (1, 1, {"corrupt": 1}, "running")
    book.record(job, [("retry-c", 0, ok(u[0]))])
    assert counts(book, job) == (2, 1, {"corrupt": 1}, "verifying")


def test_chunk_ids_come_from_what_a_chunk_holds() -> None:
    a = chunk_id("J", ["m"], ["s3://b/1", "s3://b/2"])
    assert a == chunk_id("J", ["m"], ["s3://b/1", "s3://b/2"]) and a.startswith("J:")
    assert a != chunk_id("J", ["m"], ["s3://b/2", "s3://b/3"])
    assert a != chunk_id("J", ["m", "n"], ["s3://b/1", "s3://b/2"])
    assert a != chunk_id("K", ["m"], ["s3://b/1", "s3://b/2"])


# ---------------------------------------------------------------- TTLs and memory


def test_ttl_is_applied_to_every_key_a_job_writes(redis_client: Any) -> None:
    book = JobBook(redis_client, ttl=1000)
    job = opened(book)
    book.record(job, [("c", 0, err(uris(1)[0]))])
    for key in (keys.job(job), keys.job_failed(job), keys.job_errors(job), keys.job_chunk_bits(job, "c")):
        assert 0 < redis_client.ttl(key) <= 1000, key
    book.chunk_done(job, "c")
    assert 0 < redis_client.ttl(keys.job_chunks_done(job)) <= 1000


def test_no_ttl_keeps_keys(redis_client: Any) -> None:
    book = JobBook(redis_client, ttl=0)
    job = opened(book)
    book.record(job, [("c", 0, err(uris(1)[0]))])
    for key in (keys.job(job), keys.job_failed(job)):
        assert redis_client.ttl(key) == -1


def test_a_big_job_keeps_no_per_object_state(book: JobBook, redis_client: Any) -> None:
    """10,000 objects in 40 chunks: what stays is the job hash, the done-set and the failures."""
    names = uris(10_000)
    job = opened(book, total=len(names))
    for n in range(0, len(names), 250):
        cid = chunk_id(job, MODELS[:1], names[n : n + 250])
        book.record(job, items(cid, [ok(u) if i % 500 else err(u) for i, u in enumerate(names[n : n + 250], n)],
                               MODELS[:1]))
        book.chunk_done(job, cid)
    assert counts(book, job) == (9980, 20, {"corrupt": 20}, "verifying")
    left = {k.decode() for k in redis_client.scan_iter(f"labelq:job:{job}*")}
    assert left == {keys.job(job), keys.job_errors(job), keys.job_failed(job), keys.job_chunks_done(job)}
    assert redis_client.hlen(keys.job_failed(job)) == 20
    assert redis_client.scard(keys.job_chunks_done(job)) == 40


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


def test_one_batch_write_is_one_evalsha(redis_server: Any, redis_url: str, monitor: list[dict[str, Any]]) -> None:
    with redis_server.client() as client:
        book = JobBook(client)
        job = opened(book, models=MODELS)
        book.record(job, [("w", 0, ok("s3://bkt/warm.jpg"))])  # loads the script once (NOSCRIPT → load)
        batch = items("c", [ok(u, m) for u in uris(32) for m in MODELS] + [err("s3://bkt/bad.jpg", m) for m in MODELS])
        client.echo("batch-begin")
        book.record(job, batch)
        client.echo("batch-end")
        wait_for_monitor(monitor, "ECHO batch-end")
    during = _between(monitor, "batch-begin", "batch-end")
    from_clients = [c["command"].split()[0].upper() for c in during if c.get("client_type") != "lua"]
    assert from_clients == ["EVALSHA"], from_clients
    in_script = [c["command"].split()[0].upper() for c in during if c.get("client_type") == "lua"]
    assert in_script.count("BITFIELD") >= len(batch)  # the script itself did the work, one bit pair per item


def wait_for_monitor(seen: list[dict[str, Any]], command: str, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not any(c["command"] == command for c in seen):
        assert time.monotonic() < deadline, f"MONITOR never saw {command}"
        time.sleep(0.02)


def test_a_flushed_script_cache_is_survived(book: JobBook, redis_client: Any) -> None:
    """A restarted Redis forgets loaded scripts (they are not in the AOF): the next write reloads."""
    job = opened(book)
    book.record(job, [("c", 0, ok(uris(1)[0]))])
    redis_client.script_flush()
    assert book.record(job, items("d", [ok(u) for u in uris(3)], MODELS[:1])) == (4, 0)


def test_a_chunk_published_twice_is_labelled_once(book: JobBook, redis_client: Any) -> None:
    """A producer killed between publish and bookkeeping republishes one chunk on resume: the worker that
    finished the first copy is told to skip the second; the chunk leaves the waiting set either way."""
    job = opened(book)
    assert book.reserve(job, f"{job}:7", 0) == "ok"
    assert redis_client.zscore(keys.CHUNKS, f"{job}:7") is not None
    assert book.started(job, f"{job}:7") is False  # first copy: label it
    assert redis_client.zscore(keys.CHUNKS, f"{job}:7") is None
    assert book.started(job, f"{job}:7") is False  # a redelivery before it finished: label it again
    book.chunk_done(job, f"{job}:7")
    assert book.started(job, f"{job}:7") is True  # a duplicate after it finished: skip
    assert book.started(job, f"{job}:8") is False


def test_waiting_entries_whose_messages_the_broker_lost_stop_counting_against_the_bound(
        book: JobBook, redis_client: Any, redis_url: str, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A purged queue (or a broker that lost its data) must not hold the bound full for ever."""
    from labelq import producer
    from labelq.config import Settings
    from labelq.objects import ObjectRef
    from labelq.producer import QueueFull, _reserve, publish, queued_messages
    from labelq.tasks import make_app

    monkeypatch.setattr(producer, "PUBLISHED_AFTER_S", 0.3)
    settings = Settings(broker_url=redis_url, max_queued_chunks=4, queue="labelq-bound-test")
    app = make_app(settings)
    opened(book, "A")
    assert queued_messages(app, settings.queue) == 0  # no such queue yet: nothing waits
    for i in range(4):
        assert _reserve(book, "A", f"A:{i}", settings, "token", False, app=app) == "ok"
        publish(app, settings, "A", [ObjectRef(f"s3://bkt/{i}.jpg")], list(MODELS[:1]), f"A:{i}")
    assert queued_messages(app, settings.queue) == 4
    time.sleep(0.4)
    with pytest.raises(QueueFull):  # the broker holds all four: the bound is real, nothing is forgotten
        _reserve(book, "A", "A:4", settings, "token", False, app=app)
    assert redis_client.zcard(keys.CHUNKS) == 4

    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(settings.queue)  # an operator purges the queue
    with caplog.at_level("WARNING", logger="labelq.producer"):
        assert _reserve(book, "A", "A:4", settings, "token", False, app=app) == "ok"
    assert "4 chunks counted as waiting were not in the broker's queue" in caplog.text
    assert redis_client.zrange(keys.CHUNKS, 0, -1) == [b"A:4"]


def test_a_chunk_reserved_but_not_yet_published_by_another_producer_still_counts(
        book: JobBook, redis_client: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two producers race for the bound: B finds the queue full while A has reserved its place but
    not yet published. The broker holds one message fewer than the count; B must not take A's place."""
    from labelq import producer
    from labelq.config import Settings
    from labelq.objects import ObjectRef
    from labelq.producer import QueueFull, _reserve, publish, queued_messages
    from labelq.tasks import make_app

    monkeypatch.setattr(producer, "PUBLISHED_AFTER_S", 0.3)
    settings = Settings(broker_url=redis_url, max_queued_chunks=3, queue="labelq-race-test")
    app = make_app(settings)
    opened(book, "A")
    for i in range(2):
        assert _reserve(book, "A", f"A:{i}", settings, "token", False, app=app) == "ok"
        publish(app, settings, "A", [ObjectRef(f"s3://bkt/{i}.jpg")], list(MODELS[:1]), f"A:{i}")
    time.sleep(0.4)  # the published ones are old enough to be compared with the broker's queue
    assert _reserve(book, "A", "A:2", settings, "token", False, app=app) == "ok"  # A's publish is in flight
    assert queued_messages(app, settings.queue) == 2
    with pytest.raises(QueueFull):
        _reserve(book, "B", "B:0", settings, "token", False, app=app)
    assert redis_client.zcard(keys.CHUNKS) == 3
