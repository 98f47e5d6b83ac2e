"""The SQL record table on SQLite and PostgreSQL: upsert per job, settled(), streaming, export to files."""

from __future__ import annotations

import contextlib
import csv
import json
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labelq.errors import ERROR_KINDS, RETRYABLE_KINDS, UsageError
from labelq.objects import ObjectRef
from labelq.records import FIELDS, Record, read_records, write_records
from labelq.results import SQLStore, open_store, settled, skip_done

# DESIGN.md, "Result record", in its order: typed here rather than imported, so the code is checked against it.
DESIGN_FIELDS = ("uri", "etag", "model", "model_revision", "label", "score", "top_k", "status", "error_kind", "error", "job", "worker",
                 "processed_at")


def ok(uri: str, model: str = "m1", etag: str | None = "e1", label: str = "cat", score: float = 0.75,
       at: str = "2024-01-01T00:00:00.000Z", job: str | None = "job-1") -> Record:
    top_k = [{"label": label, "score": score}, {"label": "dog", "score": round(1 - score, 6) / 2}]
    return Record(uri, etag, model, label, score, top_k, job=job, worker="w1", processed_at=at)


def failed(uri: str, kind: str, model: str = "m1", etag: str | None = "e1", message: str = "broken") -> Record:
    return Record(uri, etag, model, status="error", error_kind=kind, error=message, job="job-1", worker="w1",
                  processed_at="2024-01-01T00:00:00.000Z")


def test_record_fields_are_the_designs() -> None:
    assert FIELDS == DESIGN_FIELDS
    assert tuple(ok("s3://b/k").to_dict()) == DESIGN_FIELDS
    with pytest.raises(ValueError, match="unknown error kind"):
        Record("s3://b/k", None, "m", status="error", error_kind="oops")


# ---------------------------------------------------------------- upsert


def test_upsert_is_idempotent_and_keeps_the_latest(sql_store: SQLStore) -> None:
    batch = [ok(f"s3://b/{i}.jpg", model) for i in range(5) for model in ("m1", "m2")]
    sql_store.write(batch)
    sql_store.write(batch)  # a redelivered chunk
    assert sql_store.count("job-1") == 10
    assert list(sql_store.iter_records("job-1")) == sorted(batch, key=lambda r: (r.uri, r.model))

    # A later job relabels one object: the skip view sees the newer record, job-1's export does not change.
    newer = ok("s3://b/0.jpg", "m1", etag="e2", label="dog", score=0.5, at="2024-02-02T00:00:00.000Z", job="job-2")
    sql_store.write([newer])
    assert (sql_store.count("job-1"), sql_store.count("job-2")) == (10, 1)
    assert sql_store.get_many("m1", ["s3://b/0.jpg"]) == {"s3://b/0.jpg": newer}
    assert sql_store.get_many("m2", ["s3://b/0.jpg"]) == {"s3://b/0.jpg": batch[1]}  # the other model's is untouched
    assert list(sql_store.iter_records("job-1")) == sorted(batch, key=lambda r: (r.uri, r.model))

    # Within a job, an error record replaces an ok one (and back): no stale label or score survives.
    sql_store.write([failed("s3://b/1.jpg", "corrupt")])
    replaced = {(r.uri, r.model): r for r in sql_store.iter_records("job-1")}[("s3://b/1.jpg", "m1")]
    assert (replaced.status, replaced.label, replaced.score, replaced.top_k) == ("error", None, None, [])
    assert sql_store.count("job-1") == 10


def test_write_of_nothing_is_a_no_op(sql_store: SQLStore) -> None:
    sql_store.write([])
    assert sql_store.count() == 0


# ---------------------------------------------------------------- done()


def test_done_needs_every_model_with_the_same_etag(sql_store: SQLStore) -> None:
    sql_store.write([ok("s3://b/a.jpg", "m1"), ok("s3://b/a.jpg", "m2"), ok("s3://b/b.jpg", "m1")])
    a, b, c = ObjectRef("s3://b/a.jpg", 1, "e1"), ObjectRef("s3://b/b.jpg", 1, "e1"), ObjectRef("s3://b/c.jpg", 1, "e1")
    assert settled(sql_store, [a, b, c], ["m1", "m2"])[0] == {"s3://b/a.jpg"}  # b lacks m2, c has nothing
    assert settled(sql_store, [a, b, c], ["m1"])[0] == {"s3://b/a.jpg", "s3://b/b.jpg"}
    assert settled(sql_store, [ObjectRef("s3://b/a.jpg", 1, "e2")], ["m1", "m2"])[0] == set()  # the object changed
    assert settled(sql_store, [], ["m1"])[0] == set()


@pytest.mark.parametrize("kind", ERROR_KINDS)
def test_done_retries_only_retryable_errors(sql_store: SQLStore, kind: str) -> None:
    sql_store.write([failed("s3://b/x.jpg", kind)])
    done, _ = settled(sql_store, [ObjectRef("s3://b/x.jpg", 1, "e1")], ["m1"])
    if kind in RETRYABLE_KINDS:  # storage_error, model_error, access_denied (labelq.errors says why)
        assert {"storage_error", "model_error"} <= RETRYABLE_KINDS
        assert done == set()
    else:  # corrupt, not_an_image, ...: final, a rerun must not try again
        assert done == {"s3://b/x.jpg"}


