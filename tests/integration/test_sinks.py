"""Durable sinks on real components: Parquet in a folder and on S3 (moto over HTTP), PostgreSQL batched
writes, and the per-job / global views every store keeps (Redis, SQLite, PostgreSQL, Parquet)."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from labelq import keys
from labelq.objects import ObjectRef
from labelq.records import FIELDS, Record, read_records, write_records
from labelq.results import (
    TABLE,
    ParquetStore,
    RedisStore,
    SQLStore,
    older_revisions,
    open_store,
    settled,
    skip_done,
)
from labelq.results.parquet import LocalFiles
from labelq.results.sql import PG_METHODS

M = "org/model-a"  # a hub id: one URL-quoted partition segment


def rec(uri: str, *, job: str | None = "j1", model: str = M, etag: str | None = "e1", label: str = "cat",
        rev: str | None = "r1", at: str = "2025-01-01T00:00:00.000Z", score: float = 0.75) -> Record:
    return Record(uri, etag, model, label, score, [{"label": label, "score": score}], job=job, worker="w1",
                  processed_at=at, model_revision=rev)


def err(uri: str, kind: str = "corrupt", *, job: str = "j1", message: str = "bad") -> Record:
    return Record(uri, "e1", M, status="error", error_kind=kind, error=message, job=job, worker="w1",
                  processed_at="2025-01-01T00:00:00.000Z", model_revision="r1")


def by_key(records: Iterator[Record] | list[Record]) -> list[Record]:
    return sorted(records, key=lambda r: (r.model, r.uri))


# ---------------------------------------------------------------- every store


@pytest.fixture(params=["redis", "sqlite", "postgresql", "parquet", "parquet-s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """An empty record store of each kind, on real servers."""
    kind = request.param
    if kind == "redis":
        made: Any = RedisStore(request.getfixturevalue("redis_client"), ttl=3600)
    elif kind == "sqlite":
        made = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    elif kind == "postgresql":
        import sqlalchemy as sa

        made = open_store(request.getfixturevalue("postgres_url"))
        with made.engine.begin() as conn:
            conn.execute(sa.text(f"DELETE FROM {TABLE}"))
    elif kind == "parquet":
        made = open_store(f"parquet://{tmp_path / 'ds'}")
    else:
        bucket = request.getfixturevalue("s3_bucket")
        made = open_store(f"parquet+s3://{bucket}/labels/v1", s3_client=request.getfixturevalue("s3_client"))
    try:
        yield made
    finally:
        made.close()


def write(store: Any, records: list[Record], chunk: str) -> None:
    store.write(records, chunk=chunk)
    if isinstance(store, ParquetStore):
        store.refresh()  # a new producer's view: the index is read once per store


def test_a_jobs_records_stay_its_own_after_a_later_job_relabels(store: Any) -> None:
    first = [rec(f"s3://b/{i:02d}.jpg") for i in range(6)]
    write(store, first, "j1:0")
    write(store, first, "j1:0")  # a redelivered chunk
    later = [rec(f"s3://b/{i:02d}.jpg", job="j2", label="dog", rev="r2", at="2025-02-01T00:00:00.000Z")
             for i in range(3)]
    write(store, later, "j2:0")

    assert by_key(store.iter_records("j1")) == first
    assert by_key(store.iter_records("j2")) == later
    assert (store.count("j1"), store.count("j2")) == (6, 3)
    # The skip view: the newest record of each object, whichever job wrote it.
    got = store.get_many(M, [f"s3://b/{i:02d}.jpg" for i in range(8)])
    assert got == {**{r.uri: r for r in first}, **{r.uri: r for r in later}}
    assert store.get_many("other/model", ["s3://b/00.jpg"]) == {}
    assert store.get_many(M, []) == {}


def test_skip_on_rerun_is_per_model_revision(store: Any) -> None:
    write(store, [rec("s3://b/a.jpg", rev="r1"), rec("s3://b/b.jpg", rev=None), err("s3://b/c.jpg")], "j1:0")
    refs = [ObjectRef(f"s3://b/{n}.jpg", 1, "e1") for n in "abcd"]

    assert settled(store, refs, [M])[0] == {"s3://b/a.jpg", "s3://b/b.jpg", "s3://b/c.jpg"}  # revision not asked
    assert settled(store, refs, [M], {M: "r1"})[0] == {"s3://b/a.jpg", "s3://b/b.jpg", "s3://b/c.jpg"}
    # An updated model relabels what the old revision made (b has no revision recorded: nothing to compare).
    assert settled(store, refs, [M], {M: "r2"})[0] == {"s3://b/b.jpg"}
    assert [r.uri for r in skip_done(refs, store, [M], revisions={M: "r2"})] == ["s3://b/a.jpg", "s3://b/c.jpg",
                                                                                 "s3://b/d.jpg"]
    # Once the new revision labelled it, a rerun with that revision skips it again.
    write(store, [rec("s3://b/a.jpg", job="j2", rev="r2", at="2025-03-01T00:00:00.000Z")], "j2:0")
    assert "s3://b/a.jpg" in settled(store, refs, [M], {M: "r2"})[0]
    assert "s3://b/a.jpg" not in settled(store, refs, [M], {M: "r1"})[0]


def test_revisions_count_what_older_revisions_made(store: Any) -> None:
    write(store, [rec(f"s3://b/{i}.jpg", rev="r1") for i in range(3)] + [rec("s3://b/9.jpg", rev=None)], "j1:0")
    write(store, [rec(f"s3://b/{i}.jpg", rev="r2", model="m2") for i in range(2)], "j1:1")
    counts = store.revisions("j1")
    assert counts == {M: {"r1": 3, None: 1}, "m2": {"r2": 2}}
    assert older_revisions(counts, {M: "r2", "m2": "r2"}) == {M: 3, "m2": 0}
    assert older_revisions(counts, {M: None}) == {}  # current revision unknown: nothing to say
    assert store.revisions("no-such-job") == {}
    assert store.count("no-such-job") == 0
    assert list(store.iter_records("no-such-job")) == []


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_export_of_a_job_round_trips_in_every_format(store: Any, tmp_path: Path, fmt: str) -> None:
    records = [
        rec("file:///data/a%20b.jpg"),
        rec("s3://bucket/k/é.jpg", etag=None, rev=None, score=0.123456789012345),
        err("s3://bucket/bad.jpg", message='JPEG data is damaged: "cut", at 40%\nsecond line\ttab \\ back'),
        err("s3://bucket/none.jpg", "not_found", message="s3://bucket/none.jpg: NoSuchKey"),
    ]
    write(store, records, "j1:0")
    out = tmp_path / f"j1.{fmt}"
    assert write_records(store.iter_records("j1"), fmt, out) == 4
    assert by_key(read_records(out)) == by_key(records)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        assert tuple(pq.read_schema(out).names) == FIELDS
        assert FIELDS[2:4] == ("model", "model_revision")


# ---------------------------------------------------------------- Parquet


def parquet_keys(store: ParquetStore) -> list[str]:
    return [k for d in store.files.subdirs("") for m in store.files.subdirs(d) for k in store.files.ls(m)]


@pytest.fixture(params=["local", "s3"])
def parquet(request: pytest.FixtureRequest, tmp_path: Path) -> ParquetStore:
    if request.param == "local":
        return ParquetStore.from_url(f"parquet://{tmp_path / 'ds'}")
    return ParquetStore.from_url(f"parquet+s3://{request.getfixturevalue('s3_bucket')}/p",
                                 s3_client=request.getfixturevalue("s3_client"))


def test_parquet_redelivered_chunk_overwrites_its_own_file(parquet: ParquetStore) -> None:
    chunk = [rec(f"s3://b/{i}.jpg", job="job/1") for i in range(5)] + [rec("s3://b/0.jpg", job="job/1", model="m2")]
    parquet.write(chunk, chunk="job/1:7")
    keys_first = parquet_keys(parquet)
    assert keys_first == ["job=job%2F1/model=m2/part-job%2F1%3A7.parquet",
                          "job=job%2F1/model=org%2Fmodel-a/part-job%2F1%3A7.parquet"]
    # Redelivered: processed again (new labels and times), written to the same keys; no duplicates.
    again = [rec(r.uri, job="job/1", model=r.model, label="dog", at="2025-01-02T00:00:00.000Z") for r in chunk]
    parquet.write(again, chunk="job/1:7")
    assert parquet_keys(parquet) == keys_first
    assert by_key(parquet.iter_records("job/1")) == by_key(again)
    assert parquet.count("job/1") == 6
    if isinstance(parquet.files, LocalFiles):
        leftovers = [p for p in parquet.files.root.rglob("*") if p.name.startswith(".")]
        assert leftovers == []  # the temp file was renamed over the part

    parquet.write([rec("s3://b/x.jpg", job="job/1")])  # no chunk id: a part of its own
    parquet.write([rec("s3://b/y.jpg", job="job/1")])
    assert len(parquet_keys(parquet)) == 4
    assert parquet.count("job/1") == 8


def test_parquet_a_retried_object_in_another_chunk_is_exported_once(parquet: ParquetStore) -> None:
    parquet.write([err("s3://b/1.jpg", "storage_error"), rec("s3://b/2.jpg")], chunk="j1:0")
    parquet.write([rec("s3://b/1.jpg", at="2025-05-05T00:00:00.000Z")], chunk="j1:retry-0")  # `labelq retry`
    got = by_key(parquet.iter_records("j1"))
    assert [(r.uri, r.status) for r in got] == [("s3://b/1.jpg", "ok"), ("s3://b/2.jpg", "ok")]
    assert parquet.count("j1") == 2
    assert parquet.revisions("j1") == {M: {"r1": 2}}


def test_parquet_skip_reads_only_the_files_whose_uri_range_overlaps(parquet: ParquetStore,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    for c in range(20):  # 20 chunks of a sorted listing: disjoint uri ranges
        parquet.write([rec(f"s3://b/{c:02d}-{i:03d}.jpg") for i in range(50)], chunk=f"j1:{c}")
    parquet.get_many(M, ["s3://b/00-000.jpg"])  # builds the index (reads every footer once)
    reads: list[str] = []
    real_get = parquet.files.get

    def counting_get(key: str) -> bytes:
        reads.append(key)
        return real_get(key)

    monkeypatch.setattr(parquet.files, "get", counting_get)
    wanted = [f"s3://b/07-{i:03d}.jpg" for i in range(0, 50, 5)] + ["s3://b/07-999.jpg"]
    got = parquet.get_many(M, wanted)
    assert sorted(got) == wanted[:-1]
    assert reads == ["job=j1/model=org%2Fmodel-a/part-j1%3A7.parquet"]


def test_parquet_skip_sees_an_earlier_jobs_dataset_with_a_new_store(parquet: ParquetStore) -> None:
    parquet.write([rec(f"s3://b/{i}.jpg", job="nightly-1") for i in range(4)], chunk="nightly-1:0")
    parquet.write([rec("s3://b/0.jpg", job="nightly-2", etag="e2", at="2025-06-01T00:00:00.000Z")], chunk="nightly-2:0")
    fresh = ParquetStore(parquet.files)  # a second job's producer
    refs = [ObjectRef(f"s3://b/{i}.jpg", 1, "e1") for i in range(5)]
    assert settled(fresh, refs, [M])[0] == {"s3://b/1.jpg", "s3://b/2.jpg", "s3://b/3.jpg"}  # 0 changed; 4 is new


def test_parquet_on_s3_is_one_put_per_file(s3_client: Any, s3_bucket: str) -> None:
    store = ParquetStore.from_url(f"parquet+s3://{s3_bucket}/ds", s3_client=s3_client)
    store.write([rec(f"s3://b/{i}.jpg") for i in range(1000)], chunk="j1:0")
    listed = s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert [o["Key"] for o in listed] == ["ds/job=j1/model=org%2Fmodel-a/part-j1%3A0.parquet"]
    head = s3_client.head_object(Bucket=s3_bucket, Key=listed[0]["Key"])
    assert "-" not in head["ETag"].strip('"')  # a multipart upload's ETag has a part count after a dash
    import pyarrow.parquet as pq

    body = s3_client.get_object(Bucket=s3_bucket, Key=listed[0]["Key"])["Body"].read()
    assert pq.read_metadata(io.BytesIO(body)).num_rows == 1000


def test_parquet_urls_are_checked(tmp_path: Path) -> None:
    from labelq.errors import UsageError

    with pytest.raises(UsageError, match="absolute folder"):
        open_store("parquet://relative/dir")
    with pytest.raises(UsageError, match="name a bucket"):
        open_store("parquet+s3:///prefix")
    assert isinstance(open_store(f"parquet://{tmp_path}/new/dir"), ParquetStore)
    assert (tmp_path / "new" / "dir").is_dir()


@pytest.mark.parametrize("scheme", ["parquet", "delta"])
def test_local_store_folders_are_checked_alike(tmp_path: Path, scheme: str) -> None:
    """Both local stores take their folder from one parser: absolute, created, one line when it cannot be."""
    from labelq.errors import UsageError
    from labelq.results.parquet import local_root

    with pytest.raises(UsageError, match=f"use an absolute folder, as in {scheme}:///data/labels"):
        open_store(f"{scheme}://relative/dir")
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(UsageError, match="cannot create") as info:
        open_store(f"{scheme}://{tmp_path}/a-file/under")
    assert "\n" not in str(info.value) and str(tmp_path / "a-file" / "under") in str(info.value)
    assert local_root(f"{scheme}://{tmp_path}/made/here") == tmp_path / "made" / "here"
    assert (tmp_path / "made" / "here").is_dir()


# ---------------------------------------------------------------- PostgreSQL batched writes


@pytest.fixture
def pg_store(postgres_url: str) -> Iterator[Callable[[str], SQLStore]]:
    import sqlalchemy as sa

    made: list[SQLStore] = []

    def make(method: str) -> SQLStore:
        store = SQLStore(postgres_url, pg_method=method)
        made.append(store)
        with store.engine.begin() as conn:
            conn.execute(sa.text(f"DELETE FROM {TABLE}"))
        return store

    yield make
    for store in made:
        store.close()


def awkward(i: int, job: str | None = "pg") -> Record:
    """Values COPY's text format must escape: tabs, newlines, backslashes, quotes, NULLs, non-ASCII, \\N."""
    if i % 4 == 3:
        return Record(f"s3://b/{i:05d}\t\\N.jpg", None, M, status="error", error_kind="corrupt",
                      error=f'line 1\nline 2\t"quoted" \\ back \\N {i}', job=job, worker=None,
                      processed_at="2025-01-01T00:00:00.000Z")
    return rec(f"s3://b/{i:05d}-é.jpg", job=job, label=f"lab\\el,{i}", score=i / 7, rev=None if i % 5 else "r1")


