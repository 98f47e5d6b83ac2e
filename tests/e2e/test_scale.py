"""The queue bound and the resumable producer (issue 11), done for real.

Real Redis (a database of this module's own), real ``labelq enqueue`` processes (and the
background producers they spawn), one real worker shared by the module. While the worker
must not consume (the bound must hold the producers back) it is stopped with SIGSTOP
instead of being started late: its start-up is the costly part of this module.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labelq import keys
from tests.e2e.conftest import RedisDB, export_job, file_uris, job_hash, once_each, write_photos
from tests.support.procs import wait_until
from tests.support.redis import queue_length
from tests.support.workers import LABELQ, Procs, Worker, chunk_executions, cli, labelq_env

pytestmark = pytest.mark.slow

BOUND = 3
CHUNK = 4
IMAGES = 40
PRODUCER = re.compile(r"listing goes on in the background \(pid (\d+), log ([^)]+)\)")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's LABELQ_LOCAL_ROOT: every image folder lives under it."""
    return tmp_path_factory.mktemp("scale")


@pytest.fixture(scope="module")
def env(redis_db: RedisDB, root: Path, tiny_vit: Path) -> dict[str, str]:
    return labelq_env(broker=redis_db.url, models=[tiny_vit], local_root=root, chunk_size=CHUNK, batch_size=4,
                      max_queued_chunks=BOUND, stall_timeout=120)


class LazyWorker:
    """The module's one worker: started by the first test that needs it, paused by the others."""

    def __init__(self, procs: Procs, env: dict[str, str]) -> None:
        self.procs, self.env = procs, env
        self.worker: Worker | None = None
        self.stopped = False

    def running(self) -> Worker:
        if self.worker is None:
            self.worker = self.procs.worker(self.env, timeout=240)
        elif self.stopped:
            self.worker.signal(signal.SIGCONT, group=True)
        self.stopped = False
        return self.worker

    def pause(self) -> None:
        """No chunk is taken until :meth:`running` (a stopped worker holds at most the one it had received)."""
        if self.worker is not None and not self.stopped:
            self.worker.signal(signal.SIGSTOP, group=True)
            self.stopped = True


@pytest.fixture(scope="module")
def lazy_worker(module_procs: Procs, env: dict[str, str]) -> Iterator[LazyWorker]:
    lazy = LazyWorker(module_procs, env)
    yield lazy
    if lazy.worker is not None and lazy.stopped:
        lazy.worker.signal(signal.SIGCONT, group=True)


