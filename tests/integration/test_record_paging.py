"""The console's browse pages: one page of a job's records at a time, from the store's cursor on.

A page costs what it reads from its cursor, never every record before it (Redis: HSCAN's cursor; SQL: the
uri, keyset); paging to the end yields every kept record exactly once. Stores without a cursor (Parquet)
page by skipping, with the same results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from labelq.records import Record
from labelq.results import ParquetStore, RedisStore, SQLStore
from labelq.results.base import page_records

N = 600
MODEL = "m"


def records(job: str) -> list[Record]:
    return [Record(f"s3://b/k{i:04d}.jpg", f"e{i}", MODEL, "cat" if i % 3 else "dog", (i % 100) / 100,
                   [{"label": "cat", "score": 0.5}], job=job) for i in range(N)]


@pytest.fixture(params=["redis", "sql", "parquet"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "redis":
        made: Any = RedisStore(request.getfixturevalue("redis_client"), ttl=600)
    elif request.param == "sql":
        made = SQLStore(f"sqlite:///{tmp_path / 'r.db'}")
    else:
        made = ParquetStore.from_url(f"parquet://{tmp_path / 'ds'}")
    recs = records("j")
    if getattr(made, "per_chunk", False):
        for i in range(0, N, 100):
            made.write(recs[i : i + 100], chunk=f"c{i}")
    else:
        made.write(recs)
    made.write(records("other"), chunk="o")  # another job's records never show
    yield made
    made.close()


def pages(store: Any, keep: Any, limit: int = 25) -> list[list[Record]]:
    out, after = [], None
    while True:
        found, after = page_records(store, "j", MODEL, after=after, limit=limit, keep=keep)
        out.append(found)
        if after is None:
            return out


@pytest.mark.parametrize("want", ["all", "dogs", "high"])
def test_paging_to_the_end_yields_every_kept_record_once(store: Any, want: str) -> None:
    keep = {"all": lambda r: True, "dogs": lambda r: r.label == "dog", "high": lambda r: r.score >= 0.9}[want]
    got = [rec for page in pages(store, keep) for rec in page]
    expected = {r.uri for r in records("j") if keep(r)}
    assert len(got) == len({r.uri for r in got}) == len(expected)
    assert {r.uri for r in got} == expected and {r.job for r in got} == {"j"}


def test_a_page_reads_from_its_cursor_not_every_record_before_it(store: Any) -> None:
    if not hasattr(store, "scan_page"):
        pytest.skip("this store pages by skipping (no cursor to resume from)")
    _, after = page_records(store, "j", MODEL, after=None, limit=25, keep=lambda r: True)
    for _ in range(15):  # deep into the job
        _, after = page_records(store, "j", MODEL, after=after, limit=25, keep=lambda r: True)
    assert after is not None
    seen = []

    def counting(rec: Record) -> bool:
        seen.append(rec.uri)
        return True

    found, _ = page_records(store, "j", MODEL, after=after, limit=25, keep=counting)
    assert len(found) >= 25
    assert len(seen) <= 200  # one batch from the cursor, whatever the page's depth (600 records in the job)