@pytest.mark.parametrize("method", PG_METHODS)
def test_pg_batched_write_is_exact_and_an_upsert(pg_store: Callable[[str], SQLStore], method: str) -> None:
    store = pg_store(method)
    batch = [awkward(i) for i in range(2500)]  # more than one multi-row INSERT's worth
    store.write(batch)
    assert list(store.iter_records("pg")) == by_uri(batch)

    # Redelivered, some relabelled, with a record twice in one batch (the last one wins), and a record without a job.
    newer = [rec(r.uri, job="pg", label="dog", at="2025-02-02T00:00:00.000Z") for r in batch[:100]]
    store.write([*newer, *batch[100:200], newer[0], rec("s3://b/nojob.jpg", job=None)])
    assert store.count("pg") == 2500
    assert list(store.iter_records("pg")) == by_uri(newer + batch[100:])
    assert list(store.iter_records("")) == [rec("s3://b/nojob.jpg", job=None)]  # job '' in the table, None out


def by_uri(records: list[Record]) -> list[Record]:
    return sorted(records, key=lambda r: (r.uri, r.model))


def test_pg_copy_and_values_write_the_same_rows(pg_store: Callable[[str], SQLStore]) -> None:
    batch = [awkward(i) for i in range(300)]
    results = []
    for method in PG_METHODS:
        store = pg_store(method)
        store.write(batch)
        store.write(batch)  # a second batch on the same pooled connection reuses the COPY's temp table
        results.append(list(store.iter_records("pg")))
    assert results[0] == results[1] == results[2] == by_uri(batch)


