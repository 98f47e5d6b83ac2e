"""The Delta Lake record store on real components: batched commits, a SIGKILLed writer healed, compaction
racing two writer processes, a killed compactor finished, the store protocol, and the table on S3 (moto)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from labelq.objects import ObjectRef
from labelq.records import Record
from labelq.results import open_store, settled
from labelq.results.lake import DeltaStore

M = "org/model-a"  # a hub id: one quoted folder segment
ROOT = Path(__file__).resolve().parents[2]


def rec(uri: str, *, job: str = "j1", model: str = M, label: str = "cat", at: str = "2025-01-01T00:00:00.000Z",
        rev: str = "r1") -> Record:
    return Record(uri, "e1", model, label, 0.75, [{"label": label, "score": 0.75}], job=job, worker="w1",
                  processed_at=at, model_revision=rev)


def chunk_records(job: str, c: int, n: int = 10, label: str = "cat") -> list[Record]:
    return [rec(f"s3://b/{job}/c{c:04d}/k{i:03d}", job=job, label=label) for i in range(n)]


def table_uris(store: DeltaStore) -> Counter[tuple[str, str, str]]:
    """(job, model, uri) → rows in the committed table: every one must be 1."""
    table = store.table().to_pyarrow_dataset().to_table(columns=["job", "model", "uri"])
    return Counter(zip(*(table[c].to_pylist() for c in ("job", "model", "uri")), strict=True))


def lake(tmp_path: Path, **kw: Any) -> DeltaStore:
    store = open_store(f"delta://{tmp_path / 'lake'}")
    for k, v in kw.items():
        setattr(store, k, v)
    return store  # type: ignore[no-any-return]


def writer_process(table: Path, job: str, chunks: int, *, commit_files: int, hold: bool = False) -> subprocess.Popen[str]:
    """A real process writing ``chunks`` chunks through the store's write path; with ``hold`` it prints
    ``written`` and waits (to be killed) instead of closing the store (which commits)."""
    code = f"""
import sys, time
from labelq.results import open_store
from labelq.records import Record
store = open_store({f"delta://{table}"!r})
store.commit_files = {commit_files}
store.commit_seconds = 3600
for c in range({chunks}):
    recs = [Record(f"s3://b/{job}/c{{c:04d}}/k{{i:03d}}", "e1", {M!r}, "cat", 0.5, [], job={job!r}, worker="w",
                   processed_at="2025-01-01T00:00:00.000Z") for i in range(10)]
    store.write(recs, chunk=f"{job}:c{{c}}")
if {hold}:
    print("written", flush=True)
    time.sleep(600)
store.close()
print("done", flush=True)
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)


# ---------------------------------------------------------------- batched commits


def test_files_are_committed_in_batches_and_a_redelivered_chunk_writes_nothing(tmp_path: Path) -> None:
    store = lake(tmp_path, commit_files=4, commit_seconds=3600)
    for c in range(10):
        store.write(chunk_records("j1", c), chunk=f"j1:c{c}")
    assert store.commits == 2  # at the 4th and the 8th file, not per chunk
    assert len(store.table().file_uris()) == 8
    assert len(store._pending) == 2
    store.write(chunk_records("j1", 3, label="dog"), chunk="j1:c3")  # redelivered after its commit
    store.close()  # commits the tail
    assert store.commits == 3
    assert len(store.table().file_uris()) == 10
    assert set(table_uris(store).values()) == {1} and len(table_uris(store)) == 100
    assert {r.label for r in store.iter_records("j1")} == {"cat"}  # the first write of chunk 3 stands


def test_a_commit_is_due_after_commit_seconds(tmp_path: Path) -> None:
    store = lake(tmp_path, commit_files=1000, commit_seconds=0.2)
    store.write(chunk_records("j1", 0), chunk="j1:c0")
    assert store.commits == 0
    time.sleep(0.3)
    store.write(chunk_records("j1", 1), chunk="j1:c1")
    assert store.commits == 1 and len(store.table().file_uris()) == 2


def test_two_committers_from_one_snapshot_add_each_file_once(tmp_path: Path) -> None:
    a = lake(tmp_path, commit_files=1000)
    b = open_store(f"delta://{tmp_path / 'lake'}")
    for c in range(6):
        a.write(chunk_records("j1", c), chunk=f"j1:c{c}")
    keys = list(a._pending)
    # b read the table before a's commit landed (a heal beside a writer): only one of them may add the files
    stale = b.table()
    fresh = b.table
    snapshots = iter([stale])
    b.table = lambda: next(snapshots, None) or fresh()  # type: ignore[method-assign]
    assert a.commit(keys) == 6
    assert b.commit(keys) == 0  # its commit from the old snapshot lost the app transaction; the retry saw a's
    assert set(table_uris(a).values()) == {1} and len(table_uris(a)) == 60


