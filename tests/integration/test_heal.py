"""The heal against a real Redis (broker, job state and records): verification from the records, and
republishing exactly the chunks the broker lost (labelq/heal.py). No worker: the test plays its part."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from labelq import keys
from labelq.config import Settings
from labelq.heal import heal_round, verify
from labelq.jobs import JobBook
from labelq.objects import ObjectRef
from labelq.producer import publish
from labelq.records import Record
from labelq.results.redis import RedisStore
from labelq.sources import parse_source
from labelq.tasks import make_app

MODEL = "m"


@pytest.fixture
def world(redis_url: str, redis_client: Any, tmp_path: Path) -> Any:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(6):
        (folder / f"p{i}.jpg").write_bytes(b"x" * (i + 1))
    settings = Settings(broker_url=redis_url, chunk_size=2, chunk_deadline=3, heal_interval=1, local_root=tmp_path)
    app = make_app(settings)

    class World:
        pass

    w = World()
    w.settings, w.app, w.book, w.store = settings, app, JobBook(redis_client), RedisStore(redis_client)
    w.source = str(parse_source(str(folder)))
    w.uris = sorted((folder / f"p{i}.jpg").resolve().as_uri() for i in range(6))
    w.client = redis_client
    yield w
    app.close()


def record(uri: str, job: str) -> Record:
    return Record(uri, "e", MODEL, "normal", 0.9, [{"label": "normal", "score": 0.9}], job=job)


def queued_ids(client: Any) -> list[str]:
    return [json.loads(raw)["headers"]["id"] for raw in client.lrange("labelq", 0, -1)]


def test_verify_publishes_what_the_records_lack_and_only_the_records_make_a_job_done(world: Any) -> None:
    book, job = world.book, "V"
    book.open(job, source=world.source, models=[MODEL])
    assert book.finish_listing(job, 6, 1) == "verifying"  # nothing in flight: the records decide
    world.store.write([record(u, job) for u in world.uris[:4]])
    first = verify(job, world.settings, app=world.app, book=book, store=world.store)
    assert (first.listed, first.ok, first.missing, first.chunks, first.state) == (6, 4, 2, 1, "running")
    (cid,) = queued_ids(world.client)
    payload = book.payload(job, cid)
    assert payload is not None and sorted(r[0] for r in payload["refs"]) == world.uris[4:]
    again = verify(job, world.settings, app=world.app, book=book, store=world.store)
    assert (again.missing, again.waiting) == (0, 2)  # in flight: not published twice
    assert len(queued_ids(world.client)) == 1
    world.store.write([record(u, job) for u in world.uris[4:]])
    book.chunk_done(job, cid)
    assert book.info(job).state == "verifying"  # type: ignore[union-attr]
    report = heal_round(world.settings, app=world.app, book=book, store=world.store)
    assert [v.state for v in report.verified] == ["done"]
    info = book.info(job)
    assert info is not None and (info.state, info.ok, info.error, info.total) == ("done", 6, 0, 6)
    assert job not in book.active()


def test_a_round_republishes_the_chunk_the_broker_lost_and_not_the_one_it_holds(world: Any) -> None:
    book, job = world.book, "R"
    book.open(job, source=world.source, models=[MODEL])
    refs = [ObjectRef(u, 1, "e") for u in world.uris]
    for name, part in (("R:a", refs[:2]), ("R:b", refs[2:4])):
        book.register(job, name, [r.to_json() for r in part], [MODEL], -1.0)  # past its deadline already
        publish(world.app, world.settings, job, part, [MODEL], name)
    book.finish_listing(job, 4, 1)
    lost = next(raw for raw in world.client.lrange("labelq", 0, -1) if json.loads(raw)["headers"]["id"] == "R:a")
    world.client.lrem("labelq", 1, lost)  # what a purge, or a BRPOP whose unacked write failed, leaves
    report = heal_round(world.settings, app=world.app, book=book, store=world.store)
    assert report.republished == {job: 1}
    assert sorted(queued_ids(world.client)) == ["R:a", "R:b"]
    info = book.info(job)
    assert info is not None and info.republished == 1
    assert book.overdue(job) == []  # both have a deadline again: nothing is published twice
    assert heal_round(world.settings, app=world.app, book=book, store=world.store).republished == {}
    assert world.client.zscore(keys.job_inflight(job), "R:b") is not None