def test_pg_skip_query_uses_the_index(pg_store: Callable[[str], SQLStore]) -> None:
    import sqlalchemy as sa

    store = pg_store("copy")
    store.write([rec(f"s3://b/{i:06d}.jpg", job=f"j{i % 3}") for i in range(20_000)])
    with store.engine.begin() as conn:
        conn.execute(sa.text(f"ANALYZE {TABLE}"))
        plan = "\n".join(row[0] for row in conn.execute(sa.text(
            f"EXPLAIN SELECT * FROM {TABLE} WHERE model = :m AND uri IN ('s3://b/000001.jpg', 's3://b/000002.jpg')"
        ), {"m": M}))
    assert f"{TABLE}_skip" in plan, plan
    got = store.get_many(M, ["s3://b/000001.jpg", "s3://b/000002.jpg", "s3://b/nope.jpg"])
    assert sorted(got) == ["s3://b/000001.jpg", "s3://b/000002.jpg"]


def test_pg_table_has_the_documented_key(pg_store: Callable[[str], SQLStore]) -> None:
    import sqlalchemy as sa

    store = pg_store("copy")
    inspector = sa.inspect(store.engine)
    assert inspector.get_pk_constraint(TABLE)["constrained_columns"] == ["job", "uri", "model"]
    assert {tuple(ix["column_names"]) for ix in inspector.get_indexes(TABLE)} >= {("uri", "model", "etag")}
    job = next(c for c in inspector.get_columns(TABLE) if c["name"] == "job")
    assert job["nullable"] is False