def test_writers_sharing_a_redis_commit_one_batch_for_all(tmp_path: Path, redis_client: Any) -> None:
    url = f"delta://{tmp_path / 'lake'}"
    a = DeltaStore.from_url(url, redis=redis_client)
    b = DeltaStore.from_url(url, redis=redis_client)
    for store in (a, b):
        store.commit_files, store.commit_seconds = 4, 3600
    a.write(chunk_records("j1", 0), chunk="j1:c0")
    b.write(chunk_records("j1", 1), chunk="j1:c1")
    a.write(chunk_records("j1", 2), chunk="j1:c2")
    assert a.commits + b.commits == 0
    b.write(chunk_records("j1", 3), chunk="j1:c3")  # the 4th file of the table, not of b: the batch is due
    assert (a.commits, b.commits) == (0, 1)
    assert len(a.table().file_uris()) == 4 and redis_client.llen(a._queue) == 0
    # a committer killed between its commit and its trim: the next one skips what is in the table
    a.write(chunk_records("j1", 4), chunk="j1:c4")
    entries = redis_client.lrange(a._queue, 0, -1)
    assert a.commit_shared() == 1
    redis_client.rpush(a._queue, *entries)  # as if the trim never happened
    b.write(chunk_records("j1", 5), chunk="j1:c5")
    assert b.commit_shared() == 1  # c5 only; c4 again would double it
    # a lease held by another committer: no commit, the files wait
    redis_client.set(a._lease, "someone", ex=60)
    a.write(chunk_records("j1", 6), chunk="j1:c6")
    assert a.commit_shared() == 0
    redis_client.delete(a._lease)
    assert a.heal() == 1 and redis_client.llen(a._queue) == 0  # `labelq compact`: the tail, and the list trimmed
    a.write(chunk_records("j1", 7), chunk="j1:c7")
    a.close()  # the last writer's close commits the tail
    assert redis_client.llen(a._queue) == 0
    counts = table_uris(a)
    assert len(counts) == 80 and set(counts.values()) == {1}


# ---------------------------------------------------------------- SIGKILL