def test_skip_done_is_lazy_and_drops_finished_refs(sql_store: SQLStore) -> None:
    sql_store.write([ok(f"s3://b/{i}.jpg") for i in range(0, 10, 2)])
    refs = [ObjectRef(f"s3://b/{i}.jpg", 1, "e1") for i in range(10)]
    pulled: list[int] = []

    def source() -> Iterator[ObjectRef]:
        for i, ref in enumerate(refs):
            pulled.append(i)
            yield ref

    kept = skip_done(source(), sql_store, ["m1"], chunk=3)
    assert isinstance(kept, types.GeneratorType)
    assert next(kept).uri == "s3://b/1.jpg"
    assert pulled == [0, 1, 2]  # one chunk read, not the whole listing
    assert [r.uri for r in kept] == [f"s3://b/{i}.jpg" for i in (3, 5, 7, 9)]


# ---------------------------------------------------------------- streaming


def test_iter_records_streams_in_uri_model_order(sql_store: SQLStore) -> None:
    records = [ok(f"s3://b/{i:03d}.jpg", model, job="j1" if i % 2 else "j2") for i in (7, 3, 11, 0, 5) for model in ("z", "a")]
    sql_store.write(records)
    stream = sql_store.iter_records()
    assert isinstance(stream, types.GeneratorType)
    got = [(r.uri, r.model) for r in stream]
    assert got == sorted((r.uri, r.model) for r in records)
    assert [r.uri for r in sql_store.iter_records(job="j1")] == [
        "s3://b/003.jpg", "s3://b/003.jpg", "s3://b/005.jpg", "s3://b/005.jpg", "s3://b/007.jpg", "s3://b/007.jpg",
        "s3://b/011.jpg", "s3://b/011.jpg",
    ]
    assert sql_store.count(job="j2") == 2


def test_iter_records_streams_many_rows(sql_store: SQLStore) -> None:
    sql_store.write([ok(f"s3://b/{i:05d}.jpg") for i in range(4_500)])  # more than one 2 000-row fetch
    count = 0
    previous = ""
    for record in sql_store.iter_records():
        assert record.uri > previous
        previous = record.uri
        count += 1
    assert count == 4_500


# ---------------------------------------------------------------- export


def mixed_records() -> list[Record]:
    return [
        ok("file:///data/a%20b.jpg", "org/model-a"),
        ok("s3://bucket/k/é.jpg", "org/model-b", etag=None, job=None, score=0.123456789012345),
        failed("s3://bucket/bad.jpg", "corrupt", message='JPEG data is damaged: "cut", at 40%\nsecond line'),
        failed("s3://bucket/none.jpg", "not_found", etag=None, message="s3://bucket/none.jpg: NoSuchKey"),
    ]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_export_has_exactly_the_design_fields_and_round_trips(sql_store: SQLStore, tmp_path: Path, fmt: str) -> None:
    records = mixed_records()
    sql_store.write(records)
    path = tmp_path / f"out.{fmt}"
    assert write_records(sql_store.iter_records(), fmt, path) == len(records)

    if fmt == "jsonl":
        lines = path.read_text(encoding="utf-8").splitlines()
        assert len(lines) == len(records)
        assert all(tuple(json.loads(line)) == DESIGN_FIELDS for line in lines)
    elif fmt == "csv":
        with path.open(encoding="utf-8", newline="") as f:
            assert tuple(next(csv.reader(f))) == DESIGN_FIELDS
    else:
        import pyarrow.parquet as pq

        assert tuple(pq.read_schema(path).names) == DESIGN_FIELDS
        assert pq.read_metadata(path).num_rows == len(records)

    back = read_records(path)
    assert back == sorted(records, key=lambda r: (r.uri, r.model))


def test_open_store_by_url(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'x.db'}")
    assert isinstance(store, SQLStore)
    store.close()
    with pytest.raises(UsageError, match="unsupported result store"):
        open_store("mysql://user:secret@host/db")


def test_unreachable_postgres_is_a_usage_error_without_the_password() -> None:
    with pytest.raises(UsageError, match="cannot reach result database") as caught:
        SQLStore("postgresql://labelq:hunter2@127.0.0.1:1/labelq")
    assert "hunter2" not in str(caught.value)


# ---------------------------------------------------------------- secrets in the URL never leave the store (issue 19)


def test_a_postgres_password_with_an_unencoded_at_connects_and_never_shows_in_errors(postgres_server: Any) -> None:
    """Real PostgreSQL: the password ``Sup3r@S3cretPw`` used to send SQLAlchemy to host ``S3cretPw@127.0.0.1``
    (and psycopg printed that host). Now the store connects to the right host; and when its database is gone
    mid-run, the write fails as one UsageError line that holds no piece of the password."""
    from tests.support.postgres import connect_pg

    db = "labelq_secret_at"
    with contextlib.closing(connect_pg(postgres_server.port)) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{db}"')
        admin.execute(f'CREATE DATABASE "{db}"')
        url = f"postgresql://postgres:Sup3r@S3cretPw@127.0.0.1:{postgres_server.port}/{db}"
        store = SQLStore(url)
        try:
            store.write([ok("s3://b/a.jpg")])
            assert store.count() == 1
            admin.execute(f'DROP DATABASE "{db}" WITH (FORCE)')
            for call in (lambda: store.write([ok("s3://b/b.jpg")]), store.count, lambda: store.revisions("j"),
                         lambda: list(store.iter_records("j")), lambda: store.get_many("m1", ["s3://b/a.jpg"])):
                with pytest.raises(UsageError) as caught:
                    call()
                text = str(caught.value)
                assert "\n" not in text and "S3cretPw" not in text and "Sup3r" not in text, text
                assert f'database "{db}" does not exist' in text and "postgres:***@127.0.0.1" in text, text
        finally:
            store.close()
            admin.execute(f'DROP DATABASE IF EXISTS "{db}"')