# ---------------------------------------------------------------- Redis


def test_redis_keeps_a_global_and_a_per_job_hash_with_the_ttl(redis_client: Any) -> None:
    store = RedisStore(redis_client, ttl=600)
    store.write([rec("s3://b/1.jpg", job="a*b"), rec("s3://b/2.jpg", job="a?b")])
    assert redis_client.hlen(keys.records(M)) == 2
    assert redis_client.hkeys(keys.job_records("a*b", M)) == [b"s3://b/1.jpg"]
    for key in (keys.records(M), keys.job_records("a*b", M)):
        assert 0 < redis_client.ttl(key) <= 600
    # Job ids with glob characters find only their own keys.
    assert [r.uri for r in store.iter_records("a*b")] == ["s3://b/1.jpg"]
    assert store.count("a?b") == 1


# ---------------------------------------------------------------- SQLite from before per-job rows


def test_an_old_labelq_run_database_is_copied_in_once(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE labelq_results (uri TEXT, model TEXT, etag TEXT, label TEXT, score FLOAT, "
                     "top_k TEXT, status VARCHAR(8) NOT NULL, error_kind VARCHAR(32), error TEXT, job TEXT, "
                     "worker TEXT, processed_at VARCHAR(32), PRIMARY KEY (uri, model))")
        conn.execute("INSERT INTO labelq_results VALUES ('file:///a.jpg', 'm', 'e1', 'cat', 0.5, "
                     "'[{\"label\":\"cat\",\"score\":0.5}]', 'ok', NULL, NULL, NULL, 'embedded', '2024-01-01T00:00:00.000Z')")
    want = Record("file:///a.jpg", "e1", "m", "cat", 0.5, [{"label": "cat", "score": 0.5}], worker="embedded",
                  processed_at="2024-01-01T00:00:00.000Z")
    for _ in range(2):  # the second open finds the new table and copies nothing again
        store = SQLStore(f"sqlite:///{db}")
        assert list(store.iter_records()) == [want]
        assert settled(store, [ObjectRef("file:///a.jpg", 1, "e1")], ["m"])[0] == {"file:///a.jpg"}
        store.close()