def test_a_writer_killed_between_writing_and_committing_is_healed_once(tmp_path: Path) -> None:
    table = tmp_path / "lake"
    store = open_store(f"delta://{table}")
    proc = writer_process(table, "jk", 12, commit_files=5, hold=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "written"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    committed = len(table_uris(store))
    assert committed == 100  # two batches of 5 files landed; the last 2 files were written, not committed
    assert store.heal() == 2
    assert store.heal() == 0  # healed once
    counts = table_uris(store)
    assert len(counts) == 120 and set(counts.values()) == {1}
    assert store.count("jk") == 120


# ---------------------------------------------------------------- compaction


def test_compaction_racing_two_writer_processes_keeps_every_record_once(tmp_path: Path) -> None:
    table = tmp_path / "lake"
    store = open_store(f"delta://{table}")
    writers = [writer_process(table, job, 40, commit_files=3) for job in ("ja", "jb")]
    rounds = []
    try:
        while any(w.poll() is None for w in writers):
            rounds.append(store.compact(target_bytes=1 << 20)["removed"])
        assert [w.returncode for w in writers] == [0, 0]
    finally:
        for w in writers:
            if w.poll() is None:
                w.kill()
    rounds.append(store.compact(target_bytes=1 << 20)["removed"])
    assert sum(rounds) > 0  # compaction really ran while they wrote
    assert store.heal() == 0  # the writers committed everything at close
    counts = table_uris(store)
    assert len(counts) == 800 and set(counts.values()) == {1}
    assert len(store.table().file_uris()) <= 4  # the small files became one or two per (job, model)
    # late redeliveries of compacted chunks write nothing (the tombstone is there)
    store.write(chunk_records("ja", 0), chunk="ja:c0")
    store.close()
    assert store.heal() == 0 and set(table_uris(store).values()) == {1}


@pytest.mark.parametrize("when", ["planned", "rewritten"])
def test_two_compactors_from_one_snapshot_rewrite_each_file_once(tmp_path: Path, when: str) -> None:
    """b plans from the table before a's compaction lands; a lands either before b reads the small files
    (b finds tombstones) or after b wrote its own file (b's commit loses the app transaction)."""
    a = lake(tmp_path, commit_files=2)
    for c in range(6):
        a.write(chunk_records("j1", c), chunk=f"j1:c{c}")
    b = open_store(f"delta://{tmp_path / 'lake'}")
    if when == "planned":
        snapshots = iter([b.table()])
        fresh = b.table
        b.table = lambda: next(snapshots, None) or fresh()  # type: ignore[method-assign]
        assert a.compact(target_bytes=1 << 20)["removed"] == 6
    else:
        real_put = b.files.put

        def a_lands_first(key: str, data: bytes) -> None:
            if key.startswith("_labelq/"):  # b has rewritten its files and is about to commit
                assert a.compact(target_bytes=1 << 20)["removed"] == 6
            real_put(key, data)

        b.files.put = a_lands_first  # type: ignore[method-assign]
    assert b.compact(target_bytes=1 << 20) == {"removed": 0, "added": 0, "records": 0}  # lost: nothing of it stays
    counts = table_uris(a)
    assert len(counts) == 60 and set(counts.values()) == {1}
    assert len(a.table().file_uris()) == 1
    assert not a.files.ls("_labelq/")
    assert len([k for k, _ in a._data_files("") if "/compact-" in k]) == 1  # b's rewritten file was deleted


def test_a_compactor_killed_after_its_commit_is_finished_by_the_next_heal(tmp_path: Path) -> None:
    store = lake(tmp_path, commit_files=2)
    for c in range(6):
        store.write(chunk_records("j1", c), chunk=f"j1:c{c}")
    real_put = store.files.put

    def dies_at_tombstones(key: str, data: bytes) -> None:
        if data == b"":
            raise KeyboardInterrupt("killed")  # the process dies after the commit, before the tombstones
        real_put(key, data)

    store.files.put = dies_at_tombstones  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        store.compact(target_bytes=1 << 20)
    store.files.put = real_put  # type: ignore[method-assign]
    other = open_store(f"delta://{tmp_path / 'lake'}")
    removed = [key for key, size in other._data_files("") if "/part-" in key]
    assert len(removed) == 6 and len(table_uris(other)) == 60
    assert other.commit(removed) == 0  # a writer's commit meanwhile: the intent holds them back
    assert other.heal() == 0  # the removed files are named by the intent: not committed again
    assert other.finish_intents() == 0  # the heal finished it: tombstones written, intent gone
    assert len(table_uris(other)) == 60 and set(table_uris(other).values()) == {1}
    assert all(size == 0 for key, size in other._data_files("") if "/part-" in key)


# ---------------------------------------------------------------- the store protocol


def test_the_store_protocol_is_served_from_the_table(tmp_path: Path) -> None:
    store = lake(tmp_path, commit_files=1)
    a, b = "s3://b/a.jpg", "s3://b/b.jpg"
    store.write([rec(a, job="j1", at="2025-01-01T00:00:00.000Z"), rec(b, job="j1")], chunk="j1:x")
    store.write([rec(a, job="j1", label="dog", at="2025-01-02T00:00:00.000Z")], chunk="j1:retry")  # retry, same job
    store.write([rec(a, job="j2", label="bird", at="2025-01-03T00:00:00.000Z", rev="r2")], chunk="j2:x")
    assert sorted((r.uri, r.label) for r in store.iter_records("j1")) == [(a, "dog"), (b, "cat")]
    assert store.count("j1") == 2 and store.count("j2") == 1 and store.count("nope") == 0
    assert store.revisions("j2") == {M: {"r2": 1}}
    store.refresh()
    got = store.get_many(M, [a, b, "s3://b/none.jpg"])
    assert {u: r.label for u, r in got.items()} == {a: "bird", b: "cat"}
    done, _ = settled(store, [ObjectRef(a, etag="e1"), ObjectRef(b, etag="e1")], [M], {M: "r1"})
    assert done == {b}  # a's newest record is of revision r2
    assert settled(store, [ObjectRef(b, etag="changed")], [M])[0] == set()


def test_the_skip_check_reads_only_files_whose_uri_range_overlaps(tmp_path: Path) -> None:
    store = lake(tmp_path, commit_files=1)
    for c in range(8):
        store.write(chunk_records("j1", c), chunk=f"j1:c{c}")
    store.write([rec("s3://b/j1/c0003/k005", job="j2", model="org/other")], chunk="j2:x")
    real_get = store.files.get
    read: list[str] = []

    def counting_get(key: str) -> bytes:
        read.append(key)
        return real_get(key)

    store.files.get = counting_get  # type: ignore[method-assign]
    got = store.get_many(M, [f"s3://b/j1/c0003/k{i:03d}" for i in range(5)])
    assert sorted(got) == [f"s3://b/j1/c0003/k{i:03d}" for i in range(5)]
    assert read == ["job=j1/model=org~2Fmodel-a/part-j1~3Ac3.parquet"]  # one file of 9, from the log's statistics


def test_a_bad_delta_url_is_one_clear_error(tmp_path: Path, s3_client: Any) -> None:
    from labelq.errors import UsageError

    with pytest.raises(UsageError, match="absolute folder"):
        open_store("delta://relative/folder")
    with pytest.raises(UsageError, match="name a bucket"):
        open_store("delta+s3:///prefix")
    with pytest.raises(UsageError, match="cannot open or create the Delta table") as info:
        open_store("delta+s3://no-such-bucket-here/labels", s3_client=s3_client)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- S3


def test_the_table_on_s3_commits_compacts_and_reads(s3_client: Any, s3_bucket: str) -> None:
    store = open_store(f"delta+s3://{s3_bucket}/labels", s3_client=s3_client)
    store.commit_files = 2
    for c in range(5):
        store.write(chunk_records("j1", c), chunk=f"j1:c{c}")
    assert store.commits == 2
    assert store.heal() == 1
    assert store.compact(target_bytes=1 << 20)["removed"] == 5
    store.write(chunk_records("j1", 0), chunk="j1:c0")  # a late redelivery: the tombstone stands
    assert store.heal() == 0
    counts = table_uris(store)
    assert len(counts) == 50 and set(counts.values()) == {1}
    assert store.count("j1") == 50