@pytest.fixture
def producers() -> Iterator[list[int]]:
    """Pids of background producers a test saw; any still alive at its end is killed."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:  # only while the pid is still one of our background producers (never a reused pid)
            if b"--background" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


def backgrounded(stderr: str) -> int:
    """The background producer's pid from `labelq enqueue`'s message."""
    found = PRODUCER.search(" ".join(stderr.split()))
    assert found, f"enqueue did not hand listing on to a background producer:\n{stderr}"
    return int(found.group(1))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def waiting_chunks(client: Any) -> int:
    return int(client.zcard(keys.CHUNKS))


def export_once(env: dict[str, str], job: str, cwd: Path, uris: set[str], model: str) -> None:
    pairs = once_each(export_job(env, job, cwd), uris, model)
    assert all(v[0]["error"] is None for v in pairs.values())


def exact_totals(client: Any, job: str, images: int) -> dict[str, str]:
    h = job_hash(client, job)
    chunks = -(-images // CHUNK)
    assert (h["state"], h["total"], h["listed"], h["enqueued"], h["chunks"], h["chunks_done"], h["ok"], h["error"],
            h["dead"]) == ("done", str(images), str(images), str(images), str(chunks), str(chunks), str(images), "0",
                           "0"), h
    return h


def test_the_queue_bound_holds_for_two_jobs_enqueued_at_once_and_both_finish_exactly(
        root: Path, env: dict[str, str], redis_db: RedisDB, lazy_worker: LazyWorker, producers: list[int],
        photo_bytes: list[bytes], tiny_vit: Path) -> None:
    lazy_worker.pause()
    run = uuid.uuid4().hex[:6]
    folders = {f"bound-a-{run}": root / f"a-{run}", f"bound-b-{run}": root / f"b-{run}"}
    jobs = {job: file_uris(write_photos(folder, photo_bytes[i * IMAGES : (i + 1) * IMAGES], "img")) for i, (job, folder) in enumerate(folders.items())}
    start = time.monotonic()
    running = [subprocess.Popen([LABELQ, "enqueue", str(folder), "--job", job, "--chunk-size", str(CHUNK)],
                                env=env, cwd=root, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
               for job, folder in folders.items()]
    seen = 0
    while any(p.poll() is None for p in running):  # the bound holds while the two producers race
        seen = max(seen, queue_length(redis_db.client))
        assert waiting_chunks(redis_db.client) <= BOUND
        time.sleep(0.02)
    outputs = [p.communicate(timeout=30) for p in running]
    assert time.monotonic() - start < 60
    for p, (out, err) in zip(running, outputs, strict=True):
        assert p.returncode == 0, err
        assert out.strip() in jobs
        assert f"LABELQ_MAX_QUEUED_CHUNKS={BOUND}" in " ".join(err.split())
        producers.append(backgrounded(err))
    until = time.monotonic() + 3  # the background producers wait for room: the queue stays at the bound
    while time.monotonic() < until:
        seen = max(seen, queue_length(redis_db.client))
        assert waiting_chunks(redis_db.client) <= BOUND
        time.sleep(0.05)
    assert seen == BOUND
    for job in jobs:
        h = job_hash(redis_db.client, job)
        assert h["state"] == "listing" and int(h.get("listed", 0)) < IMAGES, h
    assert all(alive(pid) for pid in producers)

    worker = lazy_worker.running()

    def finished() -> bool:
        nonlocal seen
        seen = max(seen, queue_length(redis_db.client))
        assert waiting_chunks(redis_db.client) <= BOUND
        return all(job_hash(redis_db.client, j).get("state") == "done" for j in jobs)

    wait_until(finished, timeout=180, what="both jobs done", every=0.05, describe=worker.tail)
    assert seen <= BOUND
    wait_until(lambda: not any(alive(pid) for pid in producers), timeout=30, what="background producers exited")
    for job, uris in jobs.items():
        exact_totals(redis_db.client, job, IMAGES)
        assert set(chunk_executions([worker], job).values()) == {1}
        assert len(chunk_executions([worker], job)) == IMAGES // CHUNK
        export_once(env, job, root, uris, str(tiny_vit))


def test_enqueue_again_resumes_from_the_cursor_of_a_killed_producer(
        root: Path, env: dict[str, str], redis_db: RedisDB, lazy_worker: LazyWorker, producers: list[int],
        photo_bytes: list[bytes], tiny_vit: Path) -> None:
    lazy_worker.pause()  # started by the test above, or not yet: either way nothing consumes
    job = f"resume-{uuid.uuid4().hex[:6]}"
    folder = root / job
    uris = file_uris(write_photos(folder, photo_bytes[2 * IMAGES : 3 * IMAGES], "img"))
    first = cli(["enqueue", str(folder), "--job", job, "--chunk-size", str(CHUNK)], env, cwd=root).check()
    pid = backgrounded(first.stderr)
    producers.append(pid)
    # the background producer takes the job's listing lease, resumes after the first process's groups, waits for room
    wait_until(lambda: f":{pid}:" in (redis_db.client.get(keys.job_producer(job)) or b"").decode(), timeout=60,
               what="the background producer's lease")
    time.sleep(0.5)
    assert alive(pid)
    h = job_hash(redis_db.client, job)
    assert (h["state"], h["listed"], h["enqueued"], h["chunks"]) == ("listing", str(BOUND * CHUNK),
                                                                     str(BOUND * CHUNK), str(BOUND)), h
    assert h["cursor"] == f"img_{BOUND * CHUNK - 1:04d}.jpg", h  # the last object of the last group published
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not alive(pid), timeout=10, what="producer gone")
    assert job_hash(redis_db.client, job)["cursor"] == h["cursor"]  # nothing moved it after the kill
    cursor_at_kill = h["cursor"]

    again = cli(["enqueue", str(folder), "--job", job, "--chunk-size", str(CHUNK)], env, cwd=root).check()
    assert again.stdout.strip() == job
    flat = " ".join(again.stderr.split())
    assert "being listed by another producer" not in flat, flat  # the dead producer's lease does not block it
    producers.append(backgrounded(again.stderr))
    assert f"listed {BOUND * CHUNK}," in flat, flat  # it went on from the cursor, not from the start

    worker = lazy_worker.running()
    wait_until(lambda: job_hash(redis_db.client, job).get("state") == "done", timeout=180, what="job done",
               describe=worker.tail)
    h = exact_totals(redis_db.client, job, IMAGES)  # enqueued/chunks exact: no group was counted twice
    assert h["cursor"] != cursor_at_kill
    executions = chunk_executions([worker], job)
    assert len(executions) == IMAGES // CHUNK and set(executions.values()) == {1}
    export_once(env, job, root, uris, str(tiny_vit))
